"""The exact symmetries of a molecule's fast atoms: cyclic relabelings of each methyl rotor's
hydrogens, as permutations of Y and of its internal coordinates, and the domain that holds one
relabeling of each configuration."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from coarseflow.forcefield.geometry import dihedrals
from coarseflow.model.gaussian import wrap
from coarseflow.model.internal import AtomPlacements
from coarseflow.targets.molecule.topology import Rotor


def relabeling_maps(rotors: tuple[Rotor, ...], y_flat) -> list[dict[int, int]]:
    """Every combination of cyclic shifts of each rotor's terminal atoms, as maps atom -> the
    atom whose position it takes; the identity ({}) first. ``y_flat``: flat indices of Y;
    rotors with a held coordinate are left out (not a relabeling of Y alone)."""
    y_flat = set(int(f) for f in y_flat)
    maps: list[dict[int, int]] = [{}]
    for *_, terminals in rotors:
        if not all(3 * t + c in y_flat for t in terminals for c in range(3)):
            continue
        maps = [
            {**m, **dict(zip(terminals, np.roll(terminals, -shift).tolist(), strict=True))}
            for shift in range(len(terminals))
            for m in maps
        ]
    return maps


def internal_relabelings(
    placements: AtomPlacements, maps: list[dict[int, int]]
) -> np.ndarray | None:
    """(S, n_y) int: the relabelings ``maps`` acting on the fast atoms' internal coordinates, or
    None when some relabeled atom does not share its frame with the atoms it trades places with
    or is itself part of a frame."""
    row = {p[0]: n for n, p in enumerate(placements.placements)}
    perms = []
    for moves in maps:
        pi = np.arange(3 * len(placements.placements))
        for t, s in moves.items():
            if placements.placements[row[t]][1:] != placements.placements[row[s]][1:]:
                return None
            pi[3 * row[t] : 3 * row[t] + 3] = np.arange(3 * row[s], 3 * row[s] + 3)
        if any(set(p[1:]) & moves.keys() for p in placements.placements):
            return None
        perms.append(pi)
    return np.stack(perms)


def cartesian_relabelings(maps: list[dict[int, int]], y_flat) -> np.ndarray:
    """(S, n_y) int: the relabelings ``maps`` as permutations of Y, whose coordinates have the
    flat indices ``y_flat`` (3 atom + component)."""
    where = {int(f): j for j, f in enumerate(y_flat)}  # flat xyz index -> position in Y
    perms = []
    for moves in maps:
        q = np.arange(len(y_flat))
        for t, s in moves.items():
            for c in range(3):
                q[where[3 * t + c]] = where[3 * s + c]
        perms.append(q)
    return np.stack(perms)


def in_rotor_domain(
    pos: Float[Array, "n_atoms 3"], ref: Float[Array, "n_atoms 3"], rotors: tuple[Rotor, ...]
) -> Bool[Array, ""]:
    """Whether, for every rotor, its first terminal atom is the one whose dihedral about the
    rotor's bond in ``pos`` is nearest that of the first terminal atom in ``ref``. The m cyclic
    relabelings of a rotor put each of its atoms first once, so exactly one is in the domain."""
    inside = jnp.asarray(True)
    for c, k, h, terminals in rotors:
        quads = np.asarray([(t, c, k, h) for t in terminals])
        d = dihedrals(pos, quads) - dihedrals(ref, quads[:1])
        dist = jnp.abs(wrap(d))
        inside = inside & (dist[0] <= jnp.min(dist[1:]))
    return inside
