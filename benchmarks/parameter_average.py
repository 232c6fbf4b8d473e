"""Does sampling the moving average of the parameters raise the ESS? Prints a table.

    python benchmarks/parameter_average.py RUN [--updates 400] [--every 100] [--lr 1e-4]
        [--decays 0.99 0.998] [--seeds 0 1 2] [-n 8000]

From the newest checkpoint of a trained run with a learned q(Y|X) (its beta, normally 1), its
objective trains on for ``--updates`` updates at a constant learning rate ``--lr`` (a fresh
optimiser state, the run's other settings). Along that one trajectory the moving averages
a <- d a + (1 - d) params of ``--decays`` are kept beside the parameters themselves
(``[training] average_decay`` keeps one; this keeps several). Every ``--every`` updates the
one-shot ESS fraction of the model's ``-n`` draws (X ~ q(X), Y ~ q(Y|X), exact densities, no
refinement) is measured for the parameters and for each average, all on the same base draws,
so the arms differ only in their parameters. Several ``--seeds`` (of the training draws) give
a spread. Energy evaluations are counted by the updates themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from coarseflow.training.step import (
    UpdateSettings,
    adapt_fab_step,
    init,
    start_beta,
    update_step,
)
from coarseflow.workflow import load_run


@eqx.filter_jit
def one_shot_log_weights(flow, conditional, key, target, beta, n: int):
    """(n,) log importance weights of x = (X, Y), X ~ q(X), Y ~ q(Y|X), against p_beta."""
    X, log_qX = flow.sample_and_log_prob(jr.fold_in(key, 0), (n,))
    sample = conditional.sample_batch(jr.fold_in(key, 1), target, X, beta)
    u = jax.vmap(target.energy_xy)(X, sample.Y)
    log_w = -beta * u - log_qX - sample.log_q
    return jnp.where(sample.valid & jnp.isfinite(log_w), log_w, -jnp.inf)


def ess_fraction(params, static, target, beta, n: int) -> float:
    """One-shot ESS fraction of ``n`` draws of the model (params, static), in batches of 2000
    on fixed keys (the same draws of the base for every set of parameters)."""
    flow, conditional = eqx.combine(params, static)
    batch = min(n, 2000)
    log_w = np.concatenate(
        [
            np.asarray(
                one_shot_log_weights(flow, conditional, jr.key(10**6 + i), target, beta, batch)
            )
            for i in range(n // batch)
        ]
    )
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / (w**2).sum() / len(w))


def continue_training(config, target, model, meta, args, seed: int):
    """[(update, energy evals, ESS of the parameters, ESS of each average ...)] along
    ``args.updates`` further updates of the run's objective at its checkpoint's beta."""
    training = dataclasses.replace(
        config.training,
        learning_rate=args.lr,
        lr_final_fraction=1.0,
        seed=seed,
        average_decay=0.0,
    )
    state, static = init(model, training)
    state = start_beta(state, target, training)
    averages = [state.params for _ in args.decays]
    settings = UpdateSettings(training, config.chains, config.prediction)
    beta, one = jnp.asarray(meta["beta"]), jnp.asarray(1.0)
    step = meta.get("fab_step_size", training.fab_step_size)
    rows, evals, start = [], 0, time.perf_counter()
    for i in range(args.updates + 1):
        if i % args.every == 0:
            ess = [ess_fraction(p, static, target, beta, args.n) for p in (state.params, *averages)]
            rows.append((i, evals, *ess))
            shown = "  ".join(f"{e:.3f}" for e in ess)
            print(f"  update {i}: ESS {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)
        if i == args.updates:
            break
        refresh = i % training.fab_reuse == 0
        key = jr.fold_in(jr.key(seed), i)
        state, info = update_step(
            state, static, key, beta, one, jnp.asarray(step), target, settings, refresh
        )
        evals += int(info.energy_evals)
        if training.objective == "fab" and refresh:
            step = adapt_fab_step(step, float(info.acceptance))
        averages = [
            jax.tree.map(lambda a, p, d=d: d * a + (1.0 - d) * p, a, state.params)
            for a, d in zip(averages, args.decays, strict=True)
        ]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--decays", type=float, nargs="+", default=[0.99, 0.998])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-n", type=int, default=8000, help="draws for each ESS")
    args = parser.parse_args(argv)

    config, target, flow, conditional, meta = load_run(args.run)
    if conditional is None:
        raise SystemExit(f"{args.run}: needs a run with a learned [conditional]")
    results = []
    for seed in args.seeds:
        print(f"seed {seed}:", flush=True)
        results.append(continue_training(config, target, (flow, conditional), meta, args, seed))
    per_seed = np.array(results)  # (seeds, rows, 2 + arms)
    arms = ["parameters"] + [f"average {d:g}" for d in args.decays]
    print(
        f"\n{args.run.name}, objective {config.training.objective}, beta {meta['beta']:g}, "
        f"lr {args.lr:g} (constant), batch {config.training.batch_size}, one-shot ESS of "
        f"{args.n} draws, mean ± sd over seeds {args.seeds}\n"
    )
    print("| updates | energy evals | " + " | ".join(arms) + " |")
    print("|---" * (2 + len(arms)) + "|")
    for j in range(per_seed.shape[1]):
        cells = []
        for a in range(len(arms)):
            v = per_seed[:, j, 2 + a]
            sd = v.std(ddof=1) if len(v) > 1 else 0.0
            cells.append(f"{v.mean():.3f} ± {sd:.3f}")
        i, evals = int(per_seed[0, j, 0]), int(per_seed[:, j, 1].mean())
        print(f"| {i} | {evals:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
