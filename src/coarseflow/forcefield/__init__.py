"""OpenMM System -> pure-JAX energy terms (kJ/mol, nm).

``build_system`` and ``forcefield_from_system`` import OpenMM when called; importing this package
needs only JAX.
"""

from coarseflow.forcefield.build import DEFAULT_FORCEFIELD_FILES, build_system
from coarseflow.forcefield.cmap import CMAPTorsions
from coarseflow.forcefield.custom_terms import (
    HarmonicTorsions,
    LennardJonesPairs,
    LennardJonesTable,
    UreyBradley,
)
from coarseflow.forcefield.energy import ForceField
from coarseflow.forcefield.gb import AmberGB
from coarseflow.forcefield.geometry import angles, dihedrals
from coarseflow.forcefield.openmm_reader import forcefield_from_system
from coarseflow.forcefield.supported import SUPPORTED
from coarseflow.forcefield.terms import (
    GBSAOBC,
    ONE_4PI_EPS0,
    AbstractTerm,
    HarmonicAngles,
    HarmonicBonds,
    Nonbonded,
    PeriodicTorsions,
)

__all__ = [
    "DEFAULT_FORCEFIELD_FILES",
    "GBSAOBC",
    "ONE_4PI_EPS0",
    "SUPPORTED",
    "AbstractTerm",
    "AmberGB",
    "CMAPTorsions",
    "ForceField",
    "HarmonicAngles",
    "HarmonicBonds",
    "HarmonicTorsions",
    "LennardJonesPairs",
    "LennardJonesTable",
    "Nonbonded",
    "PeriodicTorsions",
    "UreyBradley",
    "angles",
    "build_system",
    "dihedrals",
    "forcefield_from_system",
]
