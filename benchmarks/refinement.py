"""How far does the AIS refinement lift a learned model's ESS, and at what cost? Prints a table.

    python benchmarks/refinement.py RUN [--steps 0 10 30 100] [--leapfrog 1] [--polish 0]
        [--draws 0 1 2] [--target-acceptance 0.6] [-n 5000]

From the newest checkpoint of a trained run with a learned q(Y|X) (its beta, normally 1), each
``--steps`` K draws ``-n`` samples: K = 0 the one-shot model (X ~ q(X), Y ~ q(Y|X), exact
densities), K > 0 the refinement (``[prediction] refine_steps = K``, ``coarseflow evaluate
--refine-steps K``: annealed importance sampling from q toward p_beta in q's latent space, K
MALA steps per sample, each weight unbiased for Z); each ``--leapfrog`` L > 1 adds rows with HMC
steps of L leapfrog steps instead (``refine_leapfrog = L``, K x L evaluations per path); each
``--polish`` P > 0 adds rows with q(Y|X)'s mean polished by P steps at each X
(``[prediction] polish_steps = P``, P + 1 more evaluations per X, and per point of a path). Several
``--draws`` (independent sets of samples, the same keys for every K) give the spread of the ESS
fraction and of log Z, which on a few thousand weights is itself noisy. Energy evaluations per
sample are those the refinement counts (its pilot included, spread over the samples); the run's
training evaluations are its last checkpoint's count, so the last column is what the whole
estimate cost at 20,000 samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax.random as jr
import numpy as np

from coarseflow.analysis.metrics import ess_fraction, pareto_k
from coarseflow.predict.draw import draw_samples, log_partition_estimate
from coarseflow.predict.refine import refine
from coarseflow.workflow import load_run


def one_set(
    loaded,
    steps: int,
    seed: int,
    n: int,
    leapfrog: int = 1,
    target_acceptance: float = 0.6,
    polish: int = 0,
) -> dict:
    """ESS fraction, Pareto k, log Z, acceptance and evaluations per sample of one draw set."""
    config, target, flow, conditional, meta = loaded
    key = jr.key(1000 + seed)
    t0 = time.perf_counter()
    settings = dataclasses.replace(
        config.prediction,
        refine_steps=steps,
        refine_leapfrog=leapfrog,
        refine_target_acceptance=target_acceptance,
        polish_steps=polish,
    )
    if steps == 0:
        samples = draw_samples(
            key, target, flow, meta["beta"], settings, n=n, conditional=conditional
        )
        # one energy per sample (its weight), and the polish's at its X
        acceptance, evals = float("nan"), 1.0 + conditional.polished(polish).polish_evals
    else:
        samples, info = refine(key, target, flow, conditional, meta["beta"], settings, n=n)
        acceptance, evals = info["refine_acceptance"], info["refine_energy_evals"] / n
    log_w = np.asarray(samples.log_weights)
    return {
        "ess": float(ess_fraction(log_w)),
        "k": float(pareto_k(log_w)),
        "log_Z": float(log_partition_estimate(log_w)),
        "acceptance": acceptance,
        "evals_per_sample": evals,
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10, 30, 100])
    parser.add_argument("--leapfrog", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--target-acceptance",
        type=float,
        default=0.6,
        help="the pilot's (refine_target_acceptance)",
    )
    parser.add_argument("--polish", type=int, nargs="+", default=[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-n", type=int, default=5000, help="samples per draw set")
    args = parser.parse_args(argv)

    loaded = load_run(args.run)
    if loaded.conditional is None:
        raise SystemExit(f"{args.run}: needs a run with a learned [conditional]")
    trained = int(loaded.meta["energy_evals"])  # the checkpoint's count: updates and ladder
    rows = []
    cases = [
        (k, L, p)
        for p in args.polish
        for k in args.steps
        for L in args.leapfrog
        if k > 0 or L == args.leapfrog[0]
    ]
    for steps, leapfrog, polish in cases:
        sets = [
            one_set(loaded, steps, seed, args.n, leapfrog, args.target_acceptance, polish)
            for seed in args.draws
        ]
        row = {"steps": steps, "leapfrog": leapfrog, "polish": polish, "sets": sets}
        for name in ("ess", "k", "log_Z", "acceptance", "evals_per_sample", "seconds"):
            values = np.array([s[name] for s in sets])
            row[name] = float(values.mean())
            row[name + "_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
        each = ", ".join(f"{s['ess']:.3f} (k {s['k']:.2f})" for s in sets)
        print(
            f"  K = {steps}, L = {leapfrog}, polish {polish}: "
            f"ESS {row['ess']:.3f} ± {row['ess_sd']:.3f} [{each}], "
            f"log Z {row['log_Z']:.3f} ± {row['log_Z_sd']:.3f} ({row['seconds']:.0f} s a set)",
            flush=True,
        )
    print(
        f"\n{args.run.name}, beta {loaded.meta['beta']:g}, {args.n} samples per set, mean ± sd "
        f"over draw sets {args.draws}; pilot's target acceptance {args.target_acceptance}; "
        f"training: {trained:,} energy evaluations\n"
    )
    print(
        "| refine steps K | leapfrog L | polish | ESS fraction | Pareto k | log Z | acceptance "
        "| evals per sample | training + 20,000 samples |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = trained + 20_000 * r["evals_per_sample"]
        acc = "-" if r["steps"] == 0 else f"{r['acceptance']:.2f}"
        print(
            f"| {r['steps']} | {r['leapfrog']} | {r['polish']} "
            f"| {r['ess']:.3f} ± {r['ess_sd']:.3f} | "
            f"{r['k']:.2f} | {r['log_Z']:.3f} ± {r['log_Z_sd']:.3f} | {acc} | "
            f"{r['evals_per_sample']:.1f} | {total:.3g} |"
        )
    return rows


if __name__ == "__main__":
    main()
