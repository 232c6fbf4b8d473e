"""FAB's ManyWell target (Midgley et al., ICLR 2023): m independent copies of a 2D double well."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from scipy import integrate, optimize

from coarseflow import checks
from coarseflow.errors import ConfigError
from coarseflow.partition import Partition
from coarseflow.targets.base import AbstractTarget, concrete_beta

# Per X coordinate, the box of x_bounds() loses at most _BOX_TAIL of p_beta(x1) for every beta in
# [support_beta, 1] (see ManyWell.box_mass_lost).
_BOX_TAIL = 1e-8
# sample(): the inverse-CDF grid spans the sublevel set of v holding all but this mass.
_SAMPLE_TAIL = 1e-14
_SAMPLE_GRID = 2**16 + 1
_QUAD = dict(epsabs=0.0, epsrel=1e-12, limit=500)


def _v(x1):
    """The x1 part of one copy's energy: x1^4 - 6 x1^2 - 0.5 x1 (NumPy or JAX arrays)."""
    return x1**4 - 6.0 * x1**2 - 0.5 * x1


# Stationary points of v: roots of v'(x) = 4x^3 - 12x - 0.5, ascending: the left well
# (x ≈ -1.711, v ≈ -8.139), the barrier top (x ≈ -0.042, v ≈ 0.010) and the deeper right well
# (x ≈ 1.753, v ≈ -9.871).
_STATIONARY = np.sort(np.roots([4.0, 0.0, -12.0, -0.5]).real)
_V_MIN = float(_v(_STATIONARY[2]))
_V_BARRIER = float(_v(_STATIONARY[1]))


def _error(name: str, expected: str, value) -> ConfigError:
    return ConfigError(f"many_well {name}: expected {expected}, got {value!r}")


def _x1_integrals(beta: float) -> tuple[float, float]:
    """(∫_{-inf}^0, ∫_0^inf) of exp(-beta (v(x1) - v_min)) dx1, by adaptive quadrature."""
    # Truncate where the integrand is below exp(-800) (0 in float64):
    # v(x) - v_min >= x^4 - 6 x^2 - |x| - v_min for all x.
    lim = 4.0
    while beta * (lim**4 - 6.0 * lim**2 - lim - _V_MIN) < 800.0:
        lim *= 1.5

    def f(x):
        return math.exp(-beta * (_v(x) - _V_MIN))

    left = integrate.quad(f, -lim, 0.0, points=[p for p in _STATIONARY if p < 0], **_QUAD)[0]
    right = integrate.quad(f, 0.0, lim, points=[p for p in _STATIONARY if p > 0], **_QUAD)[0]
    return left, right


@functools.lru_cache(maxsize=64)
def _log_z1_x(beta: float) -> float:
    """log ∫ exp(-beta v(x1)) dx1."""
    left, right = _x1_integrals(beta)
    return -beta * _V_MIN + math.log(left + right)


def _level_interval(c: float) -> tuple[float, float]:
    """[lo, hi] = {x : v(x) <= c}, an interval for c > v(barrier top)."""
    r = np.roots([1.0, 0.0, -6.0, -0.5, -c])
    r = np.sort(r[np.abs(r.imag) < 1e-9 * (1.0 + np.abs(r.real))].real)
    return float(r[0]), float(r[-1])


def _log_tail_mass(c: float, beta: float) -> float:
    """log of the mass of p_beta(x1) where v(x1) > c (outside ``_level_interval(c)``)."""
    lo, hi = _level_interval(c)

    def f(x):
        return math.exp(-beta * (_v(x) - c))

    total = 0.0
    for edge in (lo, hi):
        slope = abs(4.0 * edge**3 - 12.0 * edge - 0.5)  # v is convex beyond the edge
        scale = 1.0 / (beta * slope)
        span = 800.0 * scale
        pts = [edge + math.copysign(k * scale, edge) for k in (1.0, 10.0, 100.0)]
        a, b = sorted((edge, edge + math.copysign(span, edge)))
        total += integrate.quad(f, a, b, points=pts, **_QUAD)[0]
    return -beta * c - _log_z1_x(beta) + math.log(total)


