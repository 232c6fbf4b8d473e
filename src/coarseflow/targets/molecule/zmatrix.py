"""Internal coordinates of a molecule: the CG atoms' Z-matrix (the flow's X box) with its
dihedral seams, and the placements of the fast atoms (the coordinates of Y).

Built once per Molecule from the reference structure in the gauge frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np

from coarseflow.model.internal import AtomPlacements, ZMatrix, zmatrix_placements
from coarseflow.partition import Partition
from coarseflow.targets.molecule.gauge import GaugeFrame
from coarseflow.targets.molecule.topology import Rotor

INTERNAL_BOND_MARGIN = 0.03  # nm: box half-width of the bond lengths in internal coordinates
INTERNAL_ANGLE_MARGIN = 0.6  # rad: box half-width of the bond angles
INTERNAL_ANGLE_EDGE = 0.05  # rad: angles stay inside (edge, pi - edge)
SEAM_SCAN_POINTS = 72  # rigid torsion scan (5 degree steps) that places each dihedral's seam
SEAM_SCAN_WINDOW = 6  # points either side (30 degrees) over which the scan's weight is summed


def cg_zmatrix(
    hops: np.ndarray, cg: np.ndarray, fixed_atoms, ref_gauge: np.ndarray, x_flat
) -> ZMatrix | None:
    """Z-matrix of the CG atoms (seams not yet placed: all at -pi), or None.

    None when the bonds between CG atoms do not reach every CG atom from the gauge atoms, or
    some distance or angle of it is not a bond's (the flow then works in Cartesian X).
    ``x_flat``: flat index (3 atom + component) of each X coordinate, in X's order.
    """
    local = {int(i): n for n, i in enumerate(cg)}
    bonded = hops[np.ix_(cg, cg)] == 1
    gauge = tuple(local[int(i)] for i in fixed_atoms)
    placements = zmatrix_placements(bonded, gauge, ref_gauge[cg])
    if placements is None or not (
        bonded[gauge[0], gauge[1]]
        and bonded[gauge[1], gauge[2]]
        and all(bonded[j, k] for _, j, k, _ in placements)
    ):
        return None
    x_index = [3 * local[int(f) // 3] + int(f) % 3 for f in x_flat]
    return ZMatrix(len(cg), gauge, placements, x_index)


def dihedral_seams(zm: ZMatrix, X_ref, energies: Callable) -> np.ndarray:
    """(n_dihedrals,) seams of zm's dihedral windows, from rigid torsion scans of X_ref.

    Each dihedral is turned in 5 degree steps (CG atoms downstream move with it) and its seam
    is where the Boltzmann weight exp(-u) summed over +-30 degrees is smallest (ties: the one
    nearest the reference + pi). ``energies``: internal coordinates (S, n_x) -> reduced
    energies (S,) (the fast atoms grafted).
    """
    q_ref = np.asarray(zm.inverse(X_ref), dtype=np.float64)
    slots = zm.dihedral_slots
    steps = 2 * math.pi * np.arange(SEAM_SCAN_POINTS) / SEAM_SCAN_POINTS
    q = np.repeat(q_ref[None], slots.size * steps.size, axis=0)
    rows = np.arange(q.shape[0])
    q[rows, np.repeat(slots, steps.size)] += np.tile(steps, slots.size)
    u = np.asarray(energies(q), dtype=np.float64).reshape(slots.size, steps.size)
    seams = []
    w = SEAM_SCAN_WINDOW
    for n, slot in enumerate(slots):
        un = np.where(np.isfinite(u[n]), u[n], np.inf)
        logw = -(un - np.min(un))
        win = np.stack([np.roll(logw, s) for s in range(-w, w + 1)])
        with np.errstate(divide="ignore"):
            score = np.logaddexp.reduce(win, axis=0)
        opposite = np.abs(np.angle(np.exp(1j * (steps - math.pi))))
        best = np.lexsort((opposite, score))[0]
        seam = q_ref[slot] + steps[best]
        seams.append((seam + math.pi) % (2 * math.pi) - math.pi)
    return np.asarray(seams)


@eqx.filter_jit
def grafted_energies(
    forcefield, gauge: GaugeFrame, partition: Partition, kT: float, zm: ZMatrix, q
):
    """Reduced energies (S,) of CG internal coordinates q (S, n_x), the fast atoms grafted.

    Its arguments are compared by value, so equal Molecules share one compilation."""

    def one(qi):
        X = zm.transform(qi)
        x = partition.merge(X, gauge.graft(X))
        return forcefield.energy(gauge.full_positions(x)) / kT

    return jax.vmap(one)(q)


def with_seams(zm: ZMatrix, seams: np.ndarray) -> ZMatrix:
    """zm with its dihedral windows starting at ``seams`` (n_dihedrals,)."""
    return eqx.tree_at(lambda z: z.seams, zm, seams)


def internal_box(zm: ZMatrix, X_ref) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper), each (n_x,): bond lengths at X_ref's -+ INTERNAL_BOND_MARGIN, bond angles
    -+ INTERNAL_ANGLE_MARGIN clipped to (INTERNAL_ANGLE_EDGE, pi - INTERNAL_ANGLE_EDGE),
    dihedrals [seam, seam + 2 pi)."""
    q = np.asarray(zm.inverse(X_ref), dtype=np.float64)
    kinds = np.asarray(zm.kinds)
    lo, hi = q.copy(), q.copy()
    bond, angle, dih = kinds == "bond", kinds == "angle", kinds == "dihedral"
    lo[bond] = np.maximum(q[bond] - INTERNAL_BOND_MARGIN, 0.5 * q[bond])
    hi[bond] = q[bond] + INTERNAL_BOND_MARGIN
    lo[angle] = np.maximum(q[angle] - INTERNAL_ANGLE_MARGIN, INTERNAL_ANGLE_EDGE)
    hi[angle] = np.minimum(q[angle] + INTERNAL_ANGLE_MARGIN, math.pi - INTERNAL_ANGLE_EDGE)
    seams = np.asarray(zm.seams, dtype=np.float64)
    lo[dih], hi[dih] = seams, seams + 2 * math.pi
    return lo, hi


def fast_placements(hops, cg, fast, ref, rotors: tuple[Rotor, ...]) -> AtomPlacements | None:
    """Z-matrix placements of the fast atoms onto the CG atoms, or None if some is unbonded."""
    placements = zmatrix_placements(hops == 1, [int(i) for i in cg], ref)
    if placements is None:
        return None
    return AtomPlacements(share_rotor_frames(placements, rotors), [int(i) for i in fast])


def share_rotor_frames(placements, rotors: tuple[Rotor, ...]) -> list[tuple[int, int, int, int]]:
    """Place every terminal atom of an equivalent-rotor group (a methyl's hydrogens) from the
    same three atoms, those of the group's first-placed terminal.

    Breadth-first placement puts a methyl's second and third hydrogens on the first; then every
    relabeling of the group needs internal coordinates of its own. From one shared frame, a
    relabeling permutes whole (r, angle, dihedral) triples of xi, and the learned conditional's
    symmetrised density costs one coordinate transform instead of one per relabeling (27 for
    alanine dipeptide: 94 % of a joint update).
    """
    out = list(placements)
    row = {p[0]: n for n, p in enumerate(out)}
    for centre, _, _, terminals in rotors:
        placed = [t for t in terminals if t in row]
        if len(placed) < 2:
            continue
        _, j, k, l_ = out[min(row[t] for t in placed)]
        if j != centre or {k, l_} & set(terminals):
            continue
        for t in placed:
            out[row[t]] = (t, j, k, l_)
    return out
