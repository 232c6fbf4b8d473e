"""CMAP: the tabulated (phi, psi) correction of CHARMM and ff19SB, as OpenMM's CMAPTorsionForce.

OpenMM's definition (CMAPTorsionForce docs and CMAPTorsionForceImpl): a map of size x size
energies, ``energy[i + size * j]`` at angles (i delta, j delta), delta = 2 pi / size, both in
[0, 2 pi). Each cell is the bicubic patch that matches, at its four corners, the energy, its
two first derivatives and the cross derivative; the derivatives at the grid points are those
of periodic cubic splines through the map: d/dphi along each row, d/dpsi along each column,
and the cross derivative as d/dphi of the d/dpsi grid. The energy of a torsion pair is the
patch of the cell its angles (each taken modulo 2 pi) fall in.

The patches are computed once in NumPy (``patch_coefficients``); the term evaluates
E = sum_{k,l} c_kl a^k b^l with a, b in [0, 1) the position in the cell.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from coarseflow.forcefield.geometry import Displacements, dihedral_xy
from coarseflow.forcefield.terms import AbstractTerm, _split

# Cubic Hermite basis on [0, 1] as polynomial coefficients (rows: powers t^0..t^3; columns:
# the weights of value at 0, value at 1, derivative at 0, derivative at 1).
_HERMITE = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [-3.0, 3.0, -2.0, -1.0],
        [2.0, -2.0, 1.0, 1.0],
    ]
)


def periodic_spline_slopes(values: np.ndarray, spacing: float) -> np.ndarray:
    """First derivatives at the knots of the periodic cubic spline through ``values`` along
    axis 0 (size, ...) with uniform ``spacing``: the spline is C2 and unique, and its slopes k
    solve k_{i-1} + 4 k_i + k_{i+1} = 3 (y_{i+1} - y_{i-1}) / spacing (indices modulo size)."""
    size = values.shape[0]
    eye = np.eye(size)
    system = 4.0 * eye + np.roll(eye, 1, axis=1) + np.roll(eye, -1, axis=1)
    rhs = 3.0 * (np.roll(values, -1, axis=0) - np.roll(values, 1, axis=0)) / spacing
    return np.linalg.solve(system, rhs)


def patch_coefficients(energy: np.ndarray) -> np.ndarray:
    """Bicubic coefficients (size, size, 4, 4) in kJ/mol of a map ``energy`` (size, size),
    energy[i, j] at angles (i delta, j delta): c[s, t, k, l] multiplies a^k b^l in the cell
    whose corner is (s, t), a and b the fractions of the cell along each angle."""
    size = energy.shape[0]
    delta = 2.0 * math.pi / size
    d_a = periodic_spline_slopes(energy, delta)  # d/d(first angle), along axis 0
    d_b = periodic_spline_slopes(energy.T, delta).T  # d/d(second angle), along axis 1
    d_ab = periodic_spline_slopes(d_b, delta)  # d/d(first angle) of d/d(second angle)

    def corners(grid, scale):
        """grid at the cell's corners (s or s+1, t or t+1), times scale: (size, size, 2, 2)."""
        nxt = np.roll(grid, -1, axis=0)
        rows = [np.stack([g, np.roll(g, -1, axis=1)], axis=-1) for g in (grid, nxt)]
        return scale * np.stack(rows, axis=-2)

    # Hermite data per cell, rows (value, value, slope, slope) along a, columns along b;
    # slopes are per unit of cell fraction, hence the factors delta.
    data = np.concatenate(
        [
            np.concatenate([corners(energy, 1.0), corners(d_b, delta)], axis=-1),
            np.concatenate([corners(d_a, delta), corners(d_ab, delta * delta)], axis=-1),
        ],
        axis=-2,
    )
    return np.einsum("kp,stpq,lq->stkl", _HERMITE, data, _HERMITE)


class CMAPTorsions(AbstractTerm):
    """E = sum_m patch(map_m; phi_m, psi_m) (OpenMM CMAPTorsionForce).

    bonds: displacements p0 -> p1, p1 -> p2, p2 -> p3 of the first torsions of the m pairs,
    then the same of the second torsions (6m pairs); cell_offset (m,) int: map_m size^2, the
    first row of the pair's map in ``coefficients``; coefficients (n_maps size^2, 16) kJ/mol:
    ``patch_coefficients`` of every map, flattened; size (static): the maps' common size.
    """

    bonds: Displacements
    cell_offset: Int[Array, " m"]
    coefficients: Float[Array, "cells 16"]
    size: int = eqx.field(static=True)
    name: ClassVar[str] = "cmap"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        vectors = _split(self.bonds(positions), 6)
        first = jnp.arctan2(*reversed(dihedral_xy(*vectors[:3])))
        second = jnp.arctan2(*reversed(dihedral_xy(*vectors[3:])))
        inv_delta = self.size / (2.0 * math.pi)
        # Angles in [0, 2 pi), as OpenMM; the cell index is clipped for an angle that rounds
        # to 2 pi exactly.
        a = jnp.mod(first, 2.0 * math.pi) * inv_delta
        b = jnp.mod(second, 2.0 * math.pi) * inv_delta
        s = jnp.clip(jnp.floor(a), 0, self.size - 1)
        t = jnp.clip(jnp.floor(b), 0, self.size - 1)
        cell = self.cell_offset + (s * self.size + t).astype(self.cell_offset.dtype)
        c = self.coefficients.astype(dtype)[cell].reshape(-1, 4, 4)
        a, b = a - s, b - t
        powers_a = jnp.stack([jnp.ones_like(a), a, a * a, a * a * a], axis=1)
        powers_b = jnp.stack([jnp.ones_like(b), b, b * b, b * b * b], axis=1)
        return jnp.sum(jnp.einsum("mk,mkl,ml->m", powers_a, c, powers_b))
