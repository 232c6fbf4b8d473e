"""Which force-field XML files may run code, and what a structure must look like.

An OpenMM force-field XML file can carry Python: ``<InitializationScript>`` is executed when
the file is loaded and ``<Script>`` when a System is created. A config, and so a run directory
from someone else, names its force-field files, so loading it would run that code. Policy:
such files are refused with one line naming the file, unless the user allows them
(``--allow-forcefield-scripts`` on the command line, :func:`allow_forcefield_scripts` from
Python). Files shipped in OpenMM's own data directory are trusted: they are installed code
like OpenMM itself. The files are checked here, as OpenMM would find them (the path as given,
else OpenMM's data directories) and with their ``<Include>`` files, before OpenMM reads them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from coarseflow.errors import ConfigError

SCRIPT_TAGS = ("InitializationScript", "Script")
FLAG = "--allow-forcefield-scripts"

_allowed = False


def allow_forcefield_scripts(allow: bool = True) -> None:
    """Let force-field XML files carry scripts (OpenMM executes them), or refuse them again."""
    global _allowed
    _allowed = bool(allow)


def scripts_allowed() -> bool:
    return _allowed


def _data_directories() -> list[str]:
    """Where OpenMM looks for a file name that is not a path, in its order."""
    from openmm.app import forcefield

    getter = getattr(forcefield, "_getDataDirectories", None)
    if getter is not None:
        return list(getter())
    return [os.path.join(os.path.dirname(forcefield.__file__), "data")]


def _openmm_data_directory() -> Path:
    from openmm.app import forcefield

    return Path(forcefield.__file__).resolve().parent / "data"


def _locate(name: str) -> str:
    """The file OpenMM's ForceField.loadFile reads for ``name`` (``name`` if none)."""
    if os.path.isfile(name):
        return name
    for directory in _data_directories():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return name


def _trusted(path: str) -> bool:
    return Path(path).resolve().is_relative_to(_openmm_data_directory())


def check_forcefield_files(files) -> None:
    """Refuse (ConfigError, one line) a force-field file, or a file it includes, that carries a
    script, unless scripts are allowed. Files OpenMM cannot find or parse are left to OpenMM,
    which reports them."""
    if _allowed:
        return
    pending, seen = [f for f in files if isinstance(f, str)], set()
    while pending:
        path = _locate(pending.pop(0))
        if path in seen or _trusted(path) or not os.path.isfile(path):
            continue
        seen.add(path)
        try:
            root = ElementTree.parse(path).getroot()
        except (ElementTree.ParseError, OSError, ValueError):
            continue
        tags = [tag for tag in SCRIPT_TAGS if root.find(tag) is not None]
        if tags:
            raise ConfigError(
                f"force field {path}: carries {_article(tags[0])} <{tags[0]}>, Python code "
                f"that OpenMM would run; refused (pass {FLAG} if you trust this file)"
            )
        for include in root.findall("Include"):
            name = include.attrib.get("file", "")
            joined = os.path.join(os.path.dirname(path), name)
            pending.append(joined if os.path.isfile(joined) else name)


MIN_ATOM_DISTANCE_NM = 0.01


def check_structure(what: str, positions, topology) -> None:
    """Refuse (ConfigError naming ``what``, e.g. "PDB file 'x.pdb'") coordinates that no energy
    can be computed from: none, not finite, or two atoms closer than 0.01 nm (one place)."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.size == 0:
        raise ConfigError(f"molecule: {what} contains no atoms")
    atoms = list(topology.atoms())
    bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
    if bad.size:
        raise ConfigError(
            f"molecule: {what}: atom {_name(atoms, bad[0])} has a coordinate "
            "that is not a finite number"
        )
    from scipy.spatial import cKDTree

    pairs = cKDTree(positions).query_pairs(MIN_ATOM_DISTANCE_NM, output_type="ndarray")
    if len(pairs):
        i, j = sorted(int(k) for k in pairs[0])
        distance = float(np.linalg.norm(positions[i] - positions[j]))
        raise ConfigError(
            f"molecule: {what}: atoms {_name(atoms, i)} and {_name(atoms, j)} are "
            f"{distance:.3g} nm apart (at one place); fix the coordinates"
        )


def _name(atoms, index: int) -> str:
    """'5 (CA of ALA 2)': an atom's 1-based number in the file and its name."""
    if index < len(atoms):
        atom = atoms[index]
        return f"{index + 1} ({atom.name} of {atom.residue.name} {atom.residue.id})"
    return str(index + 1)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
