"""Time of the learned Gaussian q(Y|X)'s log-density and its gradient, the way training takes
it (value + gradient in the conditional's parameters, over a batch of X of the untrained q(X)),
with the sum over methyl relabelings by groups (``coarseflow.model.gaussian``) and with one
triangular solve per relabeling, in the same process. Not part of the tests.

    python benchmarks/conditional_density.py configs/ala3.toml configs/ala5.toml --batch 256 32

Each config is timed at the matching --batch (the last one repeats). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from coarseflow.config import build_target, load_config
from coarseflow.model import conditional as conditional_module
from coarseflow.workflow import initial_model


def time_call(f, *args, repeats: int = 3) -> tuple[float, float]:
    """(seconds of the first call, compile included; mean seconds of the next ``repeats``)."""
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(*args))
    return first, (time.perf_counter() - start) / repeats


def row(path: str, batch: int, beta: float = 0.05) -> dict:
    config = load_config(path)
    target = build_target(config.target)
    flow, conditional = initial_model(config, target)
    if conditional is None:
        raise SystemExit(f"{path}: [conditional] kind = 'chains': no learned q(Y|X) to time")
    X = flow.sample(jr.key(0), (batch,))
    Y = conditional.sample_batch(jr.key(1), target, X, beta).Y
    params, static = eqx.partition(conditional, eqx.is_inexact_array)

    def total(p, X, Y):
        model = eqx.combine(p, static)
        return jnp.sum(jax.vmap(lambda x, y: model.log_prob(target, x, beta, y))(X, Y))

    out = {
        "config": path,
        "n_y": target.partition.n_y,
        "relabelings": len(conditional.relabelings),
        "batch": batch,
    }
    chosen = conditional_module.worth_it
    try:
        for name, grouped in (("grouped", True), ("per_relabeling", False)):
            conditional_module.worth_it = lambda groups, n, grouped=grouped: grouped
            f = jax.jit(jax.value_and_grad(total))  # a new function: traced with this choice
            _, out[f"{name}_s"] = time_call(f, params, X, Y)
            out[f"{name}_value"] = float(f(params, X, Y)[0])
    finally:
        conditional_module.worth_it = chosen
    out["speedup"] = out["per_relabeling_s"] / out["grouped_s"]
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--batch", type=int, nargs="+", default=[256])
    args = p.parse_args(argv)
    batches = args.batch + [args.batch[-1]] * (len(args.configs) - len(args.batch))
    rows = [row(c, b) for c, b in zip(args.configs, batches, strict=False)]
    print(f"{platform.node()}: {jax.devices()[0].device_kind}, {jax.__version__}")
    print("| config | n_y | relabelings | batch | grouped (s) | per relabeling (s) | speedup |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['n_y']} | {r['relabelings']} | {r['batch']} "
            f"| {r['grouped_s']:.3f} | {r['per_relabeling_s']:.3f} | {r['speedup']:.1f}x |"
        )
    return rows


if __name__ == "__main__":
    main()
