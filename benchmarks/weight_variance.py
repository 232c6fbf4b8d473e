"""Where a learned model's importance weights lose their ESS: q(X) or q(Y|X)? Prints a table.

    python benchmarks/weight_variance.py RUN [RUN ...] [-m 2000] [-k 32] [--seed 0] [--beta B]

For a run with a learned conditional (objective joint / hybrid / fab), M coarse-grained
samples X ~ q(X) and, for each, K fast samples Y ~ q(Y|X); w = exp(-beta u(x)) / q(X) q(Y|X).
The weight factors exactly as w(X, Y) = [p~(X) / q(X)] [p(Y|X) / q(Y|X)] with
p~(X) = ∫ exp(-beta u) dY, so the ESS of one-shot samples is lost in two places:

* **conditional ESS**, per X the ESS fraction of its K weights: how well q(Y|X) matches
  p(Y|X) (1 for an exact conditional, whatever q(X) is);
* **marginal ESS**, the ESS fraction of the M per-X means w_X = mean_k w(X, Y_k), unbiased for
  p~(X) / q(X): how well q(X) matches the coarse-grained marginal (its noise from finite K
  lowers it a little: compare two K);
* **one-shot ESS**, of the M weights w(X, Y_1): what `coarseflow evaluate` reports.

One-shot ESS ≈ marginal x conditional when the two are independent of each other. Counts
M K energy evaluations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from coarseflow.analysis.metrics import ess
from coarseflow.model.linear_map import physical_samples
from coarseflow.predict.conditional import sample_learned
from coarseflow.workflow import load_run


@eqx.filter_jit
def _log_weights(flow, conditional, target, key, beta, m: int, k: int):
    """(M, K) log-weights: M draws of q(X), K of q(Y|X) for each."""
    X, log_qX = flow.sample_and_log_prob(jr.fold_in(key, 0), (m,))
    Xk = jnp.repeat(X, k, axis=0)
    Y, log_qY, _ = sample_learned(jr.fold_in(key, 1), target, Xk, beta, conditional)
    x, log_det = physical_samples(conditional, target, Xk, Y)
    u = jax.vmap(target.energy)(x)
    log_w = -beta * u - (jnp.repeat(log_qX, k) + log_qY - log_det)
    return log_w.reshape(m, k)


def _ess_fraction(log_w: np.ndarray) -> float:
    return float(ess(log_w)) / log_w.shape[-1]


def decompose(path: Path, m: int, k: int, seed: int, beta: float | None, rows: int) -> dict:
    """The ESS and log-variance decomposition of run ``path``'s checkpoint at ``beta``."""
    config, target, flow, conditional, meta = load_run(path, beta)
    if conditional is None:
        raise SystemExit(f"{path}: no learned q(Y|X) (objective {config.training.objective})")
    beta = jnp.asarray(meta["beta"])
    batches = [
        np.asarray(_log_weights(flow, conditional, target, jr.key(seed + i), beta, rows, k))
        for i in range(-(-m // rows))
    ]
    log_w = np.concatenate(batches)[:m]
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    per_x = np.array([_ess_fraction(row) for row in log_w])
    top = np.max(log_w)
    with np.errstate(divide="ignore"):  # an X whose K weights are all 0: log 0 = -inf
        log_mean = top + np.log(np.mean(np.exp(log_w - top), axis=1))
    return {
        "run": str(path),
        "beta": float(meta["beta"]),
        "M": m,
        "K": k,
        "one_shot_ess": _ess_fraction(log_w[:, 0]),
        "marginal_ess": _ess_fraction(log_mean),
        "conditional_ess_mean": float(np.mean(per_x)),
        "conditional_ess_q10": float(np.quantile(per_x, 0.1)),
        "energy_evals": m * k,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("-m", type=int, default=2000, help="draws of X (default 2000)")
    parser.add_argument("-k", type=int, default=32, help="draws of Y per X (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beta", type=float, default=None, help="checkpoint (default: newest)")
    parser.add_argument("--rows", type=int, default=100, help="X per compiled batch")
    args = parser.parse_args(argv)
    cols = ("beta one_shot_ess marginal_ess conditional_ess_mean conditional_ess_q10").split()
    print("| run | M x K | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for path in args.runs:
        r = decompose(path, args.m, args.k, args.seed, args.beta, args.rows)
        cells = " | ".join(f"{r[c]:.3f}" for c in cols)
        print(f"| {path.name} | {r['M']} x {r['K']} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
