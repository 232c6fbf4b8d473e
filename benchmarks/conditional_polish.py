"""Does moving the learned q(Y|X)'s mean toward the mode of p(Y|X) at each X (the
conditional's ``polish`` steps) recover the basins where the network extrapolates? Prints
markdown tables.

    python benchmarks/conditional_polish.py RUN [--polish 0 1 2 4 8] [--sets 3] [-n 20000]
        [--per-basin 32] [-k 32]

From a molecule run's newest checkpoint (beta 1) with a learned [conditional], nothing
retrained: for each number of polish steps K the same q(X) and network, with mu(X) moved K
Newton-like steps toward the mode of p_beta(xi|X) (``coarseflow.model.polish.polish_mean``; a
deterministic function of X, so the density stays exact; K + 1 energy + force evaluations per
X). Then:

* per basin of the first residue, at up to ``--per-basin`` X of q's draws there (the same X for
  every K, from a pool of ``-n`` one-shot draws): the conditional ESS of ``-k`` draws of q(Y|X)
  (weights normalised within each X) and the median over draws of u(X, Y) - u(X, Y*) (kT), Y*
  the Laplace fit's mode (the run's minimize settings);
* one-shot: ESS and Pareto k of ``--sets`` sets of ``-n`` draws of q(X) q(Y|X), and the
  reweighted populations of the first residue's basins against the run's reference, with z
  (against_reference.py's scoring).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from against_reference import residue_scores, z_score  # benchmarks/ (run as a script)
from conditional_by_basin import laplace_energies

from coarseflow.analysis.evaluation import reference_metrics
from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.analysis.reports import is_one
from coarseflow.predict.draw import draw_samples
from coarseflow.reference import load_reference
from coarseflow.targets.molecule.registry import builtin_reference
from coarseflow.workflow import load_run


@eqx.filter_jit
def _draws_at(conditional, key, target, beta, X, k: int):
    """Reduced energies u (m, k) and log-weights -beta u - log q(Y|X) (m, k) of k draws of
    q(Y|X) at each row of X (m, n_x), the polished mean computed once per X; -inf where not
    usable."""

    def one(key, x):
        gaussian = conditional._gaussian(target, x, beta)

        def draw(key):
            eps = jr.normal(key, (conditional.n_y,), x.dtype)
            Y, _, valid = conditional.transform(target, x, beta, eps, gaussian)
            log_q = conditional.log_prob(target, x, beta, Y, gaussian)
            u = target.energy_xy(x, Y)
            ok = valid & jnp.isfinite(u) & jnp.isfinite(log_q)
            return u, jnp.where(ok, -beta * u - log_q, -jnp.inf)

        return jax.vmap(draw)(jr.split(key, k))

    return jax.vmap(one)(jr.split(key, X.shape[0]), X)


def basin_conditional(conditional, target, beta, X, u_mode: np.ndarray, k: int):
    """(mean conditional ESS fraction of k draws over the rows of X (m, n_x), median of
    u(X, Y) - u(X, Y*) (kT) over the m k draws; u_mode (m,): u at Y*)."""
    u, log_w = _draws_at(conditional, jr.key(20_000), target, beta, X, k)
    w = np.asarray(jax.nn.softmax(log_w, axis=1))
    ess = 1.0 / np.sum(w**2, axis=1) / k
    gap = np.asarray(u) - u_mode[:, None]
    return float(np.nanmean(ess)), float(np.nanmedian(gap))


def one_shot(conditional, loaded, report, arrays, n: int, seed: int):
    """(ESS fraction, Pareto k, the first residue's basins: name -> (population, z)) of ``n``
    one-shot draws of q(X) q(Y|X)."""
    config, target, flow, _, meta = loaded
    samples = draw_samples(
        jr.key(seed), target, flow, meta["beta"], config.prediction, n=n, conditional=conditional
    )
    metrics = reference_metrics(target, samples, meta["beta"])
    first = residue_scores(report, samples, metrics, arrays, seed)[0]
    basins = {
        name: (
            b["reweighted"],
            z_score(b["reweighted"], b["reweighted_err"], b["reference"], b["reference_err"]),
        )
        for name, b in first["basins"].items()
    }
    return metrics["ess_fraction"], metrics["pareto_k"], basins


def x_by_basin(loaded, report, n: int, per_basin: int, seed: int) -> dict:
    """{basin: X (m <= per_basin, n_x)}: the first X of ``n`` draws of the run's q(X) q(Y|X)
    in each basin of the first residue (basins that no draw reaches are left out)."""
    config, target, flow, conditional, meta = loaded
    target.x_bijection()  # the molecule scans its dihedral seams once, outside jit
    pool = draw_samples(
        jr.key(seed), target, flow, meta["beta"], config.prediction, n=n, conditional=conditional
    )
    angles = report.observables(pool.x)
    basins = report.basin_sets()[0]
    labels = basins.labels(angles["phi"][:, 0], angles["psi"][:, 0])
    found = {
        b: jnp.asarray(pool.X[np.flatnonzero(labels == i)[:per_basin]])
        for i, b in enumerate(basins.names)
    }
    return {b: X for b, X in found.items() if len(X)}


def mean_sd(values) -> str:
    v = np.asarray(values, float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {sd:.3f}"


def reference_population(arrays, report, basin: str) -> float:
    """The reference's share of ``basin`` (first residue)."""
    basins = report.basin_sets()[0]
    phi = np.reshape(arrays["phi"], (len(arrays["phi"]), -1))[:, 0]
    psi = np.reshape(arrays["psi"], (len(arrays["psi"]), -1))[:, 0]
    labels = basins.labels(phi, psi)
    return float(np.mean(labels == list(basins.names).index(basin))) if len(labels) else math.nan


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--polish", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--sets", type=int, default=3, help="one-shot sets of -n draws")
    parser.add_argument("-n", type=int, default=20000, help="one-shot draws (and the X pool)")
    parser.add_argument("--per-basin", type=int, default=32)
    parser.add_argument("-k", type=int, default=32, help="Y draws per X")
    args = parser.parse_args(argv)

    loaded = load_run(args.run)
    config, target, flow, conditional, meta = loaded
    if conditional is None:
        raise SystemExit(f"{args.run}: needs a run with a learned [conditional]")
    if not is_one(meta["beta"]):  # the reference is at beta = 1 only
        raise SystemExit(f"{args.run}: its last checkpoint is at beta {meta['beta']}, not 1")
    name = config.target.get("reference")
    if name is None:
        raise SystemExit(f"{args.run}: its [target] names no reference")
    report = MoleculeReport(target)
    arrays = load_reference(builtin_reference(str(name)) or name)
    beta = jnp.asarray(meta["beta"])

    at_mode = laplace_energies(loaded)
    per_basin = {
        basin: (X, np.asarray(at_mode(X)))
        for basin, X in x_by_basin(loaded, report, args.n, args.per_basin, seed=5).items()
    }

    rows = []
    for steps in args.polish:
        polished = dataclasses.replace(conditional, polish=steps)
        by_basin = {
            basin: basin_conditional(polished, target, beta, X, u_mode, args.k)
            for basin, (X, u_mode) in per_basin.items()
        }
        sets = [
            one_shot(polished, loaded, report, arrays, args.n, 100 + s) for s in range(args.sets)
        ]
        rows.append({"polish": steps, "by_basin": by_basin, "sets": sets})
        print(f"polish {steps}: one-shot ESS {', '.join(f'{s[0]:.3f}' for s in sets)}", flush=True)

    print(
        f"\n{args.run.name}, beta {meta['beta']:g}: the run's q(Y|X) with its mean polished; "
        f"{args.sets} sets of {args.n} one-shot draws\n"
    )
    print("| polish steps | evals per sample | one-shot ESS | Pareto k |")
    print("|---|---|---|---|")
    for r in rows:
        evals = 1 + (r["polish"] + 1 if r["polish"] else 0)
        print(
            f"| {r['polish']} | {evals} | {mean_sd([s[0] for s in r['sets']])} "
            f"| {mean_sd([s[1] for s in r['sets']])} |"
        )
    print(
        "\n| basin | X | polish | conditional ESS | u(q's Y) - u(Y*), kT | reweighted "
        "| z | reference |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for basin, (X, _) in per_basin.items():
        for r in rows:
            populations = [s[2][basin][0] for s in r["sets"]]
            z = [s[2][basin][1] for s in r["sets"]]
            ess, gap = r["by_basin"][basin]
            print(
                f"| {basin} | {len(X)} | {r['polish']} | {ess:.3f} | {gap:.2f} "
                f"| {mean_sd(populations)} | {', '.join(f'{v:+.1f}' for v in z)} "
                f"| {reference_population(arrays, report, basin):.4f} |"
            )
    return rows


if __name__ == "__main__":
    main()
