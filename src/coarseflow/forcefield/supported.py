"""What coarseflow's JAX force field reproduces: the one list that errors and docs quote.

Every entry is checked term by term against OpenMM's Reference platform in the tests
(tests/test_forcefield.py, tests/test_forcefield_gb.py, tests/test_cmap.py,
tests/test_charmm.py).
"""

from __future__ import annotations

SUPPORTED_FORCES = (
    "HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, CMAPTorsionForce, "
    "NonbondedForce and GBSAOBCForce without cutoff, the CustomGBForce of OpenMM's Amber GB "
    "models HCT / OBC1 / OBC2 / GBn / GBn2 (no cutoff, no salt), and CHARMM36's custom forces "
    "(CustomTorsionForce impropers, CustomBondForce 1-4 Lennard-Jones and Urey-Bradley, the "
    "CustomNonbondedForce Lennard-Jones tables with NBFIX, no cutoff)"
)

PROTEIN_FORCEFIELDS = ("amber99sbildn.xml", "amber96.xml", "amber14-all.xml", "amber19-all.xml")
"""Amber protein force-field files known to give only supported forces (amber19: with CMAP)."""

IMPLICIT_SOLVENTS = (
    "amber99_obc.xml",
    "amber96_obc.xml",
    "implicit/obc2.xml",
    "implicit/gbn2.xml",
    "implicit/obc1.xml",
    "implicit/gbn.xml",
    "implicit/hct.xml",
)
"""Implicit-solvent files to add to them (or none: vacuum)."""

CHARMM_FORCEFIELDS = ("charmm36.xml", "charmm36_2024.xml")
"""CHARMM36 files known to give only supported forces, in vacuum: OpenMM has no CHARMM
implicit solvent (its implicit/*.xml models are Amber's GB, parametrised for Amber's charges)."""

SUPPORTED = (
    f"{' / '.join(PROTEIN_FORCEFIELDS)} with one of {' / '.join(IMPLICIT_SOLVENTS)} or "
    'none (vacuum), e.g. forcefield = ["amber14-all.xml", "implicit/gbn2.xml"]; '
    f"{' / '.join(CHARMM_FORCEFIELDS)} in vacuum; an Amber prmtop with OBC1 / OBC2 / vacuum"
)
"""One line for error messages: the force fields that work."""
