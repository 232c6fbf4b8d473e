"""Which atoms a peptide's coarse-graining needs: the default CG selection (the atoms of every
backbone phi / psi, and of any side-chain chi asked for) and the check that a selection holds
the dihedrals asked for.

A dihedral is named by its angle and residue label (resname + number), e.g. ``phi ALA2`` or
``chi1 SER3`` (mdtraj's chi definitions: heavy atoms only), and an atom by mdtraj's
``ALA2-CA``. Pure Python over an mdtraj Topology.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.targets.backbone import phi_psi_indices

ANGLES = ("phi", "psi")
CHI_ANGLES = ("chi1", "chi2", "chi3", "chi4", "chi5")


class Dihedral(NamedTuple):
    """One backbone dihedral: ``name`` ("phi ALA2"), its 4 atoms, and those of them that are
    not CG atoms (empty: a CG dihedral, a function of X alone)."""

    name: str
    atoms: tuple[int, int, int, int]
    missing: tuple[int, ...]


def backbone_dihedrals(topology, cg=()) -> list[Dihedral]:
    """Every residue's phi then psi (chain order, :func:`phi_psi_indices`), with the atoms
    that the CG atom indices ``cg`` leave out."""
    cg_set = {int(i) for i in cg}
    out = []
    for pair in zip(*phi_psi_indices(topology), strict=True):  # one residue's (phi, psi)
        residue = topology.atom(int(pair[0][1])).residue  # N of phi, CA of psi: its atoms
        for angle, quad in zip(ANGLES, pair, strict=True):
            atoms = tuple(int(i) for i in quad)
            missing = tuple(i for i in atoms if i not in cg_set)
            out.append(Dihedral(f"{angle} {residue.name}{residue.resSeq}", atoms, missing))
    return out


def side_chain_dihedrals(topology, cg=()) -> list[Dihedral]:
    """Every residue's side-chain chi1 ... chi5 (mdtraj's definitions, heavy atoms only, e.g.
    chi1 SER3 = N, CA, CB, OG), residue by residue, with the atoms ``cg`` leaves out."""
    from mdtraj.geometry import dihedral

    cg_set = {int(i) for i in cg}
    found = []
    for n, angle in enumerate(CHI_ANGLES, start=1):
        for quad in getattr(dihedral, f"indices_chi{n}")(topology):
            atoms = tuple(int(i) for i in quad)
            residue = topology.atom(atoms[1]).residue
            missing = tuple(i for i in atoms if i not in cg_set)
            name = f"{angle} {residue.name}{residue.resSeq}"
            found.append((residue.index, n, Dihedral(name, atoms, missing)))
    return [d for *_, d in sorted(found, key=lambda f: f[:2])]


def default_cg_selection(topology, requested=None) -> str | None:
    """An mdtraj selection of exactly the atoms of every backbone phi / psi, and of the
    side-chain chis that ``requested`` (``[target] cg_dihedrals``) names, residue by residue
    (``(resid 0 and name C) or (resid 1 and name N CA C) or ...``, resid 0-based), or None
    for a structure without them (not a peptide)."""
    atoms = {i for d in backbone_dihedrals(topology) for i in d.atoms}
    if not atoms:
        return None
    if isinstance(requested, list | tuple):
        chis = side_chain_dihedrals(topology)
        for name in requested:
            for d in _named(chis, name):
                atoms.update(d.atoms)
    atoms = sorted(atoms)
    by_residue: dict[int, list[str]] = {}
    for i in atoms:
        atom = topology.atom(i)
        by_residue.setdefault(atom.residue.index, []).append(atom.name)
    return " or ".join(
        f"(resid {r} and name {' '.join(names)})" for r, names in sorted(by_residue.items())
    )


def atom_label(topology, i: int) -> str:
    """mdtraj's name of atom ``i``: residue + number - atom name, e.g. ALA2-CA."""
    return str(topology.atom(int(i)))


def _named(dihedrals: list[Dihedral], name) -> list[Dihedral]:
    """The dihedrals a ``cg_dihedrals`` entry names: an angle ("phi", "chi1": every residue's)
    or one dihedral ("chi1 SER3")."""
    key = " ".join(name.split()) if isinstance(name, str) else name
    found = [d for d in dihedrals if key in ANGLES + CHI_ANGLES and d.name.startswith(key + " ")]
    return found + [d for d in dihedrals if d.name == key]


def check_cg_dihedrals(topology, cg: np.ndarray, requested, selection: str) -> None:
    """ConfigError naming the first requested dihedral whose atoms ``cg`` leaves out.

    ``requested``: names as ``[target] cg_dihedrals`` gives them: "phi" / "psi" / "chi1" ...
    (every residue's) or one dihedral, "phi ALA2", "chi1 SER3"; None: nothing asked.
    """
    if requested is None:
        return
    where = "[target] cg_dihedrals"
    if isinstance(requested, str) or not isinstance(requested, list | tuple):
        raise ConfigError(f'{where}: expected a list such as ["phi", "psi"], got {requested!r}')
    dihedrals = backbone_dihedrals(topology, cg) + side_chain_dihedrals(topology, cg)
    names = [d.name for d in dihedrals]
    chosen = []
    for name in requested:
        found = _named(dihedrals, name)
        if not found:
            raise ConfigError(
                f"{where}: no backbone dihedral {name!r}; expected 'phi', 'psi', 'chi1' ... "
                "'chi5' or one of: "
                + (", ".join(names) if names else "none (the structure has no phi / psi)")
            )
        chosen += [d for d in found if d not in chosen]
    lacking = [d for d in chosen if d.missing]
    if lacking:
        d = lacking[0]
        quad = ", ".join(atom_label(topology, i) for i in d.atoms)
        gone = ", ".join(atom_label(topology, i) for i in d.missing)
        more = f" (and {len(lacking) - 1} more dihedrals)" if len(lacking) > 1 else ""
        fix = (
            "add them to cg_selection"
            if d.name.startswith("chi")
            else "add them, or leave cg_selection out (the default holds every phi / psi)"
        )
        raise ConfigError(
            f"[target] cg_selection '{selection}' leaves dihedral {d.name} ({quad}) without "
            f"atoms {gone}{more}: {fix}"
        )
