"""Score trained molecule runs at beta = 1 against a reference file their configs do not name
(e.g. one made after they were trained); prints a table.

    python benchmarks/against_reference.py RUN [RUN ...] --reference REF.npz [-n 20000]
        [--refine-steps K]

For each run: ESS and Pareto k of ``-n`` samples of the last checkpoint (refined by AIS toward p
with ``--refine-steps`` > 0 and a learned conditional), then per basin the reweighted population
+- its standard error, the reference's +- its error and z = difference / combined error, and the
Ramachandran divergences of the reweighted (phi, psi) against the reference's:
KL(reference || model) and JS (nats) of 64 x 64 histograms with 0.5 pseudo-counts, as the
evaluation computes them, and the total variation (1/2) sum |p_bin - q_bin| of the same
histograms without pseudo-counts.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import jax.random as jr
import numpy as np

from coarseflow.analysis.evaluation import reference_metrics
from coarseflow.analysis.metrics import normalized_weights
from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.config import build_target
from coarseflow.predict.draw import draw_samples
from coarseflow.predict.refine import refine
from coarseflow.sample_outputs import with_refine_steps
from coarseflow.workflow import load_run

BINS = 64


def ramachandran_tv(target, samples, weights) -> float:
    """Total variation between the reference's and the weighted samples' (phi, psi)
    histograms (BINS x BINS on [-pi, pi)^2), first residue."""
    obs = MoleculeReport(target).observables(samples.x)
    ref = target.info.reference
    edges = np.linspace(-math.pi, math.pi, BINS + 1)
    finite = np.isfinite(weights) & np.isfinite(obs["phi"][:, 0]) & np.isfinite(obs["psi"][:, 0])
    q, _, _ = np.histogram2d(
        obs["phi"][finite, 0], obs["psi"][finite, 0], [edges, edges], weights=weights[finite]
    )
    p, _, _ = np.histogram2d(ref["phi"][:, 0], ref["psi"][:, 0], [edges, edges])
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def score(run: Path, reference: Path, n: int, refine_steps: int, seed: int) -> dict:
    config, _, flow, conditional, meta = load_run(run)
    target = build_target({**config.target, "reference": str(reference)})
    target.x_bijection()  # the molecule scans its dihedral seams once, outside jit
    prediction = with_refine_steps(config.prediction, refine_steps)
    if conditional is not None and prediction.refine_steps > 0:
        samples, _ = refine(jr.key(seed), target, flow, conditional, meta["beta"], prediction, n=n)
    else:
        samples = draw_samples(
            jr.key(seed), target, flow, meta["beta"], prediction, n=n, conditional=conditional
        )
    out = reference_metrics(target, samples, meta["beta"])
    w = np.asarray(normalized_weights(samples.log_weights))
    out["ramachandran_tv_reweighted"] = ramachandran_tv(target, samples, w)
    out["ramachandran_tv_raw"] = ramachandran_tv(target, samples, np.ones_like(w))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--refine-steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for run in args.runs:
        m = score(run, args.reference, args.n, args.refine_steps, args.seed)
        print(
            f"\n{run}: ESS {m['ess_fraction']:.3f} of {m['n_samples']}, Pareto k "
            f"{m['pareto_k']:.2f}, Ramachandran KL {m['ramachandran_kl_reweighted']:.3f} "
            f"JS {m['ramachandran_js_reweighted']:.4f} TV {m['ramachandran_tv_reweighted']:.3f}"
            f" (raw: TV {m['ramachandran_tv_raw']:.3f})"
        )
        print("| basin | reweighted | reference | z |")
        print("|---|---|---|---|")
        for key in m:
            if key.startswith("basin_") and key.endswith("_reference"):
                name = key[len("basin_") : -len("_reference")]
                rw, ref = m[f"basin_{name}_reweighted"], m[key]
                err_rw = m.get(f"basin_{name}_reweighted_err", 0.0)
                err_ref = m.get(f"basin_{name}_reference_err", 0.0)
                err = math.hypot(err_rw, err_ref)
                z = (rw - ref) / err if err > 0 else float("nan")
                print(
                    f"| {name} | {rw:.4f} ± {err_rw:.4f} | {ref:.4f} ± {err_ref:.4f} | {z:+.1f} |"
                )


if __name__ == "__main__":
    main()
