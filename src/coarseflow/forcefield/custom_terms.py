"""Pure-JAX terms for the custom forces that OpenMM's CHARMM36 (``charmm36.xml``,
``charmm36_2024.xml``) creates, each the formula of the expression ``custom_reader`` recognises:

* ``HarmonicTorsions`` (CustomTorsionForce): CHARMM's impropers, E = k (theta - theta0)^2 with
  theta OpenMM's dihedral in [-pi, pi] (charmm36.xml), or with the difference taken the short
  way round the circle (charmm36_2024.xml);
* ``UreyBradley`` (a CustomBondForce 0.5 k (r - r0)^2): the 1-3 Urey-Bradley terms, which
  OpenMM adds to the HarmonicBondForce and ``charmm.split_urey_bradley`` moves out of it;
* ``LennardJonesPairs`` (CustomBondForce 4 eps ((sigma/r)^12 - (sigma/r)^6)): CHARMM's 1-4
  Lennard-Jones pairs with their own parameters;
* ``LennardJonesTable`` (CustomNonbondedForce acoef(type1, type2)/r^12 - bcoef(type1,
  type2)/r^6, no cutoff): Lennard-Jones of every other pair from per-type-pair tables, NBFIX
  included.

Units as ``terms``: nm, kJ/mol, rad. Parameters are cast to the dtype of the positions.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from coarseflow.forcefield.fastgrad import with_analytic_gradient
from coarseflow.forcefield.geometry import (
    Displacements,
    dihedral_xy,
    dot,
    pair_gradient,
    safe_sqrt,
    squared_distances,
)
from coarseflow.forcefield.terms import AbstractTerm, _split


class HarmonicTorsions(AbstractTerm):
    """E = sum_t k_t d_t^2 (OpenMM CustomTorsionForce, CHARMM's harmonic impropers).

    d_t = theta_t - theta0_t with theta_t = atan2(y, x) in [-pi, pi] (``periodic`` False:
    ``k*(theta-theta0)^2``), or min(|d_t|, 2 pi - |d_t|) (``periodic`` True:
    ``k*min(dtheta, 2*pi - dtheta)^2; dtheta = abs(theta - theta0)``).

    bonds: displacements p0 -> p1, p1 -> p2, p2 -> p3 of the m torsions (3m pairs); k (m,)
    kJ/mol/rad^2; theta0 (m,) rad.
    """

    bonds: Displacements
    k: Float[Array, " m"]
    theta0: Float[Array, " m"]
    periodic: bool = eqx.field(static=True)
    name: ClassVar[str] = "impropers"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        x, y = dihedral_xy(*_split(self.bonds(positions), 3))
        d = jnp.arctan2(y, x) - self.theta0.astype(dtype)
        if self.periodic:
            d = jnp.abs(d)
            d = jnp.minimum(d, 2.0 * math.pi - d)
        return jnp.sum(self.k.astype(dtype) * d * d)


class UreyBradley(AbstractTerm):
    """E = sum_b k_b / 2 (r_b - r0_b)^2 over CHARMM's Urey-Bradley 1-3 pairs.

    pairs: displacements of the m pairs; length r0 (m,) nm; k (m,) kJ/mol/nm^2.
    """

    pairs: Displacements
    length: Float[Array, " m"]
    k: Float[Array, " m"]
    name: ClassVar[str] = "urey_bradley"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        d = self.pairs(positions)
        r = safe_sqrt(dot(d, d))
        return 0.5 * jnp.sum(self.k.astype(dtype) * (r - self.length.astype(dtype)) ** 2)


class LennardJonesPairs(AbstractTerm):
    """E = sum_p 4 eps_p ((sigma_p / r_p)^12 - (sigma_p / r_p)^6) over listed pairs (CHARMM's
    1-4 pairs, a CustomBondForce).

    pairs: displacements of the m pairs; sigma (m,) nm; epsilon (m,) kJ/mol.
    """

    pairs: Displacements
    sigma: Float[Array, " m"]
    epsilon: Float[Array, " m"]
    name: ClassVar[str] = "lj14"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        d = self.pairs(positions)
        sigma, epsilon = self.sigma.astype(dtype), self.epsilon.astype(dtype)
        s6 = (sigma * sigma / dot(d, d)) ** 3
        return jnp.sum(4.0 * epsilon * (s6 * s6 - s6))


class LennardJonesTable(AbstractTerm):
    """E = sum_{i<j} A_ij / r_ij^12 - B_ij / r_ij^6 over the pairs of ``pair_mask`` (OpenMM's
    CustomNonbondedForce of a LennardJonesForce: A, B = acoef, bcoef of the two atoms' types,
    NBFIX pairs included; no cutoff; the excluded pairs left out).

    a, b (n, n) kJ/mol nm^12, kJ/mol nm^6: the pair coefficients, zero off the mask;
    pair_mask (n, n) bool, True only above the diagonal for pairs that interact.
    The gradient is analytic (a custom JVP, see ``fastgrad``).
    """

    a: Float[Array, "n n"]
    b: Float[Array, "n n"]
    pair_mask: Bool[Array, "n n"]
    name: ClassVar[str] = "lennard_jones"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        a, b = self.a.astype(dtype), self.b.astype(dtype)
        return _table_energy(None, positions, a, b, self.pair_mask)


def _table_parts(static, positions, a, b, pair_mask):
    """Energy of the tabulated Lennard-Jones pairs and its gradient (n, 3)."""
    del static
    # r^2 = 1 off the mask: nothing infinite there (a where() over an inf poisons gradients)
    r2 = jnp.where(pair_mask, squared_distances(positions), 1.0)
    inv_r2 = 1.0 / r2
    inv_r6 = inv_r2 * inv_r2 * inv_r2
    energy = jnp.sum(jnp.where(pair_mask, (a * inv_r6 - b) * inv_r6, 0.0))
    # dE/d(r^2) per pair; grad_i = sum_j 2 dE/d(r_ij^2) (x_i - x_j) over both orders
    d_r2 = (3.0 * b - 6.0 * a * inv_r6) * inv_r6 * inv_r2
    weight = jnp.where(pair_mask, d_r2, 0.0)
    return energy, pair_gradient(2.0 * (weight + weight.T), positions)


@with_analytic_gradient(_table_parts)
def _table_energy(static, positions, a, b, pair_mask):
    return _table_parts(static, positions, a, b, pair_mask)[0]
