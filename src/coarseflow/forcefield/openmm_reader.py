"""Read an OpenMM System once into arrays: ``forcefield_from_system(system) -> ForceField``.

OpenMM is only the input layer: after this, the energy is pure JAX. Supported forces are
HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, CMAPTorsionForce, NonbondedForce,
GBSAOBCForce (OBC2), the CustomGBForces of OpenMM's Amber GB models (HCT, OBC1, OBC2, GBn,
GBn2: ``implicit/*.xml`` and ``implicitSolvent=app.OBC1``; no salt; ``gb_reader``) and the
custom forces of OpenMM's CHARMM36 (impropers, 1-4 Lennard-Jones, Urey-Bradley, the
Lennard-Jones tables with NBFIX; ``custom_reader``), all without cutoffs or periodic
boundaries; CMMotionRemover is ignored (it is not an energy).
Anything else -- another force class or CustomGBForce, a cutoff, constraints, virtual sites --
raises a ConfigError naming it and the force fields that work (``supported``), rather than
silently giving a different energy from OpenMM's.
"""

from __future__ import annotations

from coarseflow.errors import ConfigError
from coarseflow.forcefield.bonded_reader import (
    _read_angles,
    _read_bonds,
    _read_cmap,
    _read_torsions,
)
from coarseflow.forcefield.custom_reader import (
    read_custom_bonds,
    read_custom_nonbonded,
    read_custom_torsions,
)
from coarseflow.forcefield.energy import ForceField
from coarseflow.forcefield.geometry import Gather
from coarseflow.forcefield.nonbonded_reader import _read_custom_gb, _read_gbsa, _read_nonbonded
from coarseflow.forcefield.supported import SUPPORTED, SUPPORTED_FORCES
from coarseflow.forcefield.terms import AbstractTerm

_NONBONDED_METHODS = {0: "NoCutoff", 1: "CutoffNonPeriodic", 2: "CutoffPeriodic"}
_NONBONDED_METHODS.update({3: "Ewald", 4: "PME", 5: "LJPME"})


def forcefield_from_system(system, *, gather: Gather = "auto") -> ForceField:
    """The energy of an OpenMM ``System`` as a pure-JAX ForceField (nm in, kJ/mol out).

    Forces of the same class are merged into one term. Raises ConfigError for any force,
    option or constraint the JAX terms do not reproduce exactly. ``gather`` chooses how bonded
    terms collect their atoms: "matmul" (fast for small molecules), "index" (scales to large
    ones), or "auto" (matmul while cheap); the energies agree to rounding.
    """
    import openmm

    if gather not in ("auto", "matmul", "index"):
        raise ConfigError(
            f"force field: gather: expected 'auto', 'matmul' or 'index', got {gather!r}"
        )

    n_atoms = system.getNumParticles()
    if system.getNumConstraints() > 0:
        raise ConfigError(
            f"force field: the System has {system.getNumConstraints()} constraints; "
            "build it with constraints=None"
        )
    virtual = [i for i in range(n_atoms) if system.isVirtualSite(i)]
    if virtual:
        raise ConfigError(
            f"force field: the System has {len(virtual)} virtual sites (first: particle "
            f"{virtual[0]}); virtual sites are not supported"
        )

    readers = {
        openmm.HarmonicBondForce: _read_bonds,
        openmm.HarmonicAngleForce: _read_angles,
        openmm.PeriodicTorsionForce: _read_torsions,
        openmm.CMAPTorsionForce: _read_cmap,
        openmm.NonbondedForce: _read_nonbonded,
        openmm.GBSAOBCForce: _read_gbsa,
        openmm.CustomGBForce: _read_custom_gb,
        openmm.CustomTorsionForce: read_custom_torsions,
        openmm.CustomBondForce: read_custom_bonds,
        openmm.CustomNonbondedForce: read_custom_nonbonded,
    }
    collected: dict[type, list] = {}
    for force in system.getForces():
        kind = type(force)
        if kind is openmm.CMMotionRemover:
            continue
        if kind not in readers:
            raise ConfigError(
                f"force field: unsupported force '{kind.__name__}' (supported forces: "
                f"{SUPPORTED_FORCES}; force fields that work: {SUPPORTED})"
            )
        gb_forces = (openmm.GBSAOBCForce, openmm.CustomGBForce)
        if kind in (openmm.NonbondedForce, openmm.CustomNonbondedForce, *gb_forces):
            _check_no_cutoff(force, kind.__name__)
        if force.usesPeriodicBoundaryConditions():
            raise ConfigError(
                f"force field: {kind.__name__} uses periodic boundary conditions; "
                "only non-periodic systems are supported"
            )
        collected.setdefault(kind, []).append(force)
    if all(kind in collected for kind in gb_forces):
        raise ConfigError(
            "force field: the System has both a GBSAOBCForce and a CustomGBForce; only one "
            "implicit-solvent force is supported"
        )

    terms: list[AbstractTerm] = []
    for kind, reader in readers.items():
        if kind in collected:
            read = reader(collected[kind], n_atoms, gather)  # a term, or a tuple of terms
            terms.extend(read if isinstance(read, tuple) else (read,))
    return ForceField(terms=tuple(terms), n_atoms=n_atoms)


def _check_no_cutoff(force, name: str) -> None:
    method = force.getNonbondedMethod()
    if method != 0:
        raise ConfigError(
            f"force field: {name} uses cutoff method {_NONBONDED_METHODS.get(method, method)}; "
            "only NoCutoff is supported"
        )
