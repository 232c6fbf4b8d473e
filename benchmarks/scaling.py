"""Weak and strong scaling of one training update, of prediction and of the reference sampler
on 1, 2 and 4 simulated CPU devices.

XLA_FLAGS=--xla_force_host_platform_device_count=N makes XLA show N CPU devices; each count runs
in its own process (XLA reads the flag once). Simulated devices share the same CPU cores, so
this measures the overhead of splitting the work (and checks that the split results equal one
device's), not a speed-up: on real devices the strong-scaling time would fall towards 1/N,
here it stays near 1 or rises; the weak-scaling time would stay flat, here it grows about like
N. Not part of the tests.

Strong scaling: the same total size on every device count. Weak scaling: the same size per
device (the total grows with N). What is timed (wall time of one call, median of --repeats,
after a call that compiles):

* update: one ``training.step.update_step`` (joint objective, Gaussian q(Y|X), the Gaussian
  mixture of configs/gmm_2d.toml with a small flow), ``--update-batch`` samples;
* prediction: ``draw_samples`` of 4 batches of ``--prediction-rows`` rows (exact q(Y|X));
* reference: one replica-exchange block of the alanine dipeptide (``--rungs`` rungs x
  ``--chains`` chains, 100 BAOAB steps, swaps every 20; needs OpenMM; skipped without).

The last column compares each strong-scaling result with one device's: the largest
difference relative to the largest value of the update's loss and gradient norm, of the
samples' coordinates and log-weights, of the block's recorded energies (float32). On one device
the weak and strong sizes are the same work, timed once.

    python benchmarks/scaling.py [--devices 1 2 4] [--update-batch 64] [--prediction-rows 512]
                                 [--rungs 2] [--chains 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKS = ("update", "prediction", "reference")


def _timed(call, repeats: int) -> tuple[float, object]:
    """(median wall time of ``repeats`` calls after a first one that compiles, last result)."""
    out = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], out


def _block(tree):
    import jax

    return jax.block_until_ready(tree)


def worker(args) -> None:
    """One device count (this process's XLA flag): every work at its strong and weak sizes."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    from coarseflow.config import build_target, load_config, parse_config
    from coarseflow.parallel import data_mesh, replicate
    from coarseflow.predict.draw import draw_samples
    from coarseflow.training.step import UpdateSettings, init, update_step
    from coarseflow.workflow import initial_model

    n = len(jax.devices())
    mesh = data_mesh(n)
    sizes = {"strong": 1, "weak": n}  # the total size's factor
    rows, arrays = [], {}

    raw = load_config(ROOT / "configs" / "gmm_2d.toml").raw
    raw["model"].update(layers=2, nn_width=32, knots=8)
    raw["training"].update(objective="joint", tempering_samples=128)
    raw["conditional"] = {"kind": "gaussian"}
    config = parse_config(raw)
    target = build_target(config.target)
    flow, conditional = initial_model(config, target)

    for scaling, factor in sizes.items():
        if scaling == "weak" and n == 1:  # the strong sizes: the same work
            rows += [(w, "weak", *rest) for w, _, *rest in list(rows)]
            arrays |= {k.replace("strong", "weak"): v for k, v in arrays.items()}
            break
        batch = args.update_batch * factor
        training = dataclasses.replace(config.training, batch_size=batch)
        state, static = init((flow, conditional), training)
        state = replicate(state, mesh)
        settings = UpdateSettings(training, config.chains, config.prediction, mesh)

        def update(state=state, static=static, settings=settings):
            new, info = update_step(
                state,
                static,
                jr.key(0),
                jnp.asarray(0.5),
                jnp.asarray(1.0),
                jnp.asarray(0.3),
                target,
                settings,
            )
            return _block((new, info))

        seconds, (_, info) = _timed(update, args.repeats)
        rows.append(("update", scaling, n, batch, seconds, seconds / batch))
        arrays[f"update_{scaling}"] = np.array([float(info.loss), float(info.grad_norm)])

        prediction_rows = args.prediction_rows * factor
        n_samples = 4 * prediction_rows

        def predict(prediction_rows=prediction_rows, n_samples=n_samples):
            return draw_samples(
                jr.key(1),
                target,
                flow,
                1.0,
                config.prediction,
                n=n_samples,
                conditional=conditional,
                batch=prediction_rows,
                mesh=mesh,
            )

        seconds, samples = _timed(predict, args.repeats)
        rows.append(("prediction", scaling, n, n_samples, seconds, seconds / n_samples))
        arrays[f"prediction_{scaling}"] = np.concatenate(
            [np.asarray(samples.x).ravel(), np.asarray(samples.log_weights)]
        )

    try:
        reference_rows, reference_arrays = _reference(args, mesh, n, sizes)
    except ImportError as err:  # no OpenMM: no molecule
        print(f"reference skipped: {err}", file=sys.stderr)
    else:
        rows += reference_rows
        arrays |= reference_arrays
    np.savez(Path(args.out) / f"devices_{n}.npz", **arrays)
    print("RESULT " + json.dumps(rows), flush=True)


def _reference(args, mesh, n: int, sizes: dict):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from coarseflow.config import load_config
    from coarseflow.reference.molecule import ReferenceMolecule
    from coarseflow.reference.settings import config_tables
    from coarseflow.samplers.replica_exchange import (
        make_block,
        replica_exchange_init,
        temperature_ladder,
    )
    from coarseflow.units import kT_from_kelvin

    config = load_config(ROOT / "configs" / "alanine_dipeptide.toml")
    mol = ReferenceMolecule(config_tables(config)[0])
    kT = jnp.asarray(kT_from_kelvin(temperature_ladder(300.0, 500.0, args.rungs)), jnp.float32)
    positions = jnp.asarray(mol.positions, jnp.float32)
    masses = jnp.asarray(mol.masses, jnp.float32)
    rows, arrays = [], {}
    for scaling, factor in sizes.items():
        if scaling == "weak" and n == 1:
            rows += [(w, "weak", *rest) for w, _, *rest in list(rows)]
            arrays |= {k.replace("strong", "weak"): v for k, v in arrays.items()}
            break
        chains = args.chains * factor
        block = make_block(
            mol.forcefield_jax.energy,
            lambda x: {},
            masses=masses,
            kT=kT,
            time_step=0.001,
            friction=1.0,
            exchange_every=20,
            record_every=20,
            n_records=5,
            mesh=mesh,
        )
        start = replica_exchange_init(
            mol.forcefield_jax.energy, positions, masses, kT, chains, jax.random.key(0), mesh
        )

        def run(block=block, start=start):
            return _block(block(start, jax.random.key(1)))

        seconds, (_, records) = _timed(run, args.repeats)
        walker_steps = args.rungs * chains * 100
        rows.append(("reference", scaling, n, chains, seconds, seconds / walker_steps))
        arrays[f"reference_{scaling}"] = np.asarray(records["energy"]).ravel()
    return rows, arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--update-batch", type=int, default=64)
    parser.add_argument("--prediction-rows", type=int, default=512)
    parser.add_argument("--rungs", type=int, default=2)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    for value, name in ((args.update_batch, "--update-batch"), (args.prediction_rows,
                        "--prediction-rows"), (args.chains, "--chains")):  # fmt: skip
        for n in args.devices:
            if value % n:
                parser.error(f"{name} {value} does not split over {n} devices")
    results, arrays = [], {}
    with tempfile.TemporaryDirectory() as out:
        for n in args.devices:
            env = {
                **os.environ,
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
                "JAX_PLATFORMS": "cpu",
            }
            command = [sys.executable, __file__, "--worker", "--out", out, *sys.argv[1:]]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"{n} devices failed:\n{done.stderr[-3000:]}")
            results += json.loads(lines[-1][len("RESULT ") :])
            import numpy as np

            with np.load(Path(out) / f"devices_{n}.npz") as f:
                arrays[n] = {k: f[k] for k in f.files}
    print(table(results, arrays, args))


