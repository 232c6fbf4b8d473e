"""Internal coordinates (a Z-matrix) of the coarse-grained atoms as a fixed flowjax bijection.

The CG atoms live in the gauge frame of :class:`coarseflow.targets.molecule.Molecule`: atom a at
the origin, b on +z, c in the xz-plane with x > 0. Their 3 N_cg - 6 free Cartesian coordinates
are written as internal coordinates, in this order:

* b: the bond length r_ab;
* c: r_bc and the angle theta_abc (at b), so c = b + r_bc (sin theta, 0, -cos theta);
* every other CG atom i, in the order of ``placements`` (breadth-first over the bonds): the
  distance r_ij, the angle theta_ijk (at j) and the dihedral phi_ijkl (IUPAC sign, as
  ``coarseflow.forcefield.geometry.dihedrals``), placed from j, k, l by NeRF.

The forward map (internal -> Cartesian) is block-triangular, so
log|det J| = log r_bc + sum_i [2 log r_i + log sin theta_i] (the 2D polar element of c, the
spherical element of every other atom, 1 for b). Dihedrals are returned by the inverse in the
window [seam, seam + 2 pi) of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flowjax.bijections import AbstractBijection
from jaxtyping import Array, Float

from coarseflow.forcefield.geometry import angles, dihedrals

TWO_PI = 2.0 * math.pi
_COLLINEAR = 0.15  # rad: an angle within this of 0 or pi makes a dihedral's frame unusable


def _norm(v):
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def _bond_angle_dihedral(pos: Float[Array, "n 3"], quads: np.ndarray) -> Float[Array, "m 3"]:
    """(r_ij, angle ijk, dihedral ijkl) (m, 3) of the atom quadruplets ``quads`` (m, 4)."""
    i, j = pos[quads[:, 0]], pos[quads[:, 1]]
    return jnp.stack([_norm(i - j), angles(pos, quads[:, :3]), dihedrals(pos, quads)], axis=-1)


def _place(p3, k, j, r, theta, phi):
    """NeRF: the atom i with |i - j| = r, angle i-j-k = theta and dihedral i-j-k-p3 = phi."""
    e1 = j - k
    e1 = e1 / _norm(e1)
    n = jnp.cross(k - p3, e1)
    n = n / _norm(n)
    m = jnp.cross(n, e1)
    return (
        j
        - r * jnp.cos(theta) * e1
        + r * jnp.sin(theta) * jnp.cos(phi) * m
        + r * jnp.sin(theta) * jnp.sin(phi) * n
    )


class ZMatrix(AbstractBijection):
    """Internal coordinates (n_x,) -> free Cartesian coordinates (n_x,) of N_cg atoms.

    ``gauge``: local indices (a, b, c) of the gauge atoms among the N_cg atoms;
    ``placements``: (i, j, k, l) local indices, one per other atom, each of j, k, l a gauge atom
    or placed earlier; ``x_index``: for each output coordinate its flat index 3 atom + component
    into the (N_cg, 3) local positions (the held ones, a xyz, b xy, c y, left out);
    ``seams``: (n_placements,) start of each dihedral's window [seam, seam + 2 pi).
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    cond_shape: ClassVar[None] = None
    n_atoms: int = eqx.field(static=True)
    gauge: tuple[int, int, int] = eqx.field(static=True)
    placements: tuple[tuple[int, int, int, int], ...] = eqx.field(static=True)
    x_index: tuple[int, ...] = eqx.field(static=True)
    seams: Float[Array, " n_placements"]

    def __init__(
        self,
        n_atoms: int,
        gauge: Sequence[int],
        placements: Sequence[Sequence[int]],
        x_index: Sequence[int],
        seams=None,
    ):
        self.n_atoms = int(n_atoms)
        self.gauge = tuple(int(i) for i in gauge)
        self.placements = tuple(tuple(int(i) for i in p) for p in placements)
        self.x_index = tuple(int(i) for i in x_index)
        n_x = 3 * self.n_atoms - 6
        if len(self.gauge) != 3 or len(set(self.gauge)) != 3:
            raise ValueError(f"gauge: expected 3 distinct atoms, got {self.gauge}")
        if len(self.placements) != self.n_atoms - 3 or len(self.x_index) != n_x:
            raise ValueError("ZMatrix: need n_atoms - 3 placements and 3 n_atoms - 6 x_index")
        placed = set(self.gauge)
        for p in self.placements:
            if len(p) != 4 or p[0] in placed or not set(p[1:]) <= placed or len(set(p)) != 4:
                raise ValueError(f"ZMatrix: bad placement {p} (placed so far: {sorted(placed)})")
            placed.add(p[0])
        a, b, c = self.gauge
        held = {3 * a, 3 * a + 1, 3 * a + 2, 3 * b, 3 * b + 1, 3 * c + 1}
        if sorted(self.x_index) != sorted(set(range(3 * self.n_atoms)) - held):
            raise ValueError("ZMatrix: x_index must list every free coordinate once")
        self.shape = (n_x,)
        self.seams = jnp.asarray(
            np.full(len(self.placements), -math.pi) if seams is None else seams, dtype=float
        ).reshape(len(self.placements))

    # ---- layout of the internal coordinates --------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        """Per internal coordinate: "bond", "angle" or "dihedral"."""
        return ("bond", "bond", "angle") + ("bond", "angle", "dihedral") * len(self.placements)

    @property
    def dihedral_slots(self) -> np.ndarray:
        """Indices of the dihedrals in the internal coordinate vector (one per placement)."""
        return 5 + 3 * np.arange(len(self.placements))

    # ---- the maps ----------------------------------------------------------------------------

    def positions(self, q: Float[Array, " n_x"]) -> Float[Array, "n_atoms 3"]:
        """Local positions (N_cg, 3) of internal coordinates q (n_x,)."""
        a, b, c = self.gauge
        zero = jnp.zeros((), q.dtype)
        atoms: list = [None] * self.n_atoms
        r_ab, r_bc, th = q[0], q[1], q[2]
        atoms[a] = jnp.zeros(3, q.dtype)
        atoms[b] = jnp.stack([zero, zero, r_ab])
        atoms[c] = jnp.stack([r_bc * jnp.sin(th), zero, r_ab - r_bc * jnp.cos(th)])
        for n, (i, j, k, h) in enumerate(self.placements):
            r, t, p = q[3 + 3 * n], q[4 + 3 * n], q[5 + 3 * n]
            atoms[i] = _place(atoms[h], atoms[k], atoms[j], r, t, p)
        return jnp.stack(atoms)

    def _log_det(self, q):
        rs = q[3::3]
        ts = q[4::3]
        return jnp.log(q[1]) + jnp.sum(2 * jnp.log(rs) + jnp.log(jnp.sin(ts)))

    def transform_and_log_det(self, x, condition=None):
        q = jnp.asarray(x)
        pos = self.positions(q)
        return pos.reshape(-1)[np.asarray(self.x_index)], self._log_det(q)

    def internal(self, pos: Float[Array, "n_atoms 3"]) -> Float[Array, " n_x"]:
        """Internal coordinates (n_x,) of local positions (N_cg, 3) (any rigid frame)."""
        a, b, c = self.gauge
        first = jnp.stack(
            [_norm(pos[b] - pos[a]), _norm(pos[c] - pos[b]), angles(pos, np.array([[a, b, c]]))[0]]
        )
        placed = _bond_angle_dihedral(pos, np.asarray(self.placements).reshape(-1, 4))
        phi = self.seams + jnp.mod(placed[:, 2] - self.seams, TWO_PI)
        return jnp.concatenate([first, placed.at[:, 2].set(phi).reshape(-1)])

    def inverse_and_log_det(self, y, condition=None):
        y = jnp.asarray(y)
        flat = jnp.zeros(3 * self.n_atoms, y.dtype).at[np.asarray(self.x_index)].set(y)
        q = self.internal(flat.reshape(self.n_atoms, 3))
        return q, -self._log_det(q)


