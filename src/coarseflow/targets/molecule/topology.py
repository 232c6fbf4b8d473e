"""A molecule's atoms and bonds: the CG selection, the bond graph, the gauge atoms, the methyl
rotors, the backbone dihedrals, and :class:`MoleculeInfo`, the record of them all.

Everything here is NumPy on the reference structure, run once when a Molecule is built.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import equinox as eqx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from coarseflow.errors import ConfigError
from coarseflow.targets.backbone import phi_psi_indices, residue_labels


def select_cg_atoms(topology, selection: str, n_atoms: int) -> np.ndarray:
    """Sorted atom indices (n_cg,) of an mdtraj ``selection``: at least 3, not all atoms."""
    if not isinstance(selection, str) or not selection.strip():
        raise ConfigError(f"[target] cg_selection: expected an mdtraj selection, got {selection!r}")
    try:
        idx = np.asarray(topology.select(selection), dtype=np.int64)
    except Exception as err:  # pyparsing / ValueError with a very long message
        text = " ".join(str(err).split())
        found = re.search(r"(Expected [^,{]*?|found .*?)\(at char \d+\)", text)
        detail = found.group(0) if found else text[:120]
        raise ConfigError(
            f"[target] cg_selection '{selection}': not a valid mdtraj selection ({detail})"
        ) from None
    if idx.size == 0:
        raise ConfigError(f"[target] cg_selection '{selection}' selects no atoms")
    if idx.size == n_atoms:
        raise ConfigError(
            f"[target] cg_selection '{selection}' selects all {n_atoms} atoms; the fast "
            "variables Y would be empty: select fewer atoms"
        )
    if idx.size < 3:
        raise ConfigError(
            f"[target] cg_selection '{selection}' selects {idx.size} atom(s); at least 3 are "
            "needed (rigid-body motion is removed by holding coordinates of three of them)"
        )
    return np.sort(idx)


def bond_hops(system, n_atoms: int) -> np.ndarray:
    """(n_atoms, n_atoms) number of bonds between atoms of an OpenMM System (inf if not
    connected)."""
    import openmm

    rows, cols = [], []
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, *_ = force.getBondParameters(k)
                rows += [i, j]
                cols += [j, i]
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_atoms, n_atoms))
    return shortest_path(graph, unweighted=True, directed=False)


def distance_from_axis(a, b, c) -> float:
    """Distance (nm) of point c from the line through a and b."""
    ab = b - a
    return float(np.linalg.norm(np.cross(ab, c - a)) / max(np.linalg.norm(ab), 1e-300))


def auto_fixed_atoms(cg: np.ndarray, ref: np.ndarray, hops: np.ndarray) -> tuple[int, int, int]:
    """Three consecutively bonded CG atoms a-b-c whose middle atom is nearest the CG centroid.

    Fallback when no CG atoms are bonded in a row: b nearest the centroid, a the CG atom nearest
    b, c the next nearest CG atom that is off the a-b line.
    """
    centre = ref[cg].mean(axis=0)
    best = None
    for b in cg:
        ends = [int(i) for i in cg if hops[b, i] == 1]
        for i, a in enumerate(ends):
            for c in ends[i + 1 :]:
                if distance_from_axis(ref[a], ref[b], ref[c]) < 0.01:
                    continue
                key = (float(np.linalg.norm(ref[b] - centre)), int(b), a, c)
                if best is None or key < best:
                    best = key
    if best is not None:
        return best[2], best[1], best[3]
    order = cg[np.argsort(np.linalg.norm(ref[cg] - centre, axis=1), kind="stable")]
    b = int(order[0])
    near = [int(i) for i in cg[np.argsort(np.linalg.norm(ref[cg] - ref[b], axis=1))] if i != b]
    a = near[0]
    for c in near[1:]:
        if distance_from_axis(ref[a], ref[b], ref[c]) >= 0.01:
            return a, b, c
    raise ConfigError("[target] cg_selection: the selected atoms are collinear; select more")


def check_fixed_atoms(fixed, cg: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """The user's ``fixed_atoms``: 3 distinct, non-collinear CG atoms."""
    where = "[target] fixed_atoms"
    if (
        not isinstance(fixed, list | tuple)
        or len(fixed) != 3
        or not all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in fixed)
    ):
        raise ConfigError(f"{where}: expected 3 atom indices (0-based, PDB order), got {fixed!r}")
    a, b, c = (int(i) for i in fixed)
    if len({a, b, c}) != 3:
        raise ConfigError(f"{where}: expected 3 distinct atoms, got {[a, b, c]}")
    missing = [i for i in (a, b, c) if i not in set(cg.tolist())]
    if missing:
        raise ConfigError(
            f"{where}: atoms {missing} are not coarse-grained atoms (cg_selection selects "
            f"{cg.tolist()})"
        )
    if distance_from_axis(ref[a], ref[b], ref[c]) < 0.01:
        raise ConfigError(f"{where}: atoms {[a, b, c]} are (nearly) collinear; choose others")
    return a, b, c


