"""Which files a molecule is read from: the built-in molecules, the PDB lookup, the force field.

The one registry of built-in molecules; ``Molecule`` and ``coarseflow reference`` both read the
``[target]`` keys ``pdb``, ``sequence`` and ``forcefield`` through this module.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from coarseflow.errors import ConfigError

ALANINE_DIPEPTIDE_SELECTION = (
    "(resname ACE and name C) or (resname ALA and name N CA C) or (resname NME and name N)"
)
"""The five backbone atoms that define alanine dipeptide's phi and psi."""

BUILTIN_MOLECULES: dict[str, tuple[str, str]] = {
    "alanine_dipeptide": ("alanine_dipeptide.pdb", ALANINE_DIPEPTIDE_SELECTION),
    # openmmtools' AlanineDipeptideImplicit: Amber ff96 prmtop (+ .inpcrd), OBC1 (FAB, TA-BG, CMT)
    "alanine_dipeptide_implicit": (
        "alanine_dipeptide_implicit.prmtop",
        ALANINE_DIPEPTIDE_SELECTION,
    ),
}
"""Built-in ``pdb`` names -> (file in coarseflow/data, default cg_selection). Each may ship a
replica-exchange reference ``data/<name>_reference.npz`` (see :func:`builtin_reference`)."""

DEFAULT_SELECTION = "backbone"
"""cg_selection for a user's structure when none is given and it has no backbone phi / psi (a
peptide's default is the atoms of its phi / psi: ``selection.default_cg_selection``): mdtraj's
backbone (N, CA, C, O of every protein residue, capping groups included)."""


def _data_file(name: str) -> Path:
    return Path(str(importlib.resources.files("coarseflow").joinpath("data", name)))


def resolve_pdb(pdb: str) -> tuple[str, str | None]:
    """(path to the PDB / prmtop file, default selection of a built-in molecule or None).

    ``pdb``: a name of BUILTIN_MOLECULES or a path (relative to the current directory).
    """
    if not isinstance(pdb, str) or not pdb:
        raise ConfigError(f"[target] pdb: expected a built-in name or a file path, got {pdb!r}")
    if pdb in BUILTIN_MOLECULES:
        name, selection = BUILTIN_MOLECULES[pdb]
        return str(_data_file(name)), selection
    path = Path(pdb).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"[target] pdb '{pdb}': no such file (relative paths are relative to the current "
            f"directory; built-in molecules: {', '.join(BUILTIN_MOLECULES)})"
        )
    return str(path), None


def resolve_structure(
    pdb: str | None, sequence: str | None, forcefield: tuple[str, ...] | None
) -> tuple[str, str | None]:
    """The ``[target]`` structure: (path to the PDB / prmtop file, default selection or None).

    ``pdb``: as :func:`resolve_pdb`; ``sequence``: a peptide built from its sequence in the
    force field ``forcefield`` (``peptide.cached_peptide``); neither: alanine dipeptide.
    """
    if pdb is not None and sequence is not None:
        raise ConfigError(
            "[target] pdb and sequence: give one (pdb: a structure file or built-in name; "
            "sequence: a peptide that coarseflow builds)"
        )
    if sequence is None:
        return resolve_pdb("alanine_dipeptide" if pdb is None else pdb)
    from coarseflow.targets.molecule import peptide

    residues = peptide.parse_sequence(sequence, where="[target] sequence")
    return peptide.cached_peptide(residues, forcefield), None


def builtin_reference(name: str) -> Path | None:
    """The shipped reference file of a built-in molecule's name, None for any other string."""
    return _data_file(f"{name}_reference.npz") if name in BUILTIN_MOLECULES else None


def forcefield_files(forcefield) -> tuple[str, ...] | None:
    """The ``[target] forcefield`` value as a tuple of file names (one string is one file).

    None means the file's default (``coarseflow.forcefield.build_system``: DEFAULT_FORCEFIELD_FILES
    for a PDB file, OBC1 for an Amber prmtop).
    """
    if forcefield is None:
        return None
    files = (forcefield,) if isinstance(forcefield, str) else forcefield
    if not isinstance(files, list | tuple) or not all(isinstance(f, str) for f in files):
        raise ConfigError(
            f"[target] forcefield: expected a list of XML file names, got {forcefield!r}"
        )
    return tuple(files)