def _collinear(p, q, r) -> bool:
    u, v = p - q, r - q
    cos = float(np.dot(u, v) / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-300))
    angle = math.acos(min(1.0, max(-1.0, cos)))
    return angle < _COLLINEAR or angle > math.pi - _COLLINEAR


def zmatrix_placements(
    bonded: np.ndarray, start: Sequence[int], ref: np.ndarray
) -> list[tuple[int, int, int, int]] | None:
    """Breadth-first placements (i, j, k, l) of the atoms not in ``start``, or None.

    ``bonded``: (N, N) bool adjacency; ``start``: the atoms placed already (the gauge atoms of
    the CG Z-matrix; every CG atom for :class:`AtomPlacements`); ``ref``: (N, 3) reference
    positions. Each atom i is placed from j = an earlier atom bonded to it, k = an earlier atom
    bonded to j, l = an earlier atom bonded to k; when no such k or l exists, the earlier atom
    nearest (in the reference) that keeps i-j-k and j-k-l clearly non-collinear. None when
    some atom cannot be reached through bonds from ``start``.
    """
    bonded = np.asarray(bonded, dtype=bool)
    n = bonded.shape[0]
    order = [int(i) for i in start]
    placed = set(order)
    out: list[tuple[int, int, int, int]] = []
    head = 0
    while head < len(order):
        j = order[head]
        head += 1
        for i in map(int, np.flatnonzero(bonded[j])):
            if i in placed:
                continue
            k = _pick(i, [j], bonded[j], order, ref)
            if k is None:
                return None
            l_ = _pick(i, [j, k], bonded[k], order, ref)
            if l_ is None:
                return None
            out.append((i, j, k, l_))
            placed.add(i)
            order.append(i)
    return out if len(placed) == n else None