@functools.lru_cache(maxsize=64)
def _level_box(beta: float, tail: float) -> tuple[float, float]:
    """The sublevel set {v <= c} of v whose complement holds exactly ``tail`` of p_beta(x1)."""
    target = math.log(tail)
    c_lo = _V_BARRIER + 1e-6
    if _log_tail_mass(c_lo, beta) <= target:
        return _level_interval(c_lo)
    c_hi = max(1.0, 2.0 * (-target) / beta)
    while _log_tail_mass(c_hi, beta) > target:
        c_hi *= 2.0
    c = optimize.brentq(lambda c: _log_tail_mass(c, beta) - target, c_lo, c_hi, xtol=1e-10)
    return _level_interval(c)


class ManyWell(AbstractTarget):
    """FAB's ManyWell: m copies of log p(x1, x2) = -x1^4 + 6 x1^2 + 0.5 x1 - 0.5 x2^2.

    This is FAB's 2D double well -(a x1 + b x1^2 + c x1^4) - 0.5 x2^2 with a = -0.5, b = -6,
    c = 1 (the right well, x1 ≈ 1.75, is the deeper one: P(x1 > 0) ≈ 0.8443 at beta = 1), and
    Z1 = ∫ exp(-x1^4 + 6 x1^2 + 0.5 x1) dx1 ≈ 11784.509 as in FAB; the formula is implemented
    exactly as written here (not checked line by line against FAB's code). ``n_wells = 16`` is
    FAB's ManyWell-32 (d = 32, 2^16 modes); log Z(1) = 16 (log Z1 + log(2 pi) / 2) ≈ 164.6957.

    Reduced energy u(x) = sum_i [v(x1_i) + 0.5 x2_i^2], v(x) = x^4 - 6 x^2 - 0.5 x. Ordering as
    in FAB, pairs interleaved: x = (x1_1, x2_1, x1_2, x2_2, ...), so X = x[0::2] (the m
    bimodal x1's) and Y = x[1::2] (the m Gaussian x2's). p_beta(Y | X) = N(0, I / beta) exactly,
    and p_beta(X) is a product of the 1D marginals p_beta(x1) ∝ exp(-beta v(x1)).

    **Support box.** ``x_bounds()`` is, per X coordinate, the sublevel set {v <= c} whose
    complement holds 1e-8 of p_beta(x1) at beta = ``support_beta`` (default 1e-2: about
    [-6.445, 6.452]). Since v is larger outside the box than anywhere inside it, the lost mass
    falls as beta rises, so it is <= 1e-8 per coordinate (<= m 1e-8 in all) for every beta in
    [support_beta, 1]; ``box_mass_lost`` computes it.

    Exact references (NumPy/SciPy, concrete beta only): ``log_partition``, ``log_marginal_1d``,
    ``log_marginal``, ``well_mass``, ``box_mass_lost``, ``sample``; JAX (jit/vmap/grad-safe, beta
    may be traced): ``energy``, ``conditional_gaussian``, ``log_marginal_unnormalized``, ``score``.
    """

    partition: Partition = eqx.field(static=True)
    n_wells: int = eqx.field(static=True)
    support_beta: float = eqx.field(static=True)

    def __init__(self, n_wells: int = 16, support_beta: float = 1e-2):
        self.n_wells = checks.integer("many_well n_wells", n_wells, 1, 10_000)
        self.support_beta = support_beta
        self.partition = Partition.from_x(2 * self.n_wells, range(0, 2 * self.n_wells, 2))

    def __check_init__(self):
        s = self.support_beta
        if not checks.is_finite(s) or not 0.0 < float(s) <= 1.0:
            raise _error("support_beta", "a number in (0, 1]", s)

    # ---- energy and JAX-side exact quantities -------------------------------------------------

    def energy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        X, Y = self.partition.split(x)
        return jnp.sum(_v(X)) + 0.5 * jnp.sum(Y**2)

    def conditional_gaussian(self, X: Float[Array, " m"], beta) -> tuple[Array, Array]:
        """p_beta(Y | X) = N(0, I / beta): mean (m,) zeros, std (m,) 1 / sqrt(beta)."""
        X = jnp.asarray(X)
        return jnp.zeros_like(X), jnp.ones_like(X) / jnp.sqrt(beta)

    def y_init(self, X: Float[Array, " m"]) -> Float[Array, " m"]:
        """Zeros: the exact minimiser of u over Y."""
        return jnp.zeros_like(jnp.asarray(X))

    def log_marginal_unnormalized(
        self, X: Float[Array, "*batch m"], beta=1.0
    ) -> Float[Array, "*batch"]:
        """-beta sum_i v(x1_i): log p_beta(X) up to the constant -m log Z1(beta)."""
        return -beta * jnp.sum(_v(jnp.asarray(X)), axis=-1)

    def score(self, X: Float[Array, "*batch m"], beta=1.0) -> Float[Array, "*batch m"]:
        """grad_X log p_beta(X) = beta (-4 x1^3 + 12 x1 + 0.5), per coordinate."""
        X = jnp.asarray(X)
        return beta * (-4.0 * X**3 + 12.0 * X + 0.5)

    # ---- NumPy/SciPy references ----------------------------------------------------------------

    def x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = _level_box(float(self.support_beta), _BOX_TAIL)
        return np.full(self.n_wells, lo), np.full(self.n_wells, hi)

    def log_partition_x1(self, beta: float = 1.0) -> float:
        """log Z1(beta) = log ∫ exp(-beta v(x1)) dx1 (one copy's X normaliser; ≈ 9.3745 at 1)."""
        return _log_z1_x(concrete_beta(beta))

    def log_partition(self, beta: float = 1.0) -> float:
        """log Z(beta) = m [log Z1(beta) + 0.5 log(2 pi / beta)] (≈ 164.6957 for m = 16, beta 1)."""
        b = concrete_beta(beta)
        return self.n_wells * (_log_z1_x(b) + 0.5 * math.log(2.0 * math.pi / b))

    def log_marginal_1d(self, x1: ArrayLike, beta: float = 1.0):
        """Normalised log p_beta(x1) of one X coordinate, elementwise (NumPy or JAX array in)."""
        b = concrete_beta(beta)
        return -b * _v(x1) - _log_z1_x(b)

    def log_marginal(self, X: Float[Array, "*batch m"], beta: float = 1.0):
        """Normalised log p_beta(X) = sum_i log p_beta(x1_i) (NumPy or JAX array in)."""
        return self.log_marginal_1d(X, beta).sum(axis=-1)

    def well_mass(self, beta: float = 1.0) -> float:
        """Exact P(x1 > 0) of one coordinate under p_beta (the deeper right well; ≈ 0.8443 at 1)."""
        left, right = _x1_integrals(concrete_beta(beta))
        return right / (left + right)

    def box_mass_lost(self, beta: float = 1.0) -> float:
        """Exact mass of p_beta(X) outside ``x_bounds()`` (all m coordinates), by quadrature."""
        b = concrete_beta(beta)
        lo, hi = self.x_bounds()
        c = float(_v(hi[0]))  # lo and hi lie on the same level set of v
        per_coordinate = math.exp(_log_tail_mass(c, b))
        return float(-math.expm1(self.n_wells * math.log1p(-per_coordinate)))

    def sample(self, key: PRNGKeyArray, n: int, beta: float = 1.0) -> Float[Array, "n n"]:
        """n exact samples of x (n, 2m) from p_beta (default beta = 1), in the interleaved order.

        x1 by inverse CDF on a grid of 2^16 + 1 points over the sublevel set of v holding all but
        1e-14 of p_beta(x1) (piecewise-linear CDF, exact trapezoid-normalised); x2 ~ N(0, 1/beta).
        """
        b = concrete_beta(beta)
        lo, hi = _level_box(b, _SAMPLE_TAIL)
        grid = np.linspace(lo, hi, _SAMPLE_GRID)
        dens = np.exp(-b * (_v(grid) - _V_MIN))
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]))])
        cdf /= cdf[-1]
        k_x, k_y = jax.random.split(key)
        u = jax.random.uniform(k_x, (n, self.n_wells), jnp.result_type(float))
        X = jnp.interp(u, jnp.asarray(cdf, u.dtype), jnp.asarray(grid, u.dtype))
        Y = jax.random.normal(k_y, (n, self.n_wells), u.dtype) / math.sqrt(b)
        return self.partition.merge(X, Y)
