"""PDB file + OpenMM force-field files -> OpenMM System in the form ``forcefield_from_system``
accepts: no cutoff, no constraints, flexible water."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coarseflow.errors import ConfigError

DEFAULT_FORCEFIELD_FILES = ("amber99sbildn.xml", "amber99_obc.xml")


def build_system(
    pdb_path: str | Path,
    forcefield_files: tuple[str, ...] | list[str] = DEFAULT_FORCEFIELD_FILES,
):
    """Read ``pdb_path`` and parametrise it with OpenMM's ``forcefield_files``.

    Returns (topology: openmm.app.Topology, positions: np.ndarray (n_atoms, 3) float64 in nm,
    system: openmm.System) built with NoCutoff, constraints=None and rigidWater=False.
    Raises ConfigError naming the file or residue for a missing or unreadable PDB file, an
    unknown force-field file, or a residue without a template in the force field.
    """
    from openmm import app, unit

    path = Path(pdb_path)
    if not path.is_file():
        raise ConfigError(f"molecule: PDB file '{path}' does not exist")
    try:
        pdb = app.PDBFile(str(path))
    except Exception as err:  # OpenMM raises a variety of types for malformed files
        raise ConfigError(f"molecule: cannot read PDB file '{path}': {err}") from err
    if pdb.topology.getNumAtoms() == 0:
        raise ConfigError(f"molecule: PDB file '{path}' contains no atoms")

    files = tuple(forcefield_files)
    try:
        forcefield = app.ForceField(*files)
    except Exception as err:  # ValueError / OSError for a missing file, XML errors otherwise
        raise ConfigError(
            f"force field: cannot load force-field files {list(files)}: {err}"
        ) from err

    unmatched = forcefield.getUnmatchedResidues(pdb.topology)
    if unmatched:
        res = unmatched[0]
        raise ConfigError(
            f"force field: no template for residue '{res.name}' (number {res.id}, chain "
            f"{res.chain.id}) in {list(files)}; check its name and atoms (hydrogens "
            "included: add them with openmm.app.Modeller.addHydrogens)"
        )
    try:
        system = forcefield.createSystem(
            pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
        )
    except Exception as err:
        raise ConfigError(
            f"force field: cannot parametrise '{path}' with {list(files)}: {err}"
        ) from err
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return pdb.topology, positions.astype(np.float64), system
