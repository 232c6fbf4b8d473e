"""Pure-JAX energy terms of a classical force field, in OpenMM's units (nm, kJ/mol, e).

Each term is an equinox Module that holds its parameters as arrays and maps one configuration,
positions (n_atoms, 3) in nm, to a scalar energy in kJ/mol. Batch with ``jax.vmap``. Every
formula is the one of the OpenMM force the term is read from (``openmm_reader``) and is tested
against OpenMM. Parameters are cast to the dtype of the positions, so float32 positions give a
float32 energy even when the parameters were stored in float64.

Nonbonded and GBSA terms use dense (n_atoms, n_atoms) pair matrices, and bonded terms gather
their bond vectors through ``Displacements`` (a matrix product for small molecules): for small
molecules this avoids scatter-adds in the gradient, which are slow on CPU.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from coarseflow.forcefield.fastgrad import with_analytic_gradient
from coarseflow.forcefield.geometry import (
    Displacements,
    Vec,
    angle_from_vectors,
    dihedral_xy,
    dot,
    pair_gradient,
    safe_sqrt,
    squared_distances,
)

# kJ mol^-1 nm e^-2. 1/(4 pi eps0) from the CODATA 2018 constants, the value OpenMM's kernels
# use; the older 138.935456 (still in OpenMM's docs) differs by 1.2e-8 relative.
ONE_4PI_EPS0 = 138.93545764438198
OBC_DIELECTRIC_OFFSET = 0.009  # nm, subtracted from every GBSA radius (OpenMM's value)
OBC2_ALPHA, OBC2_BETA, OBC2_GAMMA = 1.0, 0.8, 4.85  # OBC "type II" tanh rescaling
OBC1_ALPHA, OBC1_BETA, OBC1_GAMMA = 0.8, 0.0, 2.909125  # OBC "type I" (OpenMM's app.OBC1)
ACE_PROBE_RADIUS = 0.14  # nm, solvent probe radius of the ACE surface-area term


def _split(vectors: Vec, parts: int) -> list[Vec]:
    """Split stacked vectors (components of length parts * m) into ``parts`` vectors of m."""
    m = vectors[0].shape[0] // parts
    return [tuple(c[p * m : (p + 1) * m] for c in vectors) for p in range(parts)]


class AbstractTerm(eqx.Module):
    """One energy term: ``energy(positions (n_atoms, 3) nm) -> kJ/mol`` (scalar)."""

    name: eqx.AbstractClassVar[str]

    # Hash by identity so that jax.jit(term.energy) works (see ForceField.__hash__).
    def __hash__(self) -> int:
        return id(self)

    @abc.abstractmethod
    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        raise NotImplementedError


class HarmonicBonds(AbstractTerm):
    """E = sum_b k_b / 2 (r_b - r0_b)^2 (OpenMM HarmonicBondForce).

    bonds: displacements of the m bonded pairs; length r0 (m,) nm; k (m,) kJ/mol/nm^2.
    """

    bonds: Displacements
    length: Float[Array, " m"]
    k: Float[Array, " m"]
    name: ClassVar[str] = "bonds"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        d = self.bonds(positions)
        r = safe_sqrt(dot(d, d))
        return 0.5 * jnp.sum(self.k.astype(dtype) * (r - self.length.astype(dtype)) ** 2)


class HarmonicAngles(AbstractTerm):
    """E = sum_a k_a / 2 (theta_a - theta0_a)^2 (OpenMM HarmonicAngleForce).

    arms: displacements vertex -> i for the m angles i-j-k, then vertex -> k (2m pairs);
    theta0 (m,) rad; k (m,) kJ/mol/rad^2.
    """

    arms: Displacements
    theta0: Float[Array, " m"]
    k: Float[Array, " m"]
    name: ClassVar[str] = "angles"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        u, v = _split(self.arms(positions), 2)
        theta = angle_from_vectors(u, v)
        return 0.5 * jnp.sum(self.k.astype(dtype) * (theta - self.theta0.astype(dtype)) ** 2)


class PeriodicTorsions(AbstractTerm):
    """E = sum_t k_t (1 + cos(n_t phi_t - phase_t)) (OpenMM PeriodicTorsionForce).

    bonds: displacements p0 -> p1, then p1 -> p2, then p2 -> p3 of the m torsions (3m pairs;
    proper or improper, atoms as listed by OpenMM); periodicity n (m,) (integers >= 0 stored
    as floats); phase (m,) rad; k (m,) kJ/mol; max_periodicity: the largest n (static).

    The gradient in the dihedral's (x, y) is analytic (a custom JVP, see ``fastgrad``).
    """

    bonds: Displacements
    periodicity: Float[Array, " m"]
    phase: Float[Array, " m"]
    k: Float[Array, " m"]
    max_periodicity: int = eqx.field(static=True)
    name: ClassVar[str] = "torsions"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        x, y = dihedral_xy(*_split(self.bonds(positions), 3))
        params = (self.k, self.periodicity, self.phase)
        return _torsion_energy(
            self.max_periodicity, jnp.stack([x, y]), *(p.astype(dtype) for p in params)
        )


def _torsion_parts(max_periodicity, xy, k, periodicity, phase):
    """Energy and dE/d(x, y) (2, m) of torsions with phi = atan2(y, x).

    cos(n phi - phase) = cos(n phi) cos(phase) + sin(n phi) sin(phase), with cos(n phi),
    sin(n phi) from cos(phi), sin(phi) by the angle-addition recurrence: no atan2 and no cos
    of the batch, which are slow transcendentals on CPU.
    """
    x, y = xy[0], xy[1]
    # Undefined (as in OpenMM) only for collinear atoms, where x = y = 0.
    inv_norm2 = 1.0 / (x * x + y * y)
    inv_norm = jnp.sqrt(inv_norm2)
    cos1, sin1 = x * inv_norm, y * inv_norm
    cos_n, sin_n = jnp.ones_like(x), jnp.zeros_like(x)  # n = 0
    cos_sel, sin_sel = cos_n, sin_n
    for n in range(1, max_periodicity + 1):
        cos_n, sin_n = cos_n * cos1 - sin_n * sin1, sin_n * cos1 + cos_n * sin1
        cos_sel = jnp.where(periodicity == n, cos_n, cos_sel)
        sin_sel = jnp.where(periodicity == n, sin_n, sin_sel)
    cos_phase, sin_phase = jnp.cos(phase), jnp.sin(phase)
    energy = jnp.sum(k * (1.0 + cos_sel * cos_phase + sin_sel * sin_phase))
    # dE/dphi = -k n sin(n phi - phase); dphi/dx = -y / (x^2 + y^2), dphi/dy = x / (x^2 + y^2).
    d_phi = -k * periodicity * (sin_sel * cos_phase - cos_sel * sin_phase) * inv_norm2
    return energy, jnp.stack([-y * d_phi, x * d_phi])


@with_analytic_gradient(_torsion_parts)
def _torsion_energy(max_periodicity, xy, k, periodicity, phase):
    return _torsion_parts(max_periodicity, xy, k, periodicity, phase)[0]


class Nonbonded(AbstractTerm):
    """Lennard-Jones + Coulomb over all pairs, no cutoff (OpenMM NonbondedForce, NoCutoff).

    A pair i < j either takes the combined per-atom parameters (``pair_mask[i, j]`` True):
    sigma_ij = (sigma_i + sigma_j) / 2, eps_ij = sqrt(eps_i eps_j), qq_ij = q_i q_j; or it is
    an exception (excluded pairs and scaled 1-4 pairs), whose listed parameters replace the
    interaction entirely. Exceptions with qq = eps = 0 are simply absent from the list.
    Pair energy: 4 eps ((sigma/r)^12 - (sigma/r)^6) + ONE_4PI_EPS0 qq / r.

    charge (n,) e; sigma (n,) nm; sqrt_epsilon (n,) sqrt(kJ/mol); pair_mask (n, n) bool,
    True only above the diagonal; exception_pairs: displacements of the m exception pairs;
    exception_charge_prod (m,) e^2; exception_sigma (m,) nm; exception_epsilon (m,) kJ/mol.

    The gradient of the all-pairs part is analytic (a custom JVP, see ``fastgrad``).
    """

    charge: Float[Array, " n"]
    sigma: Float[Array, " n"]
    sqrt_epsilon: Float[Array, " n"]
    pair_mask: Bool[Array, "n n"]
    exception_pairs: Displacements
    exception_charge_prod: Float[Array, " m"]
    exception_sigma: Float[Array, " m"]
    exception_epsilon: Float[Array, " m"]
    name: ClassVar[str] = "nonbonded"

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        dtype = positions.dtype
        params = (self.charge, self.sigma, self.sqrt_epsilon)
        total = _pair_energy(None, positions, *(p.astype(dtype) for p in params), self.pair_mask)

        d = self.exception_pairs(positions)
        e_exc = _lj_coulomb(
            dot(d, d),
            self.exception_charge_prod.astype(dtype),
            self.exception_sigma.astype(dtype),
            self.exception_epsilon.astype(dtype),
        )
        return total + jnp.sum(e_exc)


def _lj_coulomb(r2, charge_prod, sigma, epsilon):
    s6 = (sigma * sigma / r2) ** 3
    return 4.0 * epsilon * (s6 * s6 - s6) + ONE_4PI_EPS0 * charge_prod / jnp.sqrt(r2)


def _pair_parts(static, positions, charge, sigma, sqrt_epsilon, pair_mask):
    """LJ + Coulomb energy over the pairs of pair_mask (n, n) with combined per-atom
    parameters, and its gradient (n, 3)."""
    del static
    # Masked-out entries (diagonal, lower triangle, exceptions) get r^2 = 1 so that
    # nothing there is infinite: a where() over an infinite branch would poison gradients.
    r2 = jnp.where(pair_mask, squared_distances(positions), 1.0)
    sig = 0.5 * (sigma[:, None] + sigma[None, :])
    epsilon = sqrt_epsilon[:, None] * sqrt_epsilon[None, :]
    qq = ONE_4PI_EPS0 * charge[:, None] * charge[None, :]
    inv_r2 = 1.0 / r2
    inv_r = jnp.sqrt(inv_r2)
    s6 = (sig * sig * inv_r2) ** 3
    energy = jnp.sum(jnp.where(pair_mask, 4.0 * epsilon * (s6 * s6 - s6) + qq * inv_r, 0.0))
    # dE/d(r^2) per pair; grad_i = sum_j 2 dE/d(r_ij^2) (x_i - x_j) over both orders.
    d_r2 = (epsilon * (12.0 * s6 - 24.0 * s6 * s6) - 0.5 * qq * inv_r) * inv_r2
    weight = jnp.where(pair_mask, d_r2, 0.0)
    weight = 2.0 * (weight + weight.T)
    return energy, pair_gradient(weight, positions)


@with_analytic_gradient(_pair_parts)
def _pair_energy(static, positions, charge, sigma, sqrt_epsilon, pair_mask):
    return _pair_parts(static, positions, charge, sigma, sqrt_epsilon, pair_mask)[0]


class GBSAOBC(AbstractTerm):
    """OBC generalized-Born implicit solvent with the ACE surface term: OBC2 as OpenMM's
    GBSAOBCForce (the defaults), or OBC1 as the CustomGBForce of OpenMM's ``app.OBC1``.

    With rho_i = radius_i - 0.009 nm and scaled radii s_j = scale_j rho_j, the Born radii are
    R_i = 1 / (1/rho_i - tanh(alpha psi_i - beta psi_i^2 + gamma psi_i^3) / radius_i),
    psi_i = rho_i / 2 sum_{j != i} I(rho_i, s_j, r_ij) (HCT pairwise descreening integrals);
    (alpha, beta, gamma) = (1, 0.8, 4.85) for OBC2, (0.8, 0, 2.909125) for OBC1.
    E_GB = -coulomb_constant / 2 (1/eps_solute - 1/eps_solvent) sum_{i,j} q_i q_j / f_ij,
    f_ij = sqrt(r_ij^2 + R_i R_j exp(-r_ij^2 / (4 R_i R_j))) (the i = j terms are the
    self energies); E_SA = 4 pi gamma_SA sum_i (radius_i + 0.14)^2 (radius_i / R_i)^6.

    charge (n,) e; radius (n,) nm; scale (n,) dimensionless; dielectrics dimensionless;
    surface_area_energy gamma_SA in kJ/mol/nm^2; alpha, beta, gamma: the tanh rescaling;
    coulomb_constant in kJ/mol nm / e^2 (OpenMM's Amber CustomGBForces write 138.935485, its
    GBSAOBCForce uses ONE_4PI_EPS0); engulfed_correction: add 2 (1/rho_i - 1/L_ij) to I when
    sphere i lies wholly inside scaled sphere j, as GBSAOBCForce does (the CustomGBForce
    integral of app.OBC1 does not).

    The gradient with respect to positions is analytic (a custom JVP, ~3x faster than
    autodiff through the Born radii on CPU); derivatives with respect to the parameters fall
    back to autodiff, and higher derivatives work.
    """

    charge: Float[Array, " n"]
    radius: Float[Array, " n"]
    scale: Float[Array, " n"]
    solute_dielectric: float = eqx.field(static=True)
    solvent_dielectric: float = eqx.field(static=True)
    surface_area_energy: float = eqx.field(static=True)
    alpha: float = eqx.field(static=True, default=OBC2_ALPHA)
    beta: float = eqx.field(static=True, default=OBC2_BETA)
    gamma: float = eqx.field(static=True, default=OBC2_GAMMA)
    coulomb_constant: float = eqx.field(static=True, default=ONE_4PI_EPS0)
    engulfed_correction: bool = eqx.field(static=True, default=True)
    name: ClassVar[str] = "gbsa"

    def _obc(self) -> tuple[float, float, float, bool]:
        return (self.alpha, self.beta, self.gamma, self.engulfed_correction)

    def _constants(self) -> tuple[float, float, tuple[float, float, float, bool]]:
        """(polar prefactor in kJ/mol nm / e^2, surface-area energy in kJ/mol/nm^2, the Born
        radii's (alpha, beta, gamma, engulfed_correction))."""
        if self.solute_dielectric != 0.0 and self.solvent_dielectric != 0.0:
            inv_diff = 1.0 / self.solute_dielectric - 1.0 / self.solvent_dielectric
            prefactor = -0.5 * self.coulomb_constant * inv_diff
        else:
            prefactor = 0.0  # OpenMM switches the polar term off then
        return prefactor, self.surface_area_energy, self._obc()

    def _params(self, dtype):
        return tuple(a.astype(dtype) for a in (self.charge, self.radius, self.scale))

    def born_radii(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, " n_atoms"]:
        """OBC effective Born radii R_i (n_atoms,) in nm."""
        _, radius, scale = self._params(positions.dtype)
        return _born_radii(self._obc(), positions, radius, scale, with_derivatives=False)[0]

    def energy(self, positions: Float[Array, "n_atoms 3"]) -> Float[Array, ""]:
        return _gbsa_energy(self._constants(), positions, *self._params(positions.dtype))


def _obc_integral(r, rho_i, s_j, engulfed_correction=True):
    """Hawkins-Cramer-Truhlar descreening of atom i (radius rho_i) by the part of sphere j
    (radius s_j, centre at distance r) outside sphere i: the closed form of the integral of
    1/|x|^4 about centre i, up to the constant factor that psi_i carries. Elementwise; 0 when
    sphere j does not reach beyond sphere i."""
    upper = 1.0 / (r + s_j)
    lower = 1.0 / jnp.maximum(rho_i, jnp.abs(r - s_j))
    l2, u2 = lower * lower, upper * upper
    integral = (
        lower
        - upper
        + 0.25 * r * (u2 - l2)
        + 0.5 / r * jnp.log(upper / lower)
        + 0.25 * s_j * s_j / r * (l2 - u2)
    )
    if engulfed_correction:  # sphere i lies wholly inside j: add the part of j that i hides
        integral = integral + jnp.where(rho_i < s_j - r, 2.0 * (1.0 / rho_i - lower), 0.0)
    return jnp.where(rho_i < r + s_j, integral, 0.0)


def _born_radii(obc, positions, radius, scale, *, with_derivatives: bool):
    """Born radii R (n,) and the pieces the analytic gradient reuses: r^2 (n, n), r (n, n)
    (1 on the diagonal), dI_ij/dr (n, n) and dR_i/dpsi_i (n,) (None unless asked for).
    obc: (alpha, beta, gamma, engulfed_correction) of GBSAOBC."""
    alpha, beta, gamma, engulfed_correction = obc
    rho = radius - OBC_DIELECTRIC_OFFSET
    n = positions.shape[0]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    r2 = squared_distances(positions)
    # r = 1 on the diagonal only to keep the (masked) arithmetic finite there.
    r = jnp.sqrt(jnp.where(off_diagonal, r2, 1.0))

    def pair_integrals(r):
        i = _obc_integral(r, rho[:, None], (scale * rho)[None, :], engulfed_correction)
        return jnp.where(off_diagonal, i, 0.0)

    if with_derivatives:
        # Forward mode on an elementwise function: dI/dr for every pair in one fused pass.
        integral, d_integral = jax.jvp(pair_integrals, (r,), (jnp.ones_like(r),))
    else:
        integral, d_integral = pair_integrals(r), None
    psi = 0.5 * rho * jnp.sum(integral, axis=1)
    tanh = jnp.tanh(alpha * psi - beta * psi**2 + gamma * psi**3)
    born = 1.0 / (1.0 / rho - tanh / radius)
    d_born = None
    if with_derivatives:
        chain = alpha - 2.0 * beta * psi + 3.0 * gamma * psi**2
        d_born = born * born * (1.0 - tanh * tanh) * chain / radius
    return born, r2, r, d_integral, d_born


def _gbsa_parts(constants, positions, charge, radius, scale, *, with_gradient: bool):
    """GBSA energy (scalar, kJ/mol) and, if asked, its gradient (n, 3) in kJ/mol/nm."""
    prefactor, gamma, obc = constants
    born, r2, r, d_integral, d_born = _born_radii(
        obc, positions, radius, scale, with_derivatives=with_gradient
    )
    born2 = born[:, None] * born[None, :]
    scaled_r2 = r2 / (4.0 * born2)
    expo = jnp.exp(-scaled_r2)
    inv_f = 1.0 / jnp.sqrt(r2 + born2 * expo)  # diagonal: 1/R_i, the self energies
    qq = prefactor * charge[:, None] * charge[None, :]
    surface = 4.0 * math.pi * gamma * (radius + ACE_PROBE_RADIUS) ** 2 * (radius / born) ** 6
    energy = jnp.sum(qq * inv_f) + jnp.sum(surface)
    if not with_gradient:
        return energy, None

    # dE/dR_k: through f_kj and f_jk (symmetric, hence one sum) and the surface term.
    g = qq * inv_f**3
    d_e_d_born = -jnp.sum(g * born[None, :] * expo * (1.0 + scaled_r2), axis=1) - 6.0 * (
        surface / born
    )
    # dE/dI_ij = dE/dR_i dR_i/dpsi_i rho_i / 2, times dI_ij/dr_ij, divided by r_ij.
    rho = radius - OBC_DIELECTRIC_OFFSET
    via_born = (d_e_d_born * d_born * 0.5 * rho)[:, None] * d_integral / r
    # dE/dr_ij / r_ij for the unordered pair: direct polar term (f_ij and f_ji) + Born radii.
    weight = -2.0 * g * (1.0 - 0.25 * expo) + via_born + via_born.T
    weight = jnp.where(jnp.eye(positions.shape[0], dtype=bool), 0.0, weight)
    return energy, pair_gradient(weight, positions)


def _gbsa_value_and_gradient(constants, positions, charge, radius, scale):
    return _gbsa_parts(constants, positions, charge, radius, scale, with_gradient=True)


@with_analytic_gradient(_gbsa_value_and_gradient)
def _gbsa_energy(constants, positions, charge, radius, scale):
    return _gbsa_parts(constants, positions, charge, radius, scale, with_gradient=False)[0]
