"""The paper's two-dimensional double well: X = x1 (bimodal), Y = x2 (harmonic)."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float
from scipy import integrate

from coarseflow import checks
from coarseflow.errors import ConfigError
from coarseflow.partition import Partition
from coarseflow.targets.base import AbstractTarget, concrete_beta


def _v(x1):
    """The x1 part of the energy: 0.25 x1^4 - 3 x1^2 + x1 (works on numpy and JAX arrays)."""
    return 0.25 * x1**4 - 3.0 * x1**2 + x1


# Stationary points of v: roots of v'(x) = x^3 - 6x + 1. The smallest root is the deep (left)
# well, the middle one the barrier top, the largest the shallow (right) well.
_STATIONARY = np.sort(np.roots([1.0, 0.0, -6.0, 1.0]).real)
_V_MIN = float(_v(_STATIONARY[0]))


class DoubleWell(AbstractTarget):
    """u(x1, x2) = 0.25 x1^4 - 3 x1^2 + x1 + 0.5 x2^2, target beta = 1 (METHOD.md section 8).

    X = x1 (index 0), Y = x2 (index 1). The marginal p_beta(x1) ∝ exp(-beta v(x1)) with
    v(x1) = 0.25 x1^4 - 3 x1^2 + x1 has a deep left well (x1 ≈ -2.53) and a shallow right well
    (x1 ≈ 2.36); at beta = 1 the right well (x1 > 0) holds only about 0.835 % of the mass.
    Given X, Y is exactly Gaussian: p_beta(x2 | x1) = N(0, 1 / beta).

    **Support box.** ``x_bounds()`` is ``[-bound, bound]`` (default ``bound = 9``). Because v
    grows like x1^4 / 4, p_beta(x1) widens as beta falls. Mass of p_beta(x1) outside the box
    (computed by quadrature): for ``bound = 9`` it is < 1e-6 for every beta >= 0.0076 (2.4e-8 at
    beta = 1e-2, but 3.5 % at beta = 1e-3); for comparison ``bound = 5`` would hold
    1 - 1e-6 only for beta >= 0.12 and ``bound = 8`` for beta >= 0.0126. At beta = 1 the box
    loses nothing measurable. A tempering ladder that starts below beta ≈ 0.0076 needs a larger
    ``bound``.

    Exact references (NumPy/SciPy, concrete beta only): ``marginal_density``, ``well_mass``,
    ``log_partition``; JAX (jit/vmap/grad-safe, beta may be traced): ``energy``,
    ``conditional_gaussian``, ``log_marginal_unnormalized``, ``score``.
    """

    partition: Partition = eqx.field(static=True)
    bound: float = eqx.field(static=True)

    def __init__(self, bound: float = 9.0):
        self.partition = Partition(2, (0,), (1,))
        self.bound = bound

    def __check_init__(self):
        b = self.bound
        if not checks.is_number(b):
            raise ConfigError(f"double_well bound: expected a positive number, got {b!r}")
        if not (math.isfinite(float(b)) and float(b) > max(abs(_STATIONARY[0]), _STATIONARY[2])):
            raise ConfigError(
                "double_well bound: expected a finite number larger than both well positions "
                f"(> {abs(_STATIONARY[0]):.3f}), got {b!r}"
            )

    # ---- energy and JAX-side exact quantities -------------------------------------------------

    def energy(self, x: Float[Array, " 2"]) -> Float[Array, ""]:
        x = jnp.asarray(x)
        return _v(x[0]) + 0.5 * x[1] ** 2

    def x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = float(self.bound)
        return np.array([-b]), np.array([b])

    def conditional_gaussian(self, X: Float[Array, " 1"], beta) -> tuple[Array, Array]:
        """p_beta(x2 | x1) = N(0, 1/beta): mean (1,) zeros, std (1,) 1/sqrt(beta)."""
        X = jnp.asarray(X)
        return jnp.zeros_like(X), jnp.ones_like(X) / jnp.sqrt(beta)

    def log_marginal_unnormalized(
        self, X: Float[Array, "*batch 1"], beta=1.0
    ) -> Float[Array, "*batch"]:
        """-beta v(x1): log p_beta(x1) up to the constant -log Z_1(beta). Works on batches."""
        X = jnp.asarray(X)
        return -beta * _v(X[..., 0])

    def score(self, X: Float[Array, "*batch 1"], beta=1.0) -> Float[Array, "*batch 1"]:
        """Exact score of the coarse-grained marginal: d/dx1 log p_beta(x1) = -beta v'(x1)."""
        X = jnp.asarray(X)
        return -beta * (X**3 - 6.0 * X + 1.0)

    # ---- NumPy/SciPy references ----------------------------------------------------------------

    def _x1_integrals(self, beta: float) -> tuple[float, float]:
        """(∫_{-inf}^0, ∫_0^inf) of exp(-beta (v(x1) - v_min)) dx1, by adaptive quadrature."""
        # Truncate where the integrand is below exp(-800) (it underflows to 0 in float64):
        # v(x) - v_min >= 0.25 x^4 - 3 x^2 - |x| - v_min for all x.
        lim = 6.0
        while beta * (0.25 * lim**4 - 3.0 * lim**2 - lim - _V_MIN) < 800.0:
            lim *= 1.5

        def f(x):
            return math.exp(-beta * (_v(x) - _V_MIN))

        left_pts = [p for p in _STATIONARY if p < 0.0]
        right_pts = [p for p in _STATIONARY if p > 0.0]
        opts = dict(epsabs=0.0, epsrel=1e-12, limit=500)
        left = integrate.quad(f, -lim, 0.0, points=left_pts, **opts)[0]
        right = integrate.quad(f, 0.0, lim, points=right_pts, **opts)[0]
        return left, right

    def log_partition_x1(self, beta: float = 1.0) -> float:
        """log Z_1(beta) = log ∫ exp(-beta v(x1)) dx1 (the coarse-grained marginal's normaliser)."""
        b = concrete_beta(beta)
        left, right = self._x1_integrals(b)
        return -b * _V_MIN + math.log(left + right)

    def log_partition(self, beta: float = 1.0) -> float:
        """log Z(beta) = log ∫∫ exp(-beta u) dx1 dx2 = log Z_1(beta) + 0.5 log(2 pi / beta)."""
        b = concrete_beta(beta)
        return self.log_partition_x1(b) + 0.5 * math.log(2.0 * math.pi / b)

    def marginal_density(self, x1_grid: ArrayLike, beta: float = 1.0) -> np.ndarray:
        """Normalised p_beta(x1) evaluated at the points ``x1_grid`` (any shape; NumPy out)."""
        b = concrete_beta(beta)
        x = np.asarray(x1_grid, dtype=np.float64)
        return np.exp(-b * _v(x) - self.log_partition_x1(b))

    def well_mass(self, beta: float = 1.0) -> float:
        """Exact mass of p_beta with x1 > 0 (the shallow right well); ≈ 0.008349 at beta = 1."""
        b = concrete_beta(beta)
        left, right = self._x1_integrals(b)
        return right / (left + right)