def _pick(i, chain, bonded_row, order, ref):
    """An earlier atom to extend (i, *chain): bonded to chain[-1] first, then nearest, such that
    the last angle is clearly non-collinear."""
    used = {i, *chain}
    last = chain[-1]
    prev = chain[-2] if len(chain) > 1 else i
    candidates = [m for m in order if m not in used]
    candidates.sort(key=lambda m: (not bonded_row[m], float(np.linalg.norm(ref[m] - ref[last]))))
    for m in candidates:
        if not _collinear(ref[prev], ref[last], ref[m]):
            return m
    return None


class AtomPlacements(eqx.Module):
    """Internal coordinates of atoms placed onto atoms whose positions are known.

    ``placements``: (i, j, k, l) atom indices, each j, k, l known or placed earlier (as
    :func:`zmatrix_placements` returns them); ``atoms``: the placed atoms in the order of the
    Cartesian vector y = positions[atoms].reshape(-1) (3 m,). The internal vector xi (3 m,) is
    (r_ij, angle ijk, dihedral ijkl) per placement, in placement order. For fixed known atoms the
    map xi -> y is one-to-one on r > 0, 0 < angle < pi and each dihedral in one window of 2 pi,
    with log|det dy/dxi| = sum [2 log r + log sin angle] (a product of spherical elements).
    """

    placements: tuple[tuple[int, int, int, int], ...] = eqx.field(static=True)
    atoms: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, placements: Sequence[Sequence[int]], atoms: Sequence[int]):
        self.placements = tuple(tuple(int(i) for i in p) for p in placements)
        self.atoms = tuple(int(i) for i in atoms)
        if sorted(p[0] for p in self.placements) != sorted(self.atoms):
            raise ValueError("AtomPlacements: every atom must be placed exactly once")

    @property
    def periodic(self) -> np.ndarray:
        """(3 m,) bool: True at the dihedrals."""
        return np.tile([False, False, True], len(self.placements))

    def cartesian(
        self, known: Float[Array, "n_atoms 3"], xi: Float[Array, " n_y"]
    ) -> tuple[Float[Array, " n_y"], Float[Array, ""]]:
        """(y (3 m,), log|det dy/dxi|) for internal coordinates xi, the other atoms at ``known``
        (rows of the placed atoms are ignored)."""
        # one scan step per atom, not an unrolled loop: predict.laplace_fit's Hessians
        # differentiate through this twice, and for alanine dipeptide the prediction then
        # compiles in about 24 s instead of about 90 s
        idx = jnp.asarray(self.placements)

        def place(pos, row):
            (i, j, k, h), (r, t, p) = row[0], row[1]
            return pos.at[i].set(_place(pos[h], pos[k], pos[j], r, t, p)), None

        pos, _ = jax.lax.scan(place, known.astype(xi.dtype), (idx, xi.reshape(-1, 3)))
        rs, ts = xi[0::3], xi[1::3]
        log_det = jnp.sum(2 * jnp.log(rs) + jnp.log(jnp.sin(ts)))
        return pos[np.asarray(self.atoms)].reshape(-1), log_det

    def internal(self, pos: Float[Array, "n_atoms 3"]) -> Float[Array, " n_y"]:
        """Internal coordinates xi (3 m,) of all positions (dihedrals in (-pi, pi])."""
        return _bond_angle_dihedral(pos, np.asarray(self.placements).reshape(-1, 4)).reshape(-1)
