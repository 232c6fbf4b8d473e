"""Score trained molecule runs at beta = 1 against a reference file their configs do not name
(e.g. one made after they were trained), every (phi, psi) residue; prints markdown tables.

    python benchmarks/against_reference.py RUN [RUN ...] --reference REF.npz [-n 20000]
        [--refine-steps K]

``--reference``: a ``coarseflow reference`` npz or a built-in molecule's name. For each run: ESS
and Pareto k of ``-n`` samples of the last checkpoint (refined by AIS toward p with
``--refine-steps`` > 0 and a learned conditional), then two tables, one row per residue and one
per residue and basin (the residue's class's basins: general, glycine, proline, pre-proline):

* divergences of the residue's reweighted (phi, psi) from the reference's: KL(reference || model)
  and JS (nats) of 64 x 64 histograms on [-pi, pi)^2 with 0.5 pseudo-counts, as the evaluation
  computes them; the total variation (1/2) sum |p_bin - q_bin| of the same histograms without
  pseudo-counts, reweighted and raw; CMT's Ramachandran TV (ICLR 2026, Table 1: the same TV of
  100 x 100 histograms of the model's unweighted draws; its paper averages it over residues) with
  its floor, the TV of one half of the reference against n frames of the other (what a perfect
  model of n draws would score); the reference's split-half floor, the JS between its two
  halves of ladders: all frames, n frames per half (n, n; n the model's finite samples) and one
  half's frames against n of the other (half, n: what a perfect model of n samples would score,
  split_half_js); and JS / floor (half, n) (the aim of issue 13: <= 2);
* the reweighted population +- its standard error, the reference's +- its error (the larger of
  the between-ladders and between-time-blocks errors: basin_statistics.reference_populations, as
  ``coarseflow reference`` and the evaluation quote them) and z = difference / combined error.

The floors and the reference's errors need the file's ``chain`` array (the floors two ladders or
more); without it they are NaN.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import jax.random as jr
import numpy as np

from coarseflow.analysis.basin_statistics import N_BLOCKS, reference_populations
from coarseflow.analysis.evaluation import reference_metrics
from coarseflow.analysis.metrics import histogram_kl_js, normalized_weights
from coarseflow.analysis.molecule_report import REFERENCE_BINS, MoleculeReport
from coarseflow.analysis.reports import is_one
from coarseflow.config import build_target
from coarseflow.predict.draw import draw_samples
from coarseflow.predict.refine import refine
from coarseflow.reference import load_reference
from coarseflow.sample_outputs import with_refine_steps
from coarseflow.targets.molecule.registry import builtin_reference
from coarseflow.workflow import load_run

ANGLES = ((-math.pi, math.pi), (-math.pi, math.pi))  # the histograms' (phi, psi) range, radians
CMT_BINS = 100  # CMT's Ramachandran TV: 100 x 100 bins on [-pi, pi)^2, unweighted draws


def ramachandran_tv(a, b, weights_b=None, bins: int = REFERENCE_BINS) -> float:
    """Total variation (1/2) sum |p_bin - q_bin| between the ``bins`` x ``bins`` histograms on
    [-pi, pi)^2 of (phi, psi) sets a (M, 2) and b (N, 2) in radians, without pseudo-counts;
    ``weights_b``: (N,) non-negative weights of b, None for equal ones."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    p, _, _ = np.histogram2d(a[:, 0], a[:, 1], bins, ANGLES)
    q, _, _ = np.histogram2d(b[:, 0], b[:, 1], bins, ANGLES, weights=weights_b)
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def _halves(angles, chain, n_first, n_second, seed):
    """The frames (M, 2) of ladders 0..C/2-1 and of C/2..C-1, each subsampled to n frames
    without replacement (``seed``) where it has more; n None: all its frames."""
    angles, chain = np.asarray(angles, np.float64), np.asarray(chain).reshape(-1)
    n_ladders = int(chain.max()) + 1
    if n_ladders < 2:
        raise ValueError("chain: expected at least 2 ladders to split into halves")
    first = chain < n_ladders // 2
    rng = np.random.default_rng(seed)
    halves = []
    for half, n in ((angles[first], n_first), (angles[~first], n_second)):
        if n is not None and n < len(half):
            half = half[rng.choice(len(half), n, replace=False)]
        halves.append(half)
    return halves


def split_half_tv(angles, chain, n: int, seed: int = 0, bins: int = CMT_BINS) -> float:
    """The reference's TV floor for one residue at n draws: ramachandran_tv (``bins``) of its
    first half of ladders (every frame) against n frames of the second (as split_half_js)."""
    return ramachandran_tv(*_halves(angles, chain, None, n, seed), bins=bins)


