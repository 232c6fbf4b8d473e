"""Torsions of the fast atoms that make p(Y|X) multimodal: found from the bond graph, named,
and reported (``coarseflow inspect``, and one warning line when a Molecule is built).

The fast atoms Y are sampled given X by a unimodal conditional (a Gaussian or spline flow in
their internal coordinates) or by short MCMC chains; neither crosses a torsion barrier that X
does not hold. A torsion lives in Y when one side of its bond moves without moving any CG
atom: cutting the bond j-k, the atoms beyond k (k itself is on the axis) are all fast. It is
multimodal when that rotation has several minima:

* **rotamer**: heavy atoms move (a side chain's chi1, chi2, ...; a phenyl ring's flip);
* **rotor**: only hydrogens move and they are not a declared symmetry (a hydroxyl or thiol
  hydrogen, or terminal hydrogens whose parameters differ). A methyl's or NH3+'s three
  hydrogens are declared (``topology.equivalent_rotors``, ``symmetry``): the conditional is
  the mixture over their relabelings, so they are fine;
* **ring pucker**: a ring that is not planar in the reference structure (proline's) and has a
  fast atom: its envelope flips between two puckers.

Not flagged: a bond in a ring (no free rotation), a bond between two trigonal planar atoms
(amide C-N, guanidinium, a conjugated bond: one deep minimum; cis amides are rare), a bond to a
terminal atom (no torsion). The fix is to add the torsion's atoms to X (``cg_selection``); a
chi can then be named in ``[target] cg_dihedrals`` (``selection.side_chain_dihedrals``) so
that it is checked. Pure NumPy over an mdtraj Topology and the reference positions.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import NamedTuple

import numpy as np

from coarseflow.targets.molecule.selection import atom_label, side_chain_dihedrals

PLANAR_HEIGHT = 0.015  # nm: a 3-coordinated atom this close to its neighbours' plane is sp2
RING_PLANARITY = 0.02  # nm: a ring whose atoms all lie this close to one plane is rigid


class MultimodalWarning(UserWarning):
    """A selection leaves a multimodal torsion to the fast atoms (:func:`warn_if_multimodal`)."""


class FastTorsion(NamedTuple):
    """A multimodal torsion that X does not fix.

    kind: "rotamer", "rotor" or "ring pucker". name: "chi1 SER3", "torsion SER3 CB-OG" or
    "ring pucker PRO4". atoms: the torsion's four atoms a-j-k-b (bond j-k, b on the moving
    side) or the ring's atoms. add: the atoms X lacks to fix it (the torsion's or ring's
    atoms that are fast).
    """

    kind: str
    name: str
    atoms: tuple[int, ...]
    add: tuple[int, ...]


def _neighbours(topology) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(topology.n_atoms)]
    for a, b in topology.bonds:
        out[a.index].append(b.index)
        out[b.index].append(a.index)
    return [sorted(set(n)) for n in out]


def _side(neighbours, start: int, cut: int) -> set[int]:
    """Atoms reachable from ``start`` without passing through ``cut`` (``start`` excluded)."""
    seen, queue = {start, cut}, deque([start])
    while queue:
        for n in neighbours[queue.popleft()]:
            if n not in seen:
                seen.add(n)
                queue.append(n)
    return seen - {start, cut}


def _planar(neighbours, positions, i: int) -> bool:
    """Whether atom i is trigonal planar: three neighbours, in their plane (sp2)."""
    if len(neighbours[i]) != 3:
        return False
    p = positions[neighbours[i]]
    normal = np.cross(p[1] - p[0], p[2] - p[0])
    norm = np.linalg.norm(normal)
    return norm > 0 and abs(np.dot(positions[i] - p[0], normal)) / norm < PLANAR_HEIGHT


def _rings(neighbours) -> list[tuple[int, ...]]:
    """The smallest ring through each ring bond, each ring once (atoms in ring order)."""
    rings: dict[frozenset, tuple[int, ...]] = {}
    for j, ns in enumerate(neighbours):
        for k in ns:
            if k < j:
                continue
            # shortest path k -> j that does not use the bond j-k
            previous, queue = {k: -1}, deque([k])
            while queue and j not in previous:
                u = queue.popleft()
                for n in neighbours[u]:
                    if n not in previous and not (u == k and n == j):
                        previous[n] = u
                        queue.append(n)
            if j in previous:
                path, u = [], j
                while u != -1:
                    path.append(u)
                    u = previous[u]
                rings.setdefault(frozenset(path), tuple(path))
    return list(rings.values())


def _flat(positions, ring) -> bool:
    p = positions[list(ring)]
    centred = p - p.mean(axis=0)
    normal = np.linalg.svd(centred)[2][-1]  # the best plane's normal
    return float(np.max(np.abs(centred @ normal))) < RING_PLANARITY


def _is_heavy(topology, i: int) -> bool:
    element = topology.atom(i).element
    return element is None or element.symbol != "H"


def multimodal_torsions(topology, cg, positions, rotors=()) -> list[FastTorsion]:
    """Every multimodal torsion (see the module docstring) of the fast atoms, in atom order.

    topology: mdtraj Topology (its bonds are the bond graph); cg: the CG atom indices (X);
    positions: (n_atoms, 3) nm, the reference structure (planarity); rotors: the declared
    equivalent rotors (``topology.Rotor``: centre, axis, end, terminals).
    """
    positions = np.asarray(positions, dtype=np.float64)
    neighbours = _neighbours(topology)
    x = {int(i) for i in cg}
    rings = _rings(neighbours)
    in_ring = {frozenset(p) for r in rings for p in zip(r, r[1:] + r[:1], strict=True)}
    declared = {(r.axis, r.centre, frozenset(r.terminals)) for r in rotors}
    chi = {}  # central bond (j, k) -> (name, quad), either orientation
    for d in side_chain_dihedrals(topology):
        chi.setdefault(d.atoms[1:3], (d.name, d.atoms))
        chi.setdefault(d.atoms[2:0:-1], (d.name, d.atoms[::-1]))

    found = []
    for j, ns in enumerate(neighbours):
        for k in ns:
            if k < j or len(neighbours[j]) < 2 or len(neighbours[k]) < 2:
                continue
            if frozenset((j, k)) in in_ring:
                continue
            if _planar(neighbours, positions, j) and _planar(neighbours, positions, k):
                continue
            beyond_j, beyond_k = _side(neighbours, j, k), _side(neighbours, k, j)
            free = [(a, b, side) for a, b, side in ((j, k, beyond_k), (k, j, beyond_j))]
            free = [(a, b, side) for a, b, side in free if not side & x]
            if not free or len(free) == 2:  # X fixes it, or X is elsewhere (not bonded)
                continue
            a_end, b_end, moving = free[0]  # bond a_end - b_end, ``moving`` beyond b_end
            if (a_end, b_end, frozenset(moving)) in declared:
                continue  # a methyl / NH3+: a declared symmetry
            found.append(_torsion(topology, neighbours, x, chi, a_end, b_end, moving))
    for ring in rings:
        if set(ring) <= x or _flat(positions, ring):
            continue
        residue = topology.atom(min(ring)).residue
        found.append(
            FastTorsion(
                "ring pucker",
                f"ring pucker {residue.name}{residue.resSeq}",
                tuple(sorted(ring)),
                tuple(sorted(set(ring) - x)),
            )
        )
    return sorted(found, key=lambda t: (min(t.atoms), t.name))


def _torsion(topology, neighbours, x, chi, j, k, moving) -> FastTorsion:
    """The FastTorsion of bond j-k whose atoms beyond k (``moving``) are all fast."""
    heavy = any(_is_heavy(topology, i) for i in moving)
    residue = topology.atom(k).residue
    if (j, k) in chi:
        name, quad = chi[(j, k)]
    else:

        def rank(i):  # CG atoms, then heavy atoms, then by name
            return (i not in x, not _is_heavy(topology, i), topology.atom(i).name, i)

        a = min((n for n in neighbours[j] if n != k), key=rank)
        b = min((n for n in neighbours[k] if n != j), key=rank)
        quad = (a, j, k, b)
        bond = f"{topology.atom(j).name}-{topology.atom(k).name}"
        name = f"torsion {residue.name}{residue.resSeq} {bond}"
    return FastTorsion(
        "rotamer" if heavy else "rotor",
        name,
        tuple(int(i) for i in quad),
        tuple(int(i) for i in quad if i not in x),
    )


def of_molecule(molecule) -> list[FastTorsion]:
    """:func:`multimodal_torsions` of a :class:`~coarseflow.targets.molecule.Molecule`."""
    info = molecule.info
    return multimodal_torsions(
        info.topology, info.cg_atoms, np.asarray(info.reference_positions), info.rotors
    )


def describe_lines(topology, found: list[FastTorsion]) -> list[str]:
    """``coarseflow inspect``'s lines about them (a heading, then one line each)."""
    if not found:
        return [
            "Y|X multimodal torsions: none (every torsion of the fast atoms has one minimum "
            "or is a declared symmetry, e.g. a methyl)"
        ]
    lines = [
        f"Y|X multimodal torsions: {len(found)} (several minima that X does not fix; the "
        "fast atoms' sampler stays in one: add the atoms to cg_selection)"
    ]
    for t in found:
        atoms = " - ".join(atom_label(topology, i) for i in t.atoms)
        add = ", ".join(atom_label(topology, i) for i in t.add)
        lines.append(f"  {t.name:24s} {t.kind}: {atoms}; add {add}")
    return lines


