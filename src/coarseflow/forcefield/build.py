"""PDB file + OpenMM force-field files, or an Amber prmtop + its coordinates -> OpenMM System in
the form ``forcefield_from_system`` accepts: no cutoff, no constraints, flexible water."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.forcefield.charmm import create_system
from coarseflow.forcefield.trust import check_forcefield_files, check_structure

DEFAULT_FORCEFIELD_FILES = ("amber99sbildn.xml", "amber99_obc.xml")

AMBER_SUFFIXES = (".prmtop", ".parm7")
AMBER_COORDINATE_SUFFIXES = (".inpcrd", ".rst7", ".crd")
AMBER_IMPLICIT_SOLVENTS = ("OBC1", "OBC2", "vacuum")
"""What ``forcefield`` may name for an Amber prmtop (the first is the default): OpenMM's
``implicitSolvent=app.OBC1`` (a CustomGBForce), ``app.OBC2`` (a GBSAOBCForce), or none."""


def build_system(
    pdb_path: str | Path,
    forcefield_files: tuple[str, ...] | list[str] | None = None,
):
    """Read ``pdb_path`` and parametrise it.

    A PDB file is parametrised with OpenMM's force-field XML files ``forcefield_files``
    (default ``DEFAULT_FORCEFIELD_FILES``); for CHARMM36, whose caps are patches, with the
    caps joined to their neighbours and the Urey-Bradley terms split off the bonds
    (``charmm.create_system``). An Amber prmtop (``.prmtop`` / ``.parm7``) carries
    its own parameters and GB radii; its coordinates are read from the file of the same name
    ending ``.inpcrd``, ``.rst7`` or ``.crd``, and ``forcefield_files`` then names only the
    implicit solvent, one of ``AMBER_IMPLICIT_SOLVENTS`` (default "OBC1", as
    openmmtools' AlanineDipeptideImplicit).

    Returns (topology: openmm.app.Topology, positions: np.ndarray (n_atoms, 3) float64 in nm,
    system: openmm.System) built with NoCutoff, constraints=None and rigidWater=False.
    Raises ConfigError naming the file or residue for a missing or unreadable PDB file, an
    unknown force-field file, or a residue without a template in the force field.
    """
    from openmm import app, unit

    path = Path(pdb_path)
    if path.suffix.lower() in AMBER_SUFFIXES:
        return _build_amber_system(path, forcefield_files)
    if not path.is_file():
        raise ConfigError(f"molecule: PDB file '{path}' does not exist")
    _check_has_atoms(path)
    try:
        pdb = app.PDBFile(str(path))
    except Exception as err:  # OpenMM raises a variety of types for malformed files
        raise ConfigError(f"molecule: cannot read PDB file '{path}': {err}") from err
    if pdb.topology.getNumAtoms() == 0:
        raise ConfigError(f"molecule: PDB file '{path}' contains no atoms")

    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    check_structure(f"PDB file '{path}'", positions, pdb.topology)
    files = DEFAULT_FORCEFIELD_FILES if forcefield_files is None else tuple(forcefield_files)
    check_forcefield_files(files)
    try:
        forcefield = app.ForceField(*files)
    except Exception as err:  # ValueError / OSError for a missing file, XML errors otherwise
        raise ConfigError(
            f"force field: cannot load force-field files {list(files)}: {err}"
        ) from err

    try:
        system = create_system(forcefield, pdb.topology)
    except Exception as err:
        unmatched = forcefield.getUnmatchedResidues(pdb.topology)
        if unmatched:
            res = unmatched[0]
            raise ConfigError(
                f"force field: no template for residue '{res.name}' (number {res.id}, chain "
                f"{res.chain.id}) in {list(files)}; check its name and atoms (hydrogens "
                "included: add them with openmm.app.Modeller.addHydrogens)"
            ) from None
        raise ConfigError(
            f"force field: cannot parametrise '{path}' with {list(files)}: {err}"
        ) from err
    return pdb.topology, positions.astype(np.float64), system


def _check_has_atoms(path: Path) -> None:
    """A PDB file without ATOM / HETATM records (empty, or not a PDB file) in one line, before
    OpenMM reads it (whose message would be 'list index out of range')."""
    with open(path, "rb") as f:
        records = (line[:6] for line in f)
        if not any(r.startswith((b"ATOM  ", b"HETATM")) for r in records):
            raise ConfigError(
                f"molecule: PDB file '{path}' contains no atoms (no ATOM or HETATM records)"
            )


def _build_amber_system(path: Path, forcefield_files):
    """(topology, positions nm, System) of an Amber prmtop and the coordinates beside it."""
    from openmm import app, unit

    if not path.is_file():
        raise ConfigError(f"molecule: Amber prmtop file '{path}' does not exist")
    solvent = AMBER_IMPLICIT_SOLVENTS[0]
    if forcefield_files is not None:
        names = [forcefield_files] if isinstance(forcefield_files, str) else list(forcefield_files)
        if len(names) != 1 or names[0] not in AMBER_IMPLICIT_SOLVENTS:
            raise ConfigError(
                f"force field: '{path.name}' is an Amber prmtop, which carries its own "
                "parameters: forcefield may only name its implicit solvent, one of "
                f"{list(AMBER_IMPLICIT_SOLVENTS)} (default {solvent!r}), got {names}"
            )
        solvent = names[0]
    coordinates = [path.with_suffix(s) for s in AMBER_COORDINATE_SUFFIXES]
    found = [c for c in coordinates if c.is_file()]
    if not found:
        raise ConfigError(
            f"molecule: no coordinates for Amber prmtop '{path}': expected one of "
            + ", ".join(f"'{c.name}'" for c in coordinates)
            + " beside it"
        )
    try:
        prmtop = app.AmberPrmtopFile(str(path))
        inpcrd = app.AmberInpcrdFile(str(found[0]))
    except Exception as err:  # OpenMM raises a variety of types for malformed files
        raise ConfigError(
            f"molecule: cannot read Amber files '{path}', '{found[0]}': {err}"
        ) from err
    implicit = None if solvent == "vacuum" else getattr(app, solvent)
    system = prmtop.createSystem(
        nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False, implicitSolvent=implicit
    )
    positions = np.asarray(inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    if positions.shape != (system.getNumParticles(), 3):
        raise ConfigError(
            f"molecule: '{found[0]}' has {positions.shape[0]} atoms, '{path}' "
            f"{system.getNumParticles()}"
        )
    check_structure(f"coordinates '{found[0]}'", positions, prmtop.topology)
    return prmtop.topology, positions.astype(np.float64), system