def split_half_js(
    angles, chain, n_first: int | None = None, n_second: int | None = None, seed: int = 0
) -> float:
    """The reference's own JS floor (nats) for one residue: JS between the (phi, psi) histograms
    (as the evaluation's, 0.5 pseudo-counts) of its two halves of independent ladders, ladders
    0..C/2-1 against C/2..C-1.

    ``angles``: (frames, 2) phi, psi in radians; ``chain``: (frames,) each frame's ladder,
    0..C-1 with C >= 2. ``n_first``, ``n_second``: each half subsampled to that many frames
    without replacement (``seed``) where it has more; None: all its frames. The floor at a
    model's n samples scored against the whole reference is (None, n): the pseudo-counts weigh
    more in a histogram of fewer frames, so a perfect model of n samples gets about that JS;
    (n, n), two histograms under the same pseudo-counts, is lower and not monotone in n.
    """
    halves = _halves(angles, chain, n_first, n_second, seed)
    return histogram_kl_js(*halves, REFERENCE_BINS, ANGLES)[1]


def z_score(value: float, err: float, reference: float, reference_err: float) -> float:
    """(value - reference) / the combined error; NaN where that is 0 or unknown."""
    combined = math.hypot(err, reference_err)
    return (value - reference) / combined if combined > 0 else float("nan")


def reference_angles(reference: dict) -> np.ndarray:
    """(frames, m, 2) phi, psi in radians of the npz's arrays (phi, psi (frames,) for one
    residue, (frames, m) for m)."""
    frames = len(reference["phi"])
    angles = [np.reshape(reference[k], (frames, -1)) for k in ("phi", "psi")]
    return np.stack(angles, axis=-1).astype(np.float64)


def basin_rows(record: dict, reference_err: np.ndarray) -> dict:
    """name -> reweighted, reweighted_err, reference, reference_err of one residue's basins:
    ``record`` is a ``ramachandran_basins`` record of the metrics, ``reference_err`` (S,)."""
    out = {}
    for (name, b), err in zip(record["basins"].items(), reference_err, strict=True):
        # the metrics' records hold None for a number that is not finite, and no reweighted
        # numbers where no sample has weight
        fields = ("reweighted", "reweighted_err", "reference")
        out[name] = {f: math.nan if b.get(f) is None else b[f] for f in fields}
        out[name]["reference_err"] = float(err)
    return out


def residue_scores(
    report: MoleculeReport, samples, metrics: dict, reference: dict, seed: int
) -> list[dict]:
    """One record per (phi, psi) residue of ``report.target``: residue, class, n (the finite
    samples), kl and js (reweighted, from ``metrics``: the report's metrics of ``samples``), tv,
    tv_raw, tv_cmt (raw, CMT_BINS) and tv_cmt_floor (split_half_tv at n), the split_half_js
    floors (floor: all frames; floor_nn: n frames per half; floor_n: one half's frames against
    n of the other), ratio = js / floor_n, and basins (basin_rows).
    NaN where unknown. ``reference``: the npz's arrays (coarseflow.reference.load_reference);
    the floors and its errors need its ``chain`` (the floors two ladders or more)."""
    o = report.observables(samples.x)
    w = np.asarray(normalized_weights(samples.log_weights), np.float64)
    # the samples MoleculeReport.metrics keeps: every angle, Rg and weight finite
    finite = np.isfinite(o["rg"]) & np.isfinite(w)
    finite &= np.all(np.isfinite(o["phi"]) & np.isfinite(o["psi"]), axis=1)
    ref_angles, chain = reference_angles(reference), reference.get("chain")
    n_blocks = reference.get("settings", {}).get("n_blocks", N_BLOCKS)
    labels = report.target.residue_labels
    out = []
    for k, basins in enumerate(report.basin_sets()):
        model = np.stack([o["phi"][finite, k], o["psi"][finite, k]], axis=1)
        ref = ref_angles[:, k]
        # the metrics' keys carry the residue's label only when there are several
        key = "ramachandran" if len(labels) == 1 else f"ramachandran_{labels[k]}"
        row = {
            "residue": labels[k],
            "class": basins.kind,
            "n": len(model),
            # absent where no sample has weight (e.g. every draw of q(Y|X) invalid)
            "kl": metrics.get(f"{key}_kl_reweighted", math.nan),
            "js": metrics.get(f"{key}_js_reweighted", math.nan),
            "tv": ramachandran_tv(ref, model, w[finite]),
            "tv_raw": ramachandran_tv(ref, model),
            "tv_cmt": ramachandran_tv(ref, model, bins=CMT_BINS),
            "tv_cmt_floor": math.nan,
            "floor": math.nan,
            "floor_nn": math.nan,
            "floor_n": math.nan,
        }
        ref_err = np.full(len(basins.names), math.nan)
        if chain is not None:
            ref_err = reference_populations(basins, ref[:, 0], ref[:, 1], chain, n_blocks).err
        if chain is not None and chain.max() > 0:  # two ladders or more: two halves
            row["floor"] = split_half_js(ref, chain)
            row["floor_nn"] = split_half_js(ref, chain, len(model), len(model), seed)
            row["floor_n"] = split_half_js(ref, chain, None, len(model), seed)
            row["tv_cmt_floor"] = split_half_tv(ref, chain, len(model), seed)
        row["ratio"] = row["js"] / row["floor_n"] if row["floor_n"] > 0 else math.nan
        row["basins"] = basin_rows(metrics["ramachandran_basins"][k], ref_err)
        out.append(row)
    return out