def warning_line(topology, found: list[FastTorsion]) -> str | None:
    """One line naming the first multimodal torsion, its atoms and the fix; None if none."""
    if not found:
        return None
    t = found[0]
    atoms = ", ".join(atom_label(topology, i) for i in t.atoms)
    add = ", ".join(atom_label(topology, i) for i in t.add)
    what = "ring" if t.kind == "ring pucker" else "torsion"
    fix = f"add {add} to [target] cg_selection"
    if t.name.startswith("chi"):
        fix += f' (and name "{t.name}" in [target] cg_dihedrals to have it checked)'
    more = f" (and {len(found) - 1} more: coarseflow inspect lists them)" if len(found) > 1 else ""
    return (
        f"p(Y|X) is multimodal: {t.name} ({what} {atoms}) has several "
        f"minima that X does not fix, and the fast atoms' sampler stays in one; {fix}{more}"
    )


def warn_if_multimodal(molecule) -> list[FastTorsion]:
    """Warn (MultimodalWarning, one line: :func:`warning_line`) when the Molecule's selection
    leaves multimodal torsions to Y; returns them (empty: no warning)."""
    found = of_molecule(molecule)
    line = warning_line(molecule.topology, found)
    if line is not None:
        warnings.warn(line, MultimodalWarning, stacklevel=2)
    return found
