"""Where along the ladder a peptide run keeps or loses its Ramachandran basins; prints a table.

    python benchmarks/mode_mass.py RUN [RUN ...] [-n 20000] [--seed 0]

For every checkpoint (beta) of each run: N one-shot samples of q(X) q(Y|X) at that beta (the
learned conditional, or the run's [prediction] conditional), and per basin of the general
Ramachandran map their raw mass under q and their mass reweighted toward p_beta, with the batch
ESS of the weights. The raw phi > 0 mass (alpha_L + C7ax) is what a mode-seeking objective loses
as the phi barrier grows with beta; reweighting cannot bring back a basin q no longer draws.
Works on an unfinished run (e.g. one being trained).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.random as jr
import numpy as np

from coarseflow.analysis.metrics import ess, normalized_weights
from coarseflow.analysis.observables import basin_populations, phi_psi
from coarseflow.predict.draw import draw_samples
from coarseflow.runs import RunDir
from coarseflow.workflow import load_run

PHI_POSITIVE = ("alpha_L", "C7ax")


def scan(path: Path, n: int, seed: int) -> list[dict]:
    """One row per intact checkpoint of run ``path``: beta, ESS fraction, raw / reweighted mass."""
    rows = []
    for meta in RunDir(path).checkpoints():
        beta = meta["beta"]
        config, target, flow, conditional, _ = load_run(path, beta)
        s = draw_samples(jr.key(seed), target, flow, beta, config.prediction, n, conditional)
        phi, psi = phi_psi(target.full_positions(s.x), target.topology)
        phi, psi = np.asarray(phi)[:, 0], np.asarray(psi)[:, 0]
        raw = basin_populations(phi, psi)
        rew = basin_populations(phi, psi, normalized_weights(s.log_weights))
        rows.append(
            {
                "beta": beta,
                "ess": float(ess(s.log_weights)) / n,
                "raw": raw,
                "reweighted": rew,
            }
        )
    return rows


def table(name: str, rows: list[dict]) -> str:
    names = list(rows[0]["raw"]) if rows else []
    head = "| beta | ESS | " + " | ".join(names) + " | phi > 0 raw | phi > 0 reweighted |"
    lines = [f"{name}", "", head, "|" + "---|" * (len(names) + 4)]
    for r in rows:
        pos_raw = sum(r["raw"][k] for k in PHI_POSITIVE)
        pos_rew = sum(r["reweighted"][k] for k in PHI_POSITIVE)
        cells = " | ".join(f"{r['raw'][k]:.4f}" for k in names)
        lines.append(
            f"| {r['beta']:.4f} | {r['ess']:.3f} | {cells} | {pos_raw:.4f} | {pos_rew:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("-n", type=int, default=20000, help="samples per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for path in args.runs:
        print(table(str(path), scan(path, args.n, args.seed)), flush=True)
        print()


if __name__ == "__main__":
    main()