def format_run(run, metrics: dict, residues: list[dict]) -> str:
    """Markdown for one run: a line of ESS, Pareto k, n and the residues' mean CMT TV (with its
    floor); the per-residue divergence table; the per-residue basin table (``residues``:
    residue_scores' records)."""
    n = residues[0]["n"] if residues else 0
    tv = np.mean([r["tv_cmt"] for r in residues]) if residues else math.nan
    floor = np.mean([r["tv_cmt_floor"] for r in residues]) if residues else math.nan
    lines = [
        f"{run}: ESS {metrics['ess_fraction']:.3f} of {metrics['n_samples']}, "
        f"Pareto k {metrics['pareto_k']:.2f}, n = {n} finite samples, "
        f"CMT's TV (mean over residues) {tv:.4f} (floor at n {floor:.4f})",
        "",
        "| residue | class | KL | JS | TV | TV raw | CMT's TV | its floor (half, n) "
        "| floor (halves) | floor (n, n) | floor (half, n) | JS / floor (half, n) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in residues:
        lines.append(
            f"| {r['residue']} | {r['class']} | {r['kl']:.3f} | {r['js']:.4f} | {r['tv']:.3f} "
            f"| {r['tv_raw']:.3f} | {r['tv_cmt']:.4f} | {r['tv_cmt_floor']:.4f} "
            f"| {r['floor']:.4f} | {r['floor_nn']:.4f} | {r['floor_n']:.4f} | {r['ratio']:.2f} |"
        )
    lines += ["", "| residue | basin | reweighted | reference | z |", "|---|---|---|---|---|"]
    for r in residues:
        for name, b in r["basins"].items():
            z = z_score(b["reweighted"], b["reweighted_err"], b["reference"], b["reference_err"])
            lines.append(
                f"| {r['residue']} | {name} | {b['reweighted']:.4f} ± {b['reweighted_err']:.4f} "
                f"| {b['reference']:.4f} ± {b['reference_err']:.4f} | {z:+.1f} |"
            )
    return "\n".join(lines)


def score(run: Path, reference: Path, n: int, refine_steps: int, seed: int) -> str:
    """The markdown of format_run for ``run``'s last checkpoint against ``reference``."""
    config, _, flow, conditional, meta = load_run(run)
    if not is_one(meta["beta"]):  # the reference is at beta = 1 only
        raise SystemExit(f"{run}: its last checkpoint is at beta {meta['beta']}, not 1")
    target = build_target({**config.target, "reference": str(reference)})
    target.x_bijection()  # the molecule scans its dihedral seams once, outside jit
    prediction = with_refine_steps(config.prediction, refine_steps)
    if conditional is not None and prediction.refine_steps > 0:
        samples, _ = refine(jr.key(seed), target, flow, conditional, meta["beta"], prediction, n=n)
    else:
        samples = draw_samples(
            jr.key(seed), target, flow, meta["beta"], prediction, n=n, conditional=conditional
        )
    metrics = reference_metrics(target, samples, meta["beta"])
    arrays = load_reference(builtin_reference(str(reference)) or reference)
    residues = residue_scores(MoleculeReport(target), samples, metrics, arrays, seed)
    return format_run(run, metrics, residues)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--refine-steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for run in args.runs:
        print("\n" + score(run, args.reference, args.n, args.refine_steps, args.seed))


if __name__ == "__main__":
    main()
