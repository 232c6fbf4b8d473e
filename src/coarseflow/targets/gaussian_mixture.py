"""The paper's Gaussian-mixture test system with a linear-Gaussian fast part (METHOD.md §8)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray
from scipy import special, stats

from coarseflow import checks
from coarseflow.errors import ConfigError
from coarseflow.partition import Partition
from coarseflow.targets.base import AbstractTarget, concrete_beta

# The box of x_bounds() holds at least 1 - _BOX_TAIL of p_beta(X) for every beta in
# [support_beta, 1] (rigorous bound, see GaussianMixture.box_mass_lost_bound).
_BOX_TAIL = 1e-6


MAX_DIMENSION = 10_000  # n_x, n_y, n_components: a test problem, held in memory whole


def _positive_int(name: str, value) -> int:
    return checks.integer(f"gaussian_mixture {name}", value, 1, MAX_DIMENSION)


def _positive_float(name: str, value) -> None:
    checks.number(f"gaussian_mixture {name}", value, 0.0)


class GaussianMixture(AbstractTarget):
    """p(X) = sum_k w_k N(X | m_k, width^2 I),  p(Y | X) = N(Y | B X, cond_width^2 I).

    u(x) = -log p(X) - log p(Y | X) with X = x[:n_x], Y = x[n_x:]; both densities are normalised,
    so Z(1) = 1. The means m_k ~ Uniform[-1, 1]^{n_x} (rows of ``means``, shape
    (n_components, n_x)) and B ~ N(0, 1)^{n_y x n_x} are drawn, in that order, from
    ``numpy.random.default_rng(seed)``. The paper's settings: ``GaussianMixture(n_x=2)`` and
    ``GaussianMixture(n_x=10)`` (n_y = n_x, three equal components, widths 0.1).

    Tempering: p_beta(x) ∝ p(X)^beta p(Y|X)^beta. The conditional's normaliser does not depend on
    X, so p_beta(Y | X) = N(B X, cond_width^2 / beta I) exactly and p_beta(X) ∝ p(X)^beta, whose
    score is beta * grad log p(X). Every JAX method takes beta as a (possibly traced) array; no
    Python branch looks at its value.

    **Support box.** ``x_bounds()`` is, per coordinate, [min_k m_k - c s, max_k m_k + c s] with
    s = width / sqrt(support_beta) (the width of each component of p(X)^beta at the smallest beta
    one intends to train at, default 1e-2) and c chosen so that a rigorous bound on the mass of
    p_beta(X) outside the box is <= 1e-6 for every beta in [support_beta, 1] (c ≈ 5.2 for
    n_x = 2, ≈ 5.5 for n_x = 10; the box is then about [-6.2, 6.2] resp. [-6.5, 6.5] with the
    defaults). A larger ``support_beta`` gives a tighter box for ladders that start higher.

    Exact references: ``log_marginal`` (log p(X) at beta = 1), ``score`` (any beta),
    ``conditional_gaussian``, ``sample`` (beta = 1), ``component_of``, ``component_weights``,
    ``log_partition`` (0 at beta = 1; by quadrature for beta != 1 when n_x <= 2).
    """

    partition: Partition = eqx.field(static=True)
    n_x: int = eqx.field(static=True)
    n_y: int = eqx.field(static=True)
    n_components: int = eqx.field(static=True)
    width: float = eqx.field(static=True)
    cond_width: float = eqx.field(static=True)
    seed: int = eqx.field(static=True)
    support_beta: float = eqx.field(static=True)
    weights: Float[Array, " n_components"]
    means: Float[Array, "n_components n_x"]
    B: Float[Array, "n_y n_x"]

    def __init__(
        self,
        n_x: int = 2,
        n_y: int | None = None,
        n_components: int = 3,
        weights=None,
        width: float = 0.1,
        cond_width: float = 0.1,
        seed: int = 0,
        support_beta: float = 1e-2,
    ):
        # Dimensions and seed are needed to draw the parameters, so they are checked here;
        # the remaining settings are checked in __check_init__.
        self.n_x = _positive_int("n_x", n_x)
        self.n_y = self.n_x if n_y is None else _positive_int("n_y", n_y)
        self.n_components = _positive_int("n_components", n_components)
        self.seed = checks.seed("gaussian_mixture seed", seed)
        self.width = width
        self.cond_width = cond_width
        self.support_beta = support_beta
        self.partition = Partition.from_x(self.n_x + self.n_y, range(self.n_x))

        if weights is None:
            w = np.full(self.n_components, 1.0 / self.n_components)
        else:
            try:
                w = np.asarray(weights, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ConfigError(
                    f"gaussian_mixture weights: expected {self.n_components} positive numbers, "
                    f"got {weights!r}"
                ) from err
            if w.shape != (self.n_components,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
                raise ConfigError(
                    f"gaussian_mixture weights: expected {self.n_components} positive finite "
                    f"numbers (one per component; they are normalised to sum 1), got {weights!r}"
                )
            w = w / w.sum()
        rng = np.random.default_rng(self.seed)
        means = rng.uniform(-1.0, 1.0, size=(self.n_components, self.n_x))
        B = rng.normal(size=(self.n_y, self.n_x))
        self.weights = jnp.asarray(w)
        self.means = jnp.asarray(means)
        self.B = jnp.asarray(B)

    def __check_init__(self):
        _positive_float("width", self.width)
        _positive_float("cond_width", self.cond_width)
        _positive_float("support_beta", self.support_beta)
        if float(self.support_beta) > 1.0:
            raise ConfigError(
                "gaussian_mixture support_beta: expected a number in (0, 1], "
                f"got {self.support_beta!r}"
            )

    # ---- densities (JAX; single points or batches over leading axes) ---------------------------

    def _log_components(self, X: Float[Array, "*batch n_x"]) -> Float[Array, "*batch n_components"]:
        """log w_k + log N(X | m_k, width^2 I) for every k."""
        X = jnp.asarray(X)
        s = self.width
        d2 = jnp.sum((X[..., None, :] - self.means) ** 2, axis=-1)
        log_norm = -self.n_x * (math.log(s) + 0.5 * math.log(2.0 * math.pi))
        return jnp.log(self.weights) + log_norm - 0.5 * d2 / s**2

    def log_marginal(self, X: Float[Array, "*batch n_x"]) -> Float[Array, "*batch"]:
        """log p(X), the exact normalised coarse-grained marginal at beta = 1."""
        return jax.nn.logsumexp(self._log_components(X), axis=-1)

    def log_conditional(self, X: Float[Array, " n_x"], Y: Float[Array, " n_y"]) -> Float[Array, ""]:
        """log p(Y | X) = log N(Y | B X, cond_width^2 I) at beta = 1."""
        s = self.cond_width
        r = (jnp.asarray(Y) - self.B @ jnp.asarray(X)) / s
        return -0.5 * jnp.sum(r**2) - self.n_y * (math.log(s) + 0.5 * math.log(2.0 * math.pi))

    def energy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        X, Y = self.partition.split(x)
        return -self.log_marginal(X) - self.log_conditional(X, Y)

    def score(self, X: Float[Array, "*batch n_x"], beta=1.0) -> Float[Array, "*batch n_x"]:
        """grad_X log p_beta(X) = beta * sum_k r_k(X) (m_k - X) / width^2 (r: responsibilities)."""
        X = jnp.asarray(X)
        r = jax.nn.softmax(self._log_components(X), axis=-1)
        grad = (r @ self.means - X) / self.width**2
        return beta * grad

    def conditional_gaussian(self, X: Float[Array, " n_x"], beta) -> tuple[Array, Array]:
        """p_beta(Y | X) = N(B X, cond_width^2 / beta I): (mean (n_y,), std (n_y,))."""
        mean = self.B @ jnp.asarray(X)
        std = self.cond_width / jnp.sqrt(beta) * jnp.ones_like(mean)
        return mean, std

    def y_init(self, X: Float[Array, " n_x"]) -> Float[Array, " n_y"]:
        """The conditional mean B X (the exact minimiser of u over Y)."""
        return self.B @ jnp.asarray(X)

    # ---- mixture structure ----------------------------------------------------------------------

    @property
    def component_weights(self) -> Float[Array, " n_components"]:
        """The exact mixture weights w_k (sum 1)."""
        return self.weights

    def component_of(self, X: Float[Array, "*batch n_x"]) -> Int[Array, "*batch"]:
        """Index of the most responsible component, argmax_k w_k N(X | m_k, width^2 I)."""
        return jnp.argmax(self._log_components(X), axis=-1)

    @eqx.filter_jit
    def sample(
        self, key: PRNGKeyArray, n: int, *, return_components: bool = False
    ) -> Float[Array, "n n"] | tuple[Float[Array, "n n"], Int[Array, " n"]]:
        """n exact samples of the full x (n, n_x + n_y) at beta = 1 (and their components).

        Compiled once per (n, return_components) with ``eqx.filter_jit``.
        """
        k_comp, k_x, k_y = jax.random.split(key, 3)
        comp = jax.random.choice(k_comp, self.n_components, (n,), p=self.weights)
        X = self.means[comp] + self.width * jax.random.normal(k_x, (n, self.n_x), self.means.dtype)
        Y = X @ self.B.T + self.cond_width * jax.random.normal(k_y, (n, self.n_y), self.B.dtype)
        x = self.partition.merge(X, Y)
        return (x, comp) if return_components else x

    # ---- support box and partition function (NumPy references; concrete values only) ----------

    def _box_sigmas(self) -> float:
        w_max = float(np.max(np.asarray(self.weights)))
        tail = _BOX_TAIL * w_max ** float(self.support_beta) / (2 * self.n_x * self.n_components)
        return float(stats.norm.isf(tail))

    def x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        m = np.asarray(self.means)
        margin = self._box_sigmas() * float(self.width) / math.sqrt(float(self.support_beta))
        return m.min(axis=0) - margin, m.max(axis=0) + margin

    def box_mass_lost_bound(self, beta: float) -> float:
        """Rigorous upper bound on the mass of p_beta(X) outside ``x_bounds()``, for 0 < beta <= 1.

        Since p(X) <= max_k N_k(X) and Z_beta >= w_max^beta ∫ N_k^beta, the lost mass is at most
        w_max^(-beta) sum_k P(N(m_k, width^2 / beta I) outside the box).
        """
        b = concrete_beta(beta)
        if b > 1.0:
            raise ValueError(f"beta: the bound holds for 0 < beta <= 1, got {beta!r}")
        lo, hi = self.x_bounds()
        m = np.asarray(self.means)
        s = float(self.width) / math.sqrt(b)
        tails = stats.norm.cdf((lo - m) / s) + stats.norm.sf((hi - m) / s)
        w_max = float(np.max(np.asarray(self.weights)))
        return float(min(1.0, w_max ** (-b) * np.sum(tails)))

    def log_partition(self, beta: float = 1.0) -> float:
        """log Z(beta) = log ∫ exp(-beta u(x)) dx.

        Exactly 0 at beta = 1 (u is minus the log of normalised densities). For beta != 1,
        log Z = log ∫ p(X)^beta dX + n_y [(1 - beta) / 2 log(2 pi cond_width^2) - 1/2 log beta];
        the X integral has no closed form and is computed by trapezoidal quadrature (spectrally
        accurate for these smooth, rapidly decaying integrands) when n_x <= 2. For n_x > 2 and
        beta != 1 a ValueError is raised. NumPy; not for use under jit.
        """
        b = concrete_beta(beta)
        if b == 1.0:
            return 0.0
        if self.n_x > 2:
            raise ValueError(
                f"log_partition: exact only at beta = 1 when n_x > 2 (n_x = {self.n_x}, "
                f"beta = {b}); estimate it by importance sampling instead"
            )
        s_c = float(self.cond_width)
        log_zy = self.n_y * (0.5 * (1.0 - b) * math.log(2.0 * math.pi * s_c**2) - 0.5 * math.log(b))
        return self._log_x_integral(b) + log_zy

    def _log_x_integral(self, beta: float) -> float:
        """log ∫ p(X)^beta dX: trapezoid rule, step s/6, over the means ± 12 s; s = width/√beta."""
        m = np.asarray(self.means, dtype=np.float64)
        w = np.asarray(self.weights, dtype=np.float64)
        s = float(self.width)
        s_b = s / math.sqrt(beta)
        h = s_b / 6.0
        axes = [
            np.arange(m[:, d].min() - 12 * s_b, m[:, d].max() + 12 * s_b + h, h)
            for d in range(self.n_x)
        ]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, self.n_x)
        log_norm = -self.n_x * (math.log(s) + 0.5 * math.log(2.0 * math.pi))
        d2 = np.sum((pts[:, None, :] - m[None]) ** 2, axis=-1)
        log_p = special.logsumexp(np.log(w) + log_norm - 0.5 * d2 / s**2, axis=-1)
        return float(special.logsumexp(beta * log_p) + self.n_x * math.log(h))
