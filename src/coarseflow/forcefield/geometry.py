"""Differentiable geometry: displacements, distances, angles and the one dihedral of coarseflow.

Vectors are carried as coordinate components ``(x, y, z)``, each an array over atoms or atom
tuples: a trailing axis of length 3 vectorises badly on CPU (XLA loops over the minor axis).
Angles are in radians, lengths in nm. ``angles`` and ``dihedrals`` (and the vector helpers they
use) work on NumPy and on JAX arrays with any leading batch shape: NumPy in gives NumPy out (the
analysis of long trajectories stays in float64 on the host), a JAX array (or tracer) in gives
a JAX array out.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

Vec = tuple[Array, Array, Array]
Gather = Literal["auto", "matmul", "index"]
# "auto" gathers by a dense 0/+-1 matrix product when the matrix has at most this many entries.
MATMUL_GATHER_MAX_ENTRIES = 2**18


def _xp(*arrays):
    """jax.numpy if any argument is a JAX array (or tracer), else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def components(positions: Float[Array, "*batch n 3"], index: Int[Array, " m"] | None = None) -> Vec:
    """(x, y, z) of all atoms, each (*batch, n), or of the atoms ``index``, each (*batch, m)."""
    if index is None:
        return positions[..., 0], positions[..., 1], positions[..., 2]
    return positions[..., index, 0], positions[..., index, 1], positions[..., index, 2]


def sub(a: Vec, b: Vec) -> Vec:
    return a[0] - b[0], a[1] - b[1], a[2] - b[2]


def dot(a: Vec, b: Vec) -> Array:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cross(a: Vec, b: Vec) -> Vec:
    return a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]


def safe_sqrt(x: Array) -> Array:
    """sqrt(x) for x >= 0, with gradient 0 (not NaN) at x = 0."""
    xp = _xp(x)
    positive = x > 0
    return xp.where(positive, xp.sqrt(xp.where(positive, x, 1.0)), 0.0)


def squared_distances(positions: Float[Array, "n 3"]) -> Float[Array, "n n"]:
    """r_ij^2 (n, n) in nm^2 for all pairs; the diagonal is exactly 0."""
    n = positions.shape[0]
    r2 = jnp.zeros((n, n), positions.dtype)
    for c in components(positions):
        d = c[:, None] - c[None, :]
        r2 = r2 + d * d
    return r2


def pair_gradient(weight: Float[Array, "n n"], positions: Float[Array, "n 3"]) -> Array:
    """sum_j w_ij (x_i - x_j) for every atom i, (n, 3): the gradient of an energy of pair
    distances, given the symmetric weights w_ij = dE/dr_ij / r_ij (zero diagonal)."""
    rowsum = jnp.sum(weight, axis=1)
    # Per component, as reductions: no minor axis of 3, no low-precision matmul on a GPU.
    return jnp.stack(
        [rowsum * c - jnp.sum(weight * c[None, :], axis=1) for c in components(positions)],
        axis=1,
    )


def angle_from_vectors(u: Vec, v: Vec) -> Array:
    """Angle between u and v in radians, in [0, pi]."""
    # atan2(|u x v|, u.v) keeps full precision near 0 and pi, where arccos loses it.
    w = cross(u, v)
    sin, cos = safe_sqrt(dot(w, w)), dot(u, v)
    return _xp(sin, cos).arctan2(sin, cos)


def dihedral_xy(b1: Vec, b2: Vec, b3: Vec) -> tuple[Array, Array]:
    """(x, y) such that the dihedral is phi = atan2(y, x), from the bond vectors
    b1 = p1 - p0, b2 = p2 - p1, b3 = p3 - p2 (IUPAC sign convention, as OpenMM):
    x = (b1 x b2).(b2 x b3), y = |b2| b1.(b2 x b3); x^2 + y^2 = |b1 x b2|^2 |b2 x b3|^2."""
    n2 = cross(b2, b3)
    return dot(cross(b1, b2), n2), safe_sqrt(dot(b2, b2)) * dot(b1, n2)


def angles(
    positions: Float[Array, "*batch n 3"], atoms: Int[Array, "m 3"]
) -> Float[Array, "*batch m"]:
    """Angles i-j-k in radians, in [0, pi]; atoms (m, 3) holds (i, j, k), j the vertex."""
    vertex = components(positions, atoms[:, 1])
    return angle_from_vectors(
        sub(components(positions, atoms[:, 0]), vertex),
        sub(components(positions, atoms[:, 2]), vertex),
    )


def dihedrals(
    positions: Float[Array, "*batch n 3"], atoms: Int[Array, "m 4"]
) -> Float[Array, "*batch m"]:
    """Dihedral angles i-j-k-l in radians, in (-pi, pi], IUPAC sign convention (as OpenMM and
    mdtraj): looking along j -> k, the angle is positive when the bond k -> l is rotated
    clockwise from i -> j."""
    p = [components(positions, atoms[:, k]) for k in range(4)]
    x, y = dihedral_xy(sub(p[1], p[0]), sub(p[2], p[1]), sub(p[3], p[2]))
    xp = _xp(x, y)
    angle = xp.arctan2(y, x)
    # arctan2 gives -pi for y = -0.0: the range is (-pi, pi]
    return xp.where(angle <= -math.pi, math.pi, angle)


class Displacements(eqx.Module):
    """x[end] - x[start] for a fixed list of k atom pairs, as components, each (k,), in nm.

    With ``incidence`` (k, n_atoms) (+1 at end, -1 at start) the gather is one matrix product:
    its gradient is another matrix product, where an index gather's gradient is a scatter-add,
    which is slow on CPU. Exact in any precision: each entry sums one +x and one -x.
    """

    start: Int[Array, " k"]
    end: Int[Array, " k"]
    incidence: Float[Array, "k n"] | None

    def __call__(self, positions: Float[Array, "n 3"]) -> Vec:
        if self.incidence is None:
            return sub(components(positions, self.end), components(positions, self.start))
        # HIGHEST precision: a GPU may otherwise multiply float32 in TF32 (10-bit mantissa).
        d = jnp.matmul(
            positions.T,
            self.incidence.T.astype(positions.dtype),
            precision=jax.lax.Precision.HIGHEST,
        )
        return d[0], d[1], d[2]


def displacements(start, end, n_atoms: int, gather: Gather = "auto") -> Displacements:
    """Displacements for pairs start[k] -> end[k] (integer sequences); ``gather`` picks the
    gather: "matmul" (dense incidence matrix), "index", or "auto" (matmul while the matrix has
    at most MATMUL_GATHER_MAX_ENTRIES entries)."""
    start = np.asarray(start, dtype=np.int32).reshape(-1)
    end = np.asarray(end, dtype=np.int32).reshape(-1)
    if gather not in ("auto", "matmul", "index"):
        raise ValueError(f"gather: expected 'auto', 'matmul' or 'index', got {gather!r}")
    use_matmul = gather == "matmul" or (
        gather == "auto" and start.size * n_atoms <= MATMUL_GATHER_MAX_ENTRIES
    )
    incidence = None
    if use_matmul:
        incidence = np.zeros((start.size, n_atoms))
        rows = np.arange(start.size)
        np.add.at(incidence, (rows, end), 1.0)
        np.add.at(incidence, (rows, start), -1.0)
        incidence = jnp.asarray(incidence)
    return Displacements(start=jnp.asarray(start), end=jnp.asarray(end), incidence=incidence)
