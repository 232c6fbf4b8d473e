"""AmberGB: the generalized-Born models of OpenMM's ``implicit/*.xml`` files, in pure JAX.

OpenMM builds HCT, OBC1, OBC2, GBn and GBn2 (Amber's igb = 1, 2, 5, 7, 8) as CustomGBForces
(``openmm.app.internal.customgbforces``); ``gb_reader`` recognises them and fills this one
term, whose formulas are those forces' expressions:

* pair integral K_ij(r) = HCT_ij(r) + neck_scale Neck_ij(r), summed over j != i: I_i;
  HCT_ij = 1/2 (1/L - 1/U + (r - sr_j^2/r)/4 (1/U^2 - 1/L^2) + log(L/U) / (2 r)) when
  r + sr_j >= or_i (else 0), U = r + sr_j, L = max(or_i, |r - sr_j|);
  Neck_ij = m0_ij / (1 + 100 (r - d0_ij)^2 + 3e5 (r - d0_ij)^6) when
  r <= radius_i + radius_j + neck_cut (GBn, GBn2 only; m0, d0 from the force's tables);
* Born radius B_i = 1 / (1/or_i - I_i) (HCT), or with psi_i = I_i or_i
  B_i = 1 / (1/or_i - tanh(alpha_i psi_i - beta_i psi_i^2 + gamma_i psi_i^3) / radius_i);
* energy: prefactor sum_{i,j} q_i q_j / f_ij (the i = j terms are the self energies,
  f_ii = B_i), f_ij = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j))),
  prefactor = -coulomb/2 (1/eps_solute - 1/eps_solvent); plus the ACE surface term
  ace sum_i (radius_i + 0.14)^2 (radius_i / B_i)^6.

Here or_i is the offset radius, radius_i = or_i + offset, sr_j the scaled offset radius
(all nm). Unlike GBSAOBCForce there is no engulfed-sphere correction. The gradient with
respect to positions is analytic (a custom JVP, as GBSAOBC's), autodiff elsewhere.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from coarseflow.forcefield.fastgrad import with_analytic_gradient
from coarseflow.forcefield.geometry import pair_gradient, squared_distances
from coarseflow.forcefield.terms import ACE_PROBE_RADIUS, AbstractTerm, _obc_integral

# The neck integral's shape constants (OpenMM's GBn / GBn2 expressions; nm^-2 and nm^-6).
NECK_QUADRATIC, NECK_SEXTIC = 100.0, 0.3 * 1000000.0


class AmberGB(AbstractTerm):
    """Generalized-Born implicit solvent as OpenMM's Amber CustomGBForces (see the module).

    charge (n,) e; offset_radius or (n,) nm; scaled_radius sr (n,) nm (screen x or);
    alpha, beta, gamma (n,) dimensionless (per atom for GBn2, one value for the others;
    unused for HCT); neck_m0 (n, n) nm^-1 and neck_d0 (n, n) nm: the neck table entries of
    each ordered pair (zeros without a neck). Static: model (a name, for messages); offset
    nm; hct (B = 1 / (1/or - I), no tanh); neck_scale, neck_cut nm (0 without a neck);
    coulomb kJ/mol nm / e^2 (138.935485 in these expressions); the dielectrics; ace, the
    surface coefficient in kJ/mol/nm^2 (0 without a surface term).
    """

    charge: Float[Array, " n"]
    offset_radius: Float[Array, " n"]
    scaled_radius: Float[Array, " n"]
    alpha: Float[Array, " n"]
    beta: Float[Array, " n"]
    gamma: Float[Array, " n"]
    neck_m0: Float[Array, "n n"]
    neck_d0: Float[Array, "n n"]
    model: str = eqx.field(static=True)
    offset: float = eqx.field(static=True)
    hct: bool = eqx.field(static=True)
    neck_scale: float = eqx.field(static=True)
    neck_cut: float = eqx.field(static=True)
    coulomb_constant: float = eqx.field(static=True)
    solute_dielectric: float = eqx.field(static=True)
    solvent_dielectric: float = eqx.field(static=True)
    ace: float = eqx.field(static=True)
    name: ClassVar[str] = "gbsa"

    def _static(self) -> tuple:
        """(prefactor kJ/mol nm / e^2, ace, offset, hct, neck_scale, neck_cut): hashable."""
        inv_diff = 1.0 / self.solute_dielectric - 1.0 / self.solvent_dielectric
        prefactor = -0.5 * self.coulomb_constant * inv_diff
        return (prefactor, self.ace, self.offset, self.hct, self.neck_scale, self.neck_cut)

    def _params(self, dtype) -> tuple:
        arrays = (self.charge, self.offset_radius, self.scaled_radius, self.alpha, self.beta)
        arrays += (self.gamma, self.neck_m0, self.neck_d0)
        return tuple(a.astype(dtype) for a in arrays)

    def born_radii(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, " n_atoms"]:
        """Effective Born radii B_i (n_atoms,) in nm."""
        _, *params = self._params(positions.dtype)
        return _born(self._static(), positions, *params, with_derivatives=False)[0]

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        return _gb_energy(self._static(), positions, *self._params(positions.dtype))


def _pair_integral(static, r, rho, sr, m0, d0):
    """K_ij(r) (n, n): the HCT integral plus the scaled neck term, 0 on the diagonal."""
    _, _, offset, _, neck_scale, neck_cut = static
    n = r.shape[0]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    # _obc_integral is twice OpenMM's HCT integral (GBSAOBC carries the 1/2 in psi).
    k = 0.5 * _obc_integral(r, rho[:, None], sr[None, :], engulfed_correction=False)
    if neck_scale != 0.0:
        radius = rho + offset
        reach = radius[:, None] + radius[None, :] + neck_cut
        x = r - d0
        x2 = x * x
        neck = m0 / (1.0 + NECK_QUADRATIC * x2 + NECK_SEXTIC * x2 * x2 * x2)
        # A step, as OpenMM's: the neck term jumps to 0 beyond the reach.
        k = k + neck_scale * jnp.where(r <= reach, neck, 0.0)
    return jnp.where(off_diagonal, k, 0.0)


def _born(static, positions, rho, sr, alpha, beta, gamma, m0, d0, *, with_derivatives):
    """Born radii B (n,), and for the gradient: r^2 (n, n), r (n, n) (1 on the diagonal),
    dK_ij/dr (n, n) and dB_i/dpsi_i (n,) (None unless asked for)."""
    offset, hct = static[2], static[3]
    n = positions.shape[0]
    r2 = squared_distances(positions)
    # r = 1 on the diagonal only to keep the (masked) arithmetic finite there.
    r = jnp.sqrt(jnp.where(jnp.eye(n, dtype=bool), 1.0, r2))

    def integrals(r):
        return _pair_integral(static, r, rho, sr, m0, d0)

    if with_derivatives:
        # Forward mode on an elementwise function: dK/dr of every pair in one pass.
        k, d_k = jax.jvp(integrals, (r,), (jnp.ones_like(r),))
    else:
        k, d_k = integrals(r), None
    psi = rho * jnp.sum(k, axis=1)
    if hct:
        born = 1.0 / (1.0 / rho - psi / rho)
        d_born = born * born / rho if with_derivatives else None
        return born, r2, r, d_k, d_born
    radius = rho + offset
    tanh = jnp.tanh(alpha * psi - beta * psi**2 + gamma * psi**3)
    born = 1.0 / (1.0 / rho - tanh / radius)
    d_born = None
    if with_derivatives:
        chain = alpha - 2.0 * beta * psi + 3.0 * gamma * psi**2
        d_born = born * born * (1.0 - tanh * tanh) * chain / radius
    return born, r2, r, d_k, d_born


def _gb_parts(static, positions, charge, rho, *rest, with_gradient: bool):
    """Energy (kJ/mol) and, if asked, its gradient (n, 3) in kJ/mol/nm."""
    prefactor, ace, offset = static[0], static[1], static[2]
    born, r2, r, d_k, d_born = _born(static, positions, rho, *rest, with_derivatives=with_gradient)
    born2 = born[:, None] * born[None, :]
    scaled_r2 = r2 / (4.0 * born2)
    expo = jnp.exp(-scaled_r2)
    inv_f = 1.0 / jnp.sqrt(r2 + born2 * expo)  # diagonal: 1/B_i, the self energies
    qq = prefactor * charge[:, None] * charge[None, :]
    radius = rho + offset
    surface = ace * (radius + ACE_PROBE_RADIUS) ** 2 * (radius / born) ** 6
    energy = jnp.sum(qq * inv_f) + jnp.sum(surface)
    if not with_gradient:
        return energy, None

    # dE/dB_k through f_kj and f_jk (symmetric, hence one sum) and the surface term.
    g = qq * inv_f**3
    d_e_d_born = -jnp.sum(g * born[None, :] * expo * (1.0 + scaled_r2), axis=1)
    d_e_d_born = d_e_d_born - 6.0 * surface / born
    # dE/dK_ij = dE/dB_i dB_i/dpsi_i or_i; times dK_ij/dr_ij, divided by r_ij.
    via_born = (d_e_d_born * d_born * rho)[:, None] * d_k / r
    # dE/dr_ij / r_ij for the unordered pair: direct polar term (f_ij and f_ji) + Born radii.
    weight = -2.0 * g * (1.0 - 0.25 * expo) + via_born + via_born.T
    weight = jnp.where(jnp.eye(positions.shape[0], dtype=bool), 0.0, weight)
    return energy, pair_gradient(weight, positions)


def _gb_value_and_gradient(static, positions, *params):
    return _gb_parts(static, positions, *params, with_gradient=True)


@with_analytic_gradient(_gb_value_and_gradient)
def _gb_energy(static, positions, *params):
    return _gb_parts(static, positions, *params, with_gradient=False)[0]
