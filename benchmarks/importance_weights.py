"""ESS and Pareto k of one trained model's importance weights under several [prediction] settings.

    python benchmarks/importance_weights.py runs/ala --n 5000 \
        --variant ais_paths=1 --variant ais_paths=16 --variant ais_paths=1,ais_steps=400

Draws the same X (same key) for every variant from the run's last checkpoint at beta = 1, so
the variants differ only in q(Y|X). Prints, per variant: wall time, ESS, Pareto k (the tail
shape of the weights), the share of the ten largest normalised weights (the tail that sets the
ESS), the fraction of finite weights, and for a molecule with (phi, psi) the basin populations of
q itself (raw) and reweighted.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import tomllib

import jax.random as jr
import numpy as np

from coarseflow.analysis import metrics
from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.analysis.observables import basin_populations
from coarseflow.predict.draw import draw_samples
from coarseflow.targets.molecule import Molecule
from coarseflow.workflow import load_run


def parse_variant(text: str) -> dict:
    """'ais_paths=16,ais_steps=30' -> {'ais_paths': 16, 'ais_steps': 30} (values as in TOML)."""
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
    return out


def _format(populations: dict) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in populations.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        help="comma-separated [prediction] overrides, e.g. ais_paths=16,ais_steps=50",
    )
    args = p.parse_args()

    config, target, flow, _, _ = load_run(args.run)
    print(
        f"| variant | time (s) | ESS of {args.n} | Pareto k | largest 10 weights' share | "
        "finite | raw basins | reweighted basins |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for text in args.variant:
        settings = dataclasses.replace(config.prediction, **parse_variant(text))
        t0 = time.perf_counter()
        s = draw_samples(jr.key(7), target, flow, 1.0, settings, n=args.n)
        seconds = time.perf_counter() - t0
        w = np.asarray(metrics.normalized_weights(s.log_weights))
        ok = np.isfinite(s.log_weights)
        raw = basins = ""
        obs = MoleculeReport(target).observables(s.x) if isinstance(target, Molecule) else {}
        if "phi" in obs and "psi" in obs:
            phi, psi = obs["phi"][:, 0], obs["psi"][:, 0]
            raw = _format(basin_populations(phi, psi))
            basins = _format(basin_populations(phi[ok], psi[ok], w[ok]))
        print(
            f"| {text} | {seconds:.0f} | {float(metrics.ess(s.log_weights)):.0f} | "
            f"{metrics.pareto_k(s.log_weights):.2f} | "
            f"{np.sort(w)[-10:].sum():.3f} | {ok.mean():.3f} | {raw} | {basins} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