class Rotor(NamedTuple):
    """m >= 2 equivalent terminal atoms (a methyl's hydrogens) bonded only to ``centre``; the
    rotation axis is axis-centre, and ``end`` is a neighbour of ``axis`` (for dihedrals)."""

    centre: int
    axis: int
    end: int
    terminals: tuple[int, ...]


@eqx.filter_jit
def _energy(forcefield, positions):
    return forcefield.energy(positions)


def equivalent_rotors(forcefield, hops, fast, ref) -> tuple[Rotor, ...]:
    """Groups of equivalent terminal fast atoms that a rotation about one bond permutes.

    Each: m >= 2 fast atoms bonded only to the centre c, where c has one other neighbour k (the
    axis k-c) and l is a neighbour of k other than c (for dihedrals); a methyl's three
    hydrogens. Kept only if relabeling the terminals cyclically leaves the energy of the
    reference structure ``ref`` (n_atoms, 3) unchanged (identical force-field parameters) to a
    relative 1e-5: in float32 the summation order alone moved alanine dipeptide's -134 kJ/mol
    by 6e-5 (a 1e-8 tolerance found one of its three methyls), while different parameters move
    it by orders of magnitude more.
    """
    bonded = hops == 1
    fast_set = set(int(i) for i in fast)
    base = float(_energy(forcefield, ref))
    groups = []
    for c in range(len(ref)):
        neighbours = [int(i) for i in np.flatnonzero(bonded[c])]
        terminal = [i for i in neighbours if i in fast_set and bonded[i].sum() == 1]
        others = [i for i in neighbours if i not in terminal]
        if len(terminal) < 2 or len(others) != 1:
            continue
        k = others[0]
        ls = [int(i) for i in np.flatnonzero(bonded[k]) if i != c]
        if not ls:
            continue
        shifted = ref.copy()
        shifted[terminal] = ref[np.roll(terminal, 1)]
        if abs(float(_energy(forcefield, shifted)) - base) <= 1e-5 * max(1.0, abs(base)):
            groups.append(Rotor(c, k, ls[0], tuple(terminal)))
    return tuple(groups)


def _ints(a) -> tuple:
    """Nested tuples of Python ints of an integer array (hashable, compared by value)."""
    return tuple(_ints(r) for r in a) if np.ndim(a) > 1 else tuple(int(i) for i in a)


@dataclasses.dataclass(frozen=True)
class MoleculeInfo:
    """The non-array data of a Molecule, as hashable values compared by value.

    A Molecule keeps it in a static field: two Molecules built from the same inputs have equal
    records, so jitted functions of one are reused for the other. ``topology`` (read from
    ``pdb_path``) and ``reference`` (read from ``reference_path``) are derived from compared
    fields and so left out of the comparison; both are read-only.

    pdb_path, cg_selection: the resolved inputs. cg_atoms: the CG atoms (PDB order).
    heavy_atoms: atoms that are not hydrogen. phi_quads, psi_quads: (m, 4) atoms of the
    backbone dihedrals of the m residues with both (:func:`phi_psi_indices`), residue_labels
    their names (resname + number). rotors: the equivalent methyl rotors. reference_positions:
    (n_atoms, 3) nm, the file's structure moved into the gauge frame (float64). reference:
    the arrays of the ``[target] reference`` file (``io.load_reference``) or None.
    """

    pdb_path: str
    cg_selection: str
    cg_atoms: tuple[int, ...]
    heavy_atoms: tuple[int, ...]
    phi_quads: tuple[tuple[int, int, int, int], ...]
    psi_quads: tuple[tuple[int, int, int, int], ...]
    residue_labels: tuple[str, ...]
    rotors: tuple[Rotor, ...]
    reference_positions: tuple[tuple[float, float, float], ...]
    reference_path: str | None
    topology: Any = dataclasses.field(compare=False, repr=False)
    reference: dict[str, np.ndarray] | None = dataclasses.field(compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        topology,
        pdb_path: str,
        cg_selection: str,
        cg: np.ndarray,
        rotors: tuple[Rotor, ...],
        reference_positions: np.ndarray,
        reference_path: str | None,
        reference: dict | None,
    ) -> MoleculeInfo:
        """The record of an mdtraj ``topology`` and the selections made on it."""
        phi_q, psi_q = phi_psi_indices(topology)
        heavy = [a.index for a in topology.atoms if a.element is None or a.element.symbol != "H"]
        return cls(
            pdb_path=pdb_path,
            cg_selection=cg_selection,
            cg_atoms=_ints(cg),
            heavy_atoms=_ints(heavy),
            phi_quads=_ints(phi_q),
            psi_quads=_ints(psi_q),
            residue_labels=residue_labels(topology, phi_q),
            rotors=rotors,
            reference_positions=tuple(tuple(float(v) for v in p) for p in reference_positions),
            reference_path=reference_path,
            topology=topology,
            reference=reference,
        )