def table(results, arrays, args) -> str:
    """The markdown table: per work, scaling and device count, the time and its ratio to one
    device's, and the strong-scaling results' largest difference to one device's."""
    import numpy as np

    first = {(w, s): t for w, s, n, _, t, _ in results if n == min(args.devices)}
    units = {"update": "sample", "prediction": "sample", "reference": "walker-step"}
    sizes = {"update": "batch", "prediction": "samples", "reference": "chains"}
    lines = [
        "| work | scaling | devices | size | time per call | per unit | time / 1 device's "
        "| largest relative difference to 1 device |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for work in WORKS:
        for scaling in ("strong", "weak"):
            for w, s, n, size, seconds, per in results:
                if (w, s) != (work, scaling):
                    continue
                key = f"{work}_{scaling}"
                base = arrays[min(args.devices)].get(key)
                difference = "-"
                if scaling == "strong" and base is not None and n != min(args.devices):
                    scale = max(float(np.max(np.abs(base))), 1e-30)
                    difference = f"{float(np.max(np.abs(arrays[n][key] - base))) / scale:.1e}"
                lines.append(
                    f"| {work} | {scaling} | {n} | {sizes[work]} {size} | "
                    f"{seconds * 1e3:.1f} ms | {per * 1e6:.2f} µs / {units[work]} | "
                    f"{seconds / first[(work, scaling)]:.2f} | {difference} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
