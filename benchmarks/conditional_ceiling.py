"""How far is a run's learned Gaussian q(Y|X) from the best Gaussian at each X? Prints a
markdown table.

    python benchmarks/conditional_ceiling.py RUN [--draws 16384] [--per-basin 4]
        [--shrink 0.5] [--scales 0.95 1 1.05 1.1 1.2] [--polish 0] [-n 4000]

From a molecule run's newest checkpoint with a learned [conditional], nothing retrained. At
``--per-basin`` X of q(X)'s draws in each basin of the first residue (a pool of ``-n``), with
``--draws`` draws of q(Y|X) at each X (one energy each), the median over X of:

* the conditional ESS fraction of the first 32 draws (what conditional_polish.py and
  conditional_network.py report) and of all of them, and the Pareto k of all their log-weights
  (above 0.5 the weights' variance is infinite, and the ESS fraction falls as the draws grow):
  a heavy-tailed weight is seen only among many draws, so the first overstates;
* ``offset``: |m|^2, m the self-normalised mean of the base draws eps under p(Y|X), in units
  of q's own widths (0 where q's mean is p's);
* the ESS of the same Gaussian moved by m (``mean of p``), and moved and reshaped to p's
  weighted covariance C of eps as well (``mean and covariance of p``; C comes from the same
  draws and carries their noise, n_y (n_y + 1) / 2 entries from the draws' effective number,
  so it is shrunk by ``--shrink`` toward its mean variance times I): new, exact Gaussians in
  q's coordinates (mean mu + L m / sqrt(beta), factor L chol(C)), scored on fresh draws;
* the ESS with the Cholesky factor scaled by each of ``--scales`` (the same fresh draws).

A Gaussian moved and reshaped to p's moments is the best Gaussian for importance weights (it
minimises KL(p || q)); where even it stays far below 1, the Gaussian form is the limit, not
the training.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from conditional_polish import x_by_basin  # benchmarks/ (run as a script)

from coarseflow.analysis.metrics import pareto_k
from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.workflow import load_run


def _log_weights(conditional, target, beta, x, eps, gaussian):
    """log p_beta(Y|X) - log q(Y|X) + const (K,) for base draws eps (K, n_y) through the
    Gaussian ``gaussian`` = (h, mu, L) at x; -inf where the draw is not usable."""

    def one(e):
        Y, _, valid = conditional.transform(target, x, beta, e, gaussian)
        log_q = conditional.log_prob(target, x, beta, Y, gaussian)
        u = target.energy_xy(x, Y)
        ok = valid & jnp.isfinite(u) & jnp.isfinite(log_q)
        return jnp.where(ok, -beta * u - log_q, -jnp.inf)

    return jax.vmap(one)(eps)


def _ess(log_w):
    w = jax.nn.softmax(log_w)
    return 1.0 / jnp.sum(w**2) / log_w.shape[0], w


def ceiling_at(conditional, target, beta, x, key, draws: int, scales, shrink: float) -> dict:
    """The module's figures at one X (n_x,): ESS fractions ``ess_32``, ``ess``, ``mean``,
    ``matched``, ``scaled`` (len(scales),), ``offset`` (|m|^2) and the draws' ``log_w``."""
    h, mu, L = conditional._gaussian(target, x, beta)
    k_q, k_new = jr.split(key)
    eps = jr.normal(k_q, (draws, conditional.n_y), x.dtype)
    log_w = _log_weights(conditional, target, beta, x, eps, (h, mu, L))
    ess, w = _ess(log_w)
    m = w @ eps
    d = eps - m
    cov = (d * w[:, None]).T @ d
    eye = jnp.eye(conditional.n_y, dtype=x.dtype)
    cov = (1 - shrink) * cov + shrink * jnp.trace(cov) / conditional.n_y * eye + 1e-9 * eye
    moved = mu + (L @ m) / jnp.sqrt(beta)
    fresh = jr.normal(k_new, eps.shape, x.dtype)

    def ess_of(gaussian):
        return _ess(_log_weights(conditional, target, beta, x, fresh, gaussian))[0]

    return {
        "ess_32": _ess(log_w[:32])[0],
        "ess": ess,
        "log_w": log_w,
        "offset": jnp.sum(m**2),
        "mean": ess_of((h, moved, L)),
        "matched": ess_of((h, moved, L @ jnp.linalg.cholesky(cov))),
        "scaled": jnp.stack([ess_of((h, mu, L * s)) for s in scales]),
    }


def ceiling(conditional, target, beta, X, key, draws: int, scales, shrink: float) -> dict:
    """:func:`ceiling_at` at each row of X (m, n_x), one X at a time: {name: (m, ...)}, the
    log-weights replaced by their Pareto k (m,)."""
    at = jax.jit(
        lambda k, x: ceiling_at(conditional, target, beta, x, k, draws, tuple(scales), shrink)
    )
    rows = [at(k, x) for k, x in zip(jr.split(key, X.shape[0]), X, strict=True)]
    found = {name: np.stack([np.asarray(r[name]) for r in rows]) for name in rows[0]}
    found["pareto_k"] = np.array([pareto_k(log_w) for log_w in found.pop("log_w")])
    return found


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--draws", type=int, default=16384, help="draws of q(Y|X) per X")
    parser.add_argument("--per-basin", type=int, default=4, help="X per basin")
    parser.add_argument("--shrink", type=float, default=0.5, help="of p's covariance, 0-1")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.95, 1.0, 1.05, 1.1, 1.2])
    parser.add_argument("--polish", type=int, nargs="+", default=[0], help="polish steps")
    parser.add_argument("-n", type=int, default=4000, help="draws of q(X) to find X in")
    args = parser.parse_args(argv)

    loaded = load_run(args.run)
    config, target, flow, conditional, meta = loaded
    if conditional is None:
        raise SystemExit(f"{args.run}: needs a run with a learned [conditional]")
    beta = jnp.asarray(meta["beta"])
    per_basin = x_by_basin(loaded, MoleculeReport(target), args.n, args.per_basin, seed=7)

    rows = []
    for steps in args.polish:
        polished = dataclasses.replace(conditional, polish=steps)
        for basin, X in per_basin.items():
            found = ceiling(
                polished, target, beta, X, jr.key(11), args.draws, args.scales, args.shrink
            )
            row = {"basin": basin, "polish": steps, "X": len(X)}
            row.update({k: np.median(v, axis=0) for k, v in found.items()})
            rows.append(row)
            print(f"{basin}, polish {steps}: ESS {row['ess']:.3f}", flush=True)

    print(
        f"\n{args.run.name}, beta {meta['beta']:g}: medians over X of the conditional ESS "
        f"fraction, {args.draws} draws of q(Y|X) per X; p's covariance shrunk by {args.shrink:g}\n"
    )
    scales = " | ".join(f"L x {s:g}" for s in args.scales)
    print(
        f"| basin | X | polish | ESS, 32 draws | ESS | Pareto k | offset | mean of p "
        f"| mean and covariance of p | {scales} |"
    )
    print("|---" * (9 + len(args.scales)) + "|")
    for r in rows:
        scaled = " | ".join(f"{v:.3f}" for v in r["scaled"])
        print(
            f"| {r['basin']} | {r['X']} | {r['polish']} | {r['ess_32']:.3f} | {r['ess']:.3f} "
            f"| {r['pareto_k']:.2f} "
            f"| {r['offset']:.2f} | {r['mean']:.3f} | {r['matched']:.3f} | {scaled} |"
        )
    return rows


if __name__ == "__main__":
    main()
