"""Does training q(Y|X) also at X with spread angles (``[training] conditional_coverage``) make
it good in the basins that q(X) rarely visits? Prints markdown tables.

    python benchmarks/conditional_coverage.py RUN [--coverage 0 0.25] [--seeds 0 1 2]
        [--updates 600] [--lr 1e-4] [--ema 0.99] [-n 20000] [--per-basin 32] [-k 32]

q(X) of a molecule run's newest checkpoint is held fixed. From the run's learned q(Y|X), q(Y|X)
is trained on at that beta as training trains it: the conditional reverse KL at [training]
batch_size X of q(X), plus :func:`coarseflow.training.losses.coverage_loss` at round(c *
batch_size) X of q with their CG dihedrals spread uniformly (one energy + force evaluation per
X; Adam behind the gradient guard), each coverage c from the same start with the same seeds.
Then, at the moving average of its parameters (``--ema``):

* the conditional ESS: of K draws of q(Y|X) at each of M X ~ q(X) (conditional_capacity.py);
* per basin of the first residue, at up to ``--per-basin`` X of q's draws there (the same X for
  every arm, from a pool of ``-n`` draws): the conditional ESS of K draws, and the median over
  draws of u(X, Y) - u(X, Y*) (kT), Y ~ q(Y|X) against Y* the mode of p(Y|X) (the Laplace fit,
  the run's minimize settings): where q(Y|X) extrapolates it sits tens of kT above;
* one-shot: the ESS of ``-n`` draws of q(X) q(Y|X) and the reweighted populations of the first
  residue's basins against the run's reference, with z (against_reference.py's scoring).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from against_reference import residue_scores, z_score  # benchmarks/ (run as a script)
from conditional_by_basin import laplace_energies
from conditional_capacity import train_arm

from coarseflow.analysis.evaluation import reference_metrics
from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.analysis.reports import is_one
from coarseflow.model.flow import spread_angles
from coarseflow.objectives import conditional_terms, masked_mean
from coarseflow.predict.draw import draw_samples
from coarseflow.reference import load_reference
from coarseflow.targets.molecule.registry import builtin_reference
from coarseflow.training.losses import coverage_loss
from coarseflow.training.settings import TrainingSettings
from coarseflow.workflow import load_run


def coverage_gradient(coverage: float, batch: int, focus=None):
    """A ``train_arm`` gradient: the conditional reverse KL at ``batch`` X ~ q(X) plus
    conditional_coverage's term at round(coverage * batch) X with spread angles, as training
    computes them (three programs); (gradient, evaluations counted where made). ``focus``
    (m, n_x): draw the term's X from these rows instead (with replacement; ``--focus``)."""
    training = TrainingSettings(batch_size=batch, objective="hybrid", conditional_coverage=coverage)

    @eqx.filter_jit
    def plain(params, static, key, flow, target, beta):
        X = jax.lax.stop_gradient(flow.sample(jr.fold_in(key, 0), (batch,)))

        def loss(p):
            terms = conditional_terms(eqx.combine(p, static), key, target, X, beta, 10.0)
            return masked_mean(terms.surrogate, terms.ok), terms.n_evals

        return jax.grad(loss, has_aux=True)(params)

    @eqx.filter_jit
    def spread_term(params, static, key, spread, target, beta):
        def loss(p):
            return coverage_loss(eqx.combine(p, static), key, target, spread, beta, training)

        return jax.grad(loss, has_aux=True)(params)

    def gradient(params, static, key, flow, target, beta, batch, draws, args):
        grads, evals = plain(params, static, key, flow, target, beta)
        if training.coverage_size():
            n = training.coverage_size()
            if focus is None:
                spread = eqx.filter_jit(spread_angles)(jr.fold_in(key, 7), flow, target, n)
            else:
                spread = focus[jr.randint(jr.fold_in(key, 7), (n,), 0, len(focus))]
            extra, more = spread_term(params, static, key, spread, target, beta)
            grads, evals = jax.tree.map(jnp.add, grads, extra), evals + more
        return grads, int(evals)

    return gradient


@eqx.filter_jit
def _draws_at(conditional, key, target, beta, Xk):
    """Reduced energies u (N,) and log-weights -beta u - log q(Y|X) (N,) of one Y ~ q(Y|X) at
    each row of Xk (N, n_x); -inf where not usable."""
    sample = conditional.sample_batch(key, target, Xk, beta)
    u = jax.vmap(target.energy_xy)(Xk, sample.Y)
    ok = sample.valid & jnp.isfinite(u) & jnp.isfinite(sample.log_q)
    return u, jnp.where(ok, -beta * u - sample.log_q, -jnp.inf)


def basin_conditional(conditional, target, beta, X: np.ndarray, u_mode: np.ndarray, k: int):
    """(mean conditional ESS fraction of k draws over the m rows of X (m, n_x), median of
    u(X, Y) - u(X, Y*) (kT) over the m k draws; u_mode (m,): u at Y*)."""
    u, log_w = _draws_at(conditional, jr.key(20_000), target, beta, jnp.repeat(X, k, axis=0))
    w = np.asarray(jax.nn.softmax(log_w.reshape(len(X), k), axis=1))
    ess = 1.0 / np.sum(w**2, axis=1) / k
    gap = np.asarray(u).reshape(len(X), k) - u_mode[:, None]
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


