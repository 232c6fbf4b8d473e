"""Energy + force evaluations per second: the JAX force field against OpenMM, on one molecule.

JAX: ``jit(vmap(value_and_grad(energy)))`` on whatever JAX device is present, batch sizes
1, 64, 1024 (``--batch-sizes``), float32 and float64; batches above ``--chunk`` also as
``lax.map`` over vmapped chunks. OpenMM: one configuration at a time
(setPositions + getState(energy, forces)) on the Reference platform (double precision) and the
CPU platform (OpenMM's own mixed precision). Ratios are to OpenMM CPU. Not part of the tests.

    python benchmarks/forcefield.py [--markdown] [--seconds 2] [--chunk 64] [--pdb FILE]
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 must be available; float32 is a cast

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import openmm  # noqa: E402

from coarseflow.forcefield import build_system, forcefield_from_system  # noqa: E402


def time_calls(call, seconds: float) -> tuple[float, int]:
    """Wall time per call (seconds), measured over at least ``seconds`` and 3 calls."""
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        call()
        calls += 1
    return (time.perf_counter() - start) / calls, calls


def bench_jax(ff, positions, batch_sizes, seconds, rng, chunk):
    # The force field is closed over, as inside a sampler's jitted step: its parameters are
    # compile-time constants and a call does not flatten the module.
    def energy_and_forces(x):
        energy, grad = jax.value_and_grad(ff.energy)(x)
        return energy, -grad

    batched = jax.jit(jax.vmap(energy_and_forces))
    # On CPU, big batches run faster in vmapped chunks that stay in cache.
    chunked = jax.jit(lambda x: jax.lax.map(energy_and_forces, x, batch_size=chunk))

    rows = []
    for dtype in (jnp.float32, jnp.float64):
        for batch in batch_sizes:
            noise = 0.01 * rng.normal(size=(batch, *positions.shape))
            x = jnp.asarray(positions[None] + noise, dtype=dtype)
            variants = [("vmap", batched)]
            if batch > chunk:
                variants.append((f"lax.map, chunks of {chunk}", chunked))
            for how, fn in variants:
                start = time.perf_counter()
                jax.block_until_ready(fn(x))
                compile_s = time.perf_counter() - start
                per_call, _ = time_calls(lambda x=x, fn=fn: jax.block_until_ready(fn(x)), seconds)
                rows.append(
                    {
                        "backend": f"JAX {jax.default_backend()}",
                        "precision": jnp.dtype(dtype).name,
                        "batch": batch,
                        "evals_per_s": batch / per_call,
                        "note": f"{how}; compile {compile_s:.1f} s",
                    }
                )
    return rows


def bench_openmm(system, positions, seconds, rng):
    rows = []
    configs = positions[None] + 0.01 * rng.normal(size=(64, *positions.shape))
    for name, precision in (("Reference", "float64"), ("CPU", "mixed")):
        plat = openmm.Platform.getPlatformByName(name)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), plat)
        state = {"k": 0}

        def one(context=context, state=state):
            context.setPositions(configs[state["k"] % len(configs)])
            s = context.getState(getEnergy=True, getForces=True)
            s.getForces(asNumpy=True)
            s.getPotentialEnergy()
            state["k"] += 1

        one()
        per_call, _ = time_calls(one, seconds)
        note = ""
        if name == "CPU":
            note = f"{plat.getPropertyValue(context, 'Threads')} threads"
        rows.append(
            {
                "backend": f"OpenMM {name}",
                "precision": precision,
                "batch": 1,
                "evals_per_s": 1.0 / per_call,
                "note": note,
            }
        )
    return rows


def format_table(rows, markdown: bool) -> str:
    reference = next(r["evals_per_s"] for r in rows if r["backend"] == "OpenMM CPU")
    header = ["backend", "precision", "batch", "evals/s", "vs OpenMM CPU", "note"]
    body = [
        [
            r["backend"],
            r["precision"],
            str(r["batch"]),
            f"{r['evals_per_s']:,.0f}",
            f"{r['evals_per_s'] / reference:.2f}x",
            r["note"],
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--chunk", type=int, default=64, help="lax.map chunk for big batches")
    parser.add_argument("--pdb", default=None, help="molecule (default: alanine dipeptide)")
    args = parser.parse_args()

    pdb = args.pdb or str(importlib.resources.files("coarseflow.data") / "alanine_dipeptide.pdb")
    _, positions, system = build_system(pdb)
    ff = forcefield_from_system(system)
    rng = np.random.default_rng(0)
    rows = bench_jax(ff, positions, args.batch_sizes, args.seconds, rng, args.chunk)
    rows += bench_openmm(system, positions, args.seconds, rng)

    print(
        f"{os.path.basename(pdb)}: {system.getNumParticles()} atoms, "
        f"terms {', '.join(ff.term_names)}; energy + forces per configuration"
    )
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}), openmm {openmm.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
    )
    print(format_table(rows, args.markdown))


if __name__ == "__main__":
    main()
