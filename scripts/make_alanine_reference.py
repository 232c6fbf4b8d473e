"""Regenerate the shipped alanine dipeptide reference (coarseflow/data/, npz).

Writes src/coarseflow/data/alanine_dipeptide_reference.npz.

Alanine dipeptide (ACE-ALA-NME, the bundled PDB), amber99sbildn.xml + amber99_obc.xml, 300 K,
NoCutoff, no constraints; replica exchange with the default ReferenceSettings of
coarseflow.reference (8 rungs 300-1000 K x 16 independent ladders, BAOAB 1 fs, friction 1/ps,
10 ps burn-in + 300 ps per walker, a frame every 25 fs, swaps every 50 fs), then the OpenMM
cross-check (400 ps LangevinMiddleIntegrator, CPU platform). The equivalent config is

    [target]
    kind = "molecule"
    pdb = "alanine_dipeptide"
    forcefield = ["amber99sbildn.xml", "amber99_obc.xml"]
    temperature = 300.0

with an empty [reference] table, i.e. ``coarseflow reference CONFIG -o OUT.npz``.

Run from anywhere: ``python scripts/make_alanine_reference.py [--out PATH] [--quick]``
(about 20 minutes on 2 shared CPU cores; ``--quick`` is a seconds-long smoke test that
writes to /tmp unless --out is given). Results and timings: docs/reference.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from coarseflow.reference import QUICK_SETTINGS, ReferenceSettings, run_reference

DATA = Path(__file__).resolve().parents[1] / "src" / "coarseflow" / "data"
SHIPPED = DATA / "alanine_dipeptide_reference.npz"
CONFIG = {
    "target": {
        "kind": "molecule",
        "pdb": "alanine_dipeptide",
        "forcefield": ["amber99sbildn.xml", "amber99_obc.xml"],
        "temperature": 300.0,
    },
    "reference": {},
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"npz to write (default {SHIPPED})")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke test")
    args = parser.parse_args(argv)
    settings = QUICK_SETTINGS if args.quick else ReferenceSettings()
    out = args.out
    if out is None:
        out = Path(tempfile.gettempdir()) / "alanine_quick_reference.npz" if args.quick else SHIPPED
    summary = run_reference(CONFIG, out, settings=settings)
    print(summary["table"])
    print(f"written: {out}")
    return summary


if __name__ == "__main__":
    main()