def mean_sd(values) -> str:
    v = np.asarray(values, float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {sd:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--coverage", type=float, nargs="+", default=[0.0, 0.25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("-n", type=int, default=20000, help="one-shot draws (and the X pool)")
    parser.add_argument("--per-basin", type=int, default=32)
    parser.add_argument("-m", type=int, default=500, help="X draws for the conditional ESS")
    parser.add_argument("-k", type=int, default=32, help="Y draws per X for the ESS")
    parser.add_argument(
        "--focus",
        default=None,
        help="a basin of the first residue: the coverage term's X are q's draws in it (the "
        "pool's) instead of spread X: can q(Y|X) be right there when it is trained there?",
    )
    args = parser.parse_args(argv)
    args.every, args.draws = args.updates, 1  # train_arm's ESS only at the start and the end

    loaded = load_run(args.run)
    config, target, flow, conditional, meta = loaded
    if conditional is None:
        raise SystemExit(f"{args.run}: needs a run with a learned [conditional]")
    if not is_one(meta["beta"]):  # the reference is at beta = 1 only
        raise SystemExit(f"{args.run}: its last checkpoint is at beta {meta['beta']}, not 1")
    name = config.target.get("reference")
    if name is None:
        raise SystemExit(f"{args.run}: its [target] names no reference")
    target.x_bijection()  # the molecule scans its dihedral seams once, outside jit
    report = MoleculeReport(target)
    arrays = load_reference(builtin_reference(str(name)) or name)
    beta = jnp.asarray(meta["beta"])
    batch = config.training.batch_size

    # the X of each basin of the first residue: q's one-shot draws (the same for every arm)
    pool = draw_samples(
        jr.key(5), target, flow, meta["beta"], config.prediction, n=args.n, conditional=conditional
    )
    angles = report.observables(pool.x)
    basins = report.basin_sets()[0]
    labels = basins.labels(angles["phi"][:, 0], angles["psi"][:, 0])
    at_mode = laplace_energies(loaded)
    per_basin = {}
    for k, basin in enumerate(basins.names):
        X = jnp.asarray(pool.X[np.flatnonzero(labels == k)[: args.per_basin]])
        if len(X):
            per_basin[basin] = (X, np.asarray(at_mode(X)))

    rows = []
    for coverage in args.coverage:
        focus = None
        if args.focus is not None:
            focus = jnp.asarray(pool.X[labels == list(basins.names).index(args.focus)])
            print(f"--focus {args.focus}: {len(focus)} X of q in it", flush=True)
        gradient = coverage_gradient(coverage, batch, focus)
        for seed in args.seeds:
            print(f"coverage {coverage:g}, seed {seed}:", flush=True)
            trace, trained = train_arm(
                conditional, flow, target, beta, args, seed, args.lr, batch, gradient
            )
            ess, k_hat, populations = one_shot(trained, loaded, report, arrays, args.n, seed)
            by_basin = {
                basin: basin_conditional(trained, target, beta, X, u_mode, args.k)
                for basin, (X, u_mode) in per_basin.items()
            }
            rows.append(
                {
                    "coverage": coverage,
                    "seed": seed,
                    "evals": trace[-1][1],
                    "conditional_ess": trace[-1][2],
                    "start_ess": trace[0][2],
                    "one_shot_ess": ess,
                    "pareto_k": k_hat,
                    "by_basin": by_basin,
                    "populations": populations,
                }
            )
            print(f"  one-shot ESS {ess:.3f}, Pareto k {k_hat:.2f}", flush=True)

    print(
        f"\n{args.run.name}, beta {meta['beta']:g}: q(Y|X) trained {args.updates} updates at lr "
        f"{args.lr:g}, measured at its average (ema {args.ema:g}); seeds {args.seeds}\n"
    )
    print(
        "| coverage | evals | conditional ESS (start) | conditional ESS | one-shot ESS | Pareto k |"
    )
    print("|---|---|---|---|---|---|")
    for coverage in args.coverage:
        mine = [r for r in rows if r["coverage"] == coverage]
        print(
            f"| {coverage:g} | {mine[0]['evals']:,} | {mine[0]['start_ess']:.3f} "
            f"| {mean_sd([r['conditional_ess'] for r in mine])} "
            f"| {mean_sd([r['one_shot_ess'] for r in mine])} "
            f"| {mean_sd([r['pareto_k'] for r in mine])} |"
        )
    print(
        "\n| basin | X | coverage | conditional ESS | u(q's Y) - u(Y*), kT | reweighted "
        "| z | reference |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for basin, (X, _) in per_basin.items():
        for coverage in args.coverage:
            mine = [r for r in rows if r["coverage"] == coverage]
            populations = [r["populations"][basin][0] for r in mine]
            z = [r["populations"][basin][1] for r in mine]
            print(
                f"| {basin} | {len(X)} | {coverage:g} "
                f"| {mean_sd([r['by_basin'][basin][0] for r in mine])} "
                f"| {mean_sd([r['by_basin'][basin][1] for r in mine])} "
                f"| {mean_sd(populations)} | {', '.join(f'{v:+.1f}' for v in z)} "
                f"| {_reference_population(arrays, report, basin):.4f} |"
            )


def _reference_population(arrays, report, basin: str) -> float:
    """The reference's share of ``basin`` (first residue)."""
    basins = report.basin_sets()[0]
    phi = np.reshape(arrays["phi"], (len(arrays["phi"]), -1))[:, 0]
    psi = np.reshape(arrays["psi"], (len(arrays["psi"]), -1))[:, 0]
    labels = basins.labels(phi, psi)
    return float(np.mean(labels == list(basins.names).index(basin))) if len(labels) else math.nan


if __name__ == "__main__":
    main()
