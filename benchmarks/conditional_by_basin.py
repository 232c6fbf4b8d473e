"""Where does a learned model's weight go missing? Per Ramachandran basin of a molecule run's
first residue: q's one-shot draws, their energies and log-weights, and the energy of the same X
with Y from the Laplace fit of p(Y|X) instead of the learned q(Y|X). Prints a markdown table.

    python benchmarks/conditional_by_basin.py RUN [-n 20000] [--per-basin 24] [--seed 5]

From the newest checkpoint (beta 1 normally) of a run with a learned [conditional]: ``-n``
one-shot samples (X ~ q(X), Y ~ q(Y|X), exact densities). For each basin: the share of draws
(raw), the mean reduced energy u (kT) of the draws, their median and largest log-weight (0 is
the largest of all samples), and, for the first ``--per-basin`` of its draws, the mean u with
the learned Y and with Y at the mode of p(Y|X) (``[prediction] conditional = "laplace"``, the
run's minimize settings). A basin whose draws are many kT above their Laplace energies gets no
weight however often q(X) visits it: q(Y|X) is what loses it there, not q(X).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.predict.conditional import sample_q_y
from coarseflow.predict.draw import draw_samples
from coarseflow.workflow import load_run


def basin_rows(
    names, labels: np.ndarray, energy: np.ndarray, log_weights: np.ndarray
) -> list[dict]:
    """One record per basin name (``labels`` (N,) index into ``names``): name, share of the
    N draws, n, mean energy, median and largest log-weight relative to the largest of all
    (NaN where the basin has no draw)."""
    log_w = np.asarray(log_weights, np.float64) - np.max(log_weights)
    rows = []
    for k, name in enumerate(names):
        inside = labels == k
        n = int(inside.sum())
        nan = float("nan")
        rows.append(
            {
                "basin": name,
                "share": n / len(labels),
                "n": n,
                "energy": float(np.mean(energy[inside])) if n else nan,
                "log_w_median": float(np.median(log_w[inside])) if n else nan,
                "log_w_max": float(np.max(log_w[inside])) if n else nan,
            }
        )
    return rows


def laplace_energies(loaded):
    """A jitted X (M, n_x) -> reduced energies (M,) with Y at the mode of p(Y|X) (the Laplace
    fit), built once for every basin."""
    config, target, _, _, meta = loaded

    @jax.jit
    def energies(X):
        Y, _, _ = sample_q_y(jr.key(0), target, X, meta["beta"], "laplace", config.prediction)
        return jax.vmap(target.energy)(target.partition.merge(X, Y))

    return energies


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--per-basin", type=int, default=24)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)

    loaded = load_run(args.run)
    config, target, flow, conditional, meta = loaded
    if conditional is None:
        raise SystemExit(f"{args.run}: needs a run with a learned [conditional]")
    target.x_bijection()  # the molecule scans its dihedral seams once, outside jit
    samples = draw_samples(
        jr.key(args.seed),
        target,
        flow,
        meta["beta"],
        config.prediction,
        n=args.n,
        conditional=conditional,
    )
    report = MoleculeReport(target)
    angles = report.observables(samples.x)
    basins = report.basin_sets()[0]
    labels = basins.labels(angles["phi"][:, 0], angles["psi"][:, 0])
    rows = basin_rows(basins.names, labels, samples.energy, samples.log_weights)
    print(
        f"\n{args.run.name}, beta {meta['beta']:g}, {args.n} one-shot samples, first residue; "
        f"the last two columns on the first {args.per_basin} draws of each basin\n"
    )
    print(
        "| basin | share of draws | mean u (kT) | median log w | max log w "
        "| u, learned Y | u, Laplace Y |"
    )
    print("|---|---|---|---|---|---|---|")
    at_mode = laplace_energies(loaded)
    for k, row in enumerate(rows):
        first = np.flatnonzero(labels == k)[: args.per_basin]
        learned = float(np.mean(samples.energy[first])) if first.size else float("nan")
        laplace = (
            float(np.mean(at_mode(jnp.asarray(samples.X[first])))) if first.size else float("nan")
        )
        row |= {"energy_learned": learned, "energy_laplace": laplace}
        print(
            f"| {row['basin']} | {row['share']:.4f} | {row['energy']:.1f} "
            f"| {row['log_w_median']:.1f} | {row['log_w_max']:.1f} | {learned:.1f} "
            f"| {laplace:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
