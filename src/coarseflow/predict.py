"""One-shot all-atom samples and their importance weights (METHOD.md section 7).

x = Phi(X, Y) with X ~ q(X) from the flow and Y ~ q(Y|X), where q(Y|X) is

* ``exact``: the target's own p_beta(Y|X), when it is a known Gaussian (double well, mixture);
* ``laplace``: a Gaussian fit of p_beta(Y|X) at its mode: Y* minimises u(X, .) and the
  covariance is the inverse Hessian of beta u in Y (eigenvalues by absolute value, floored, so
  it stays positive).

The unnormalised log-weights log w = -beta u(x) - log q(X) - log q(Y|X) make self-normalised
estimates of <A>_beta unbiased as N grows; ESS = 1 / sum(w_norm^2); and log mean exp(log w)
estimates log Z(beta) = log ∫ exp(-beta u).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float

from coarseflow.errors import ConfigError
from coarseflow.samplers.conditional import minimize_y
from coarseflow.targets.base import AbstractTarget

_CONDITIONALS = ("auto", "exact", "laplace")


@dataclass(frozen=True)
class PredictionSettings:
    """``conditional``: auto (exact when the target has one, else laplace), exact or laplace."""

    n_samples: int = 10000
    conditional: str = "auto"
    minimize_steps: int = 200
    minimize_lr: float = 0.01
    newton_steps: int = 5
    batch_size: int = 1000

    def __post_init__(self):
        if self.conditional not in _CONDITIONALS:
            raise ConfigError(f"[prediction] conditional: expected one of {_CONDITIONALS}, "
                              f"got {self.conditional!r}")
        for name in ("n_samples", "batch_size"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[prediction] {name}: expected an integer > 0, "
                                  f"got {getattr(self, name)!r}")
        if self.minimize_steps < 0 or self.newton_steps < 0 or self.minimize_lr <= 0:
            raise ConfigError("[prediction] minimize_steps, newton_steps >= 0 and "
                              "minimize_lr > 0 are required")


class Samples(NamedTuple):
    """All arrays are numpy with leading axis N."""

    x: np.ndarray  # (N, n) every coordinate, in the target's own order
    X: np.ndarray  # (N, n_x)
    log_qX: np.ndarray  # (N,) log q(X) of the flow
    log_q: np.ndarray  # (N,) log q(X) + log q(Y|X)
    energy: np.ndarray  # (N,) reduced energy u(x) (beta = 1 units)
    log_weights: np.ndarray  # (N,) -beta u - log_q, unnormalised


def conditional_laplace(target: AbstractTarget, X, beta, key, settings: PredictionSettings):
    """Y ~ N(Y*, (beta H)^-1) and its log density, for one X (n_x,).

    Y* is the end of ``minimize_steps`` descent steps and ``newton_steps`` Newton steps; a
    Newton step is taken only if it keeps u finite and does not raise it. H's eigenvalues enter
    by absolute value, floored at 1e-6 of the largest: where the descent stopped short of the
    minimum (a negative curvature), flooring a negative eigenvalue instead would make a Newton
    step and the Gaussian's width along it huge (atoms tens of nm away).
    """
    y = minimize_y(target.energy_xy, X, beta, target.y_init(X), settings.minimize_steps,
                   settings.minimize_lr, target.y_mass())
    hess_fn = jax.hessian(lambda y_: beta * target.energy_xy(X, y_))
    grad_fn = jax.grad(lambda y_: beta * target.energy_xy(X, y_))

    def floored_eigh(y_):
        lam, vec = jnp.linalg.eigh(hess_fn(y_))
        floor = 1e-6 * jnp.maximum(jnp.max(jnp.abs(lam)), 1.0)
        return jnp.maximum(jnp.abs(lam), floor), vec

    def newton(y_, _):
        lam, vec = floored_eigh(y_)
        y_new = y_ - vec @ ((vec.T @ grad_fn(y_)) / lam)
        u_new = target.energy_xy(X, y_new)
        ok = jnp.isfinite(u_new) & (u_new <= target.energy_xy(X, y_))
        return jnp.where(ok, y_new, y_), None

    y, _ = jax.lax.scan(newton, y, None, length=settings.newton_steps)
    lam, vec = floored_eigh(y)
    eps = jr.normal(key, y.shape, dtype=y.dtype)
    Y = y + vec @ (eps / jnp.sqrt(lam))
    log_q = jnp.sum(-0.5 * eps**2 - 0.5 * jnp.log(2 * jnp.pi)) + 0.5 * jnp.sum(jnp.log(lam))
    return Y, log_q


def conditional_exact(target: AbstractTarget, X, beta, key):
    mean, std = target.conditional_gaussian(X, beta)
    eps = jr.normal(key, mean.shape, dtype=mean.dtype)
    log_q = jnp.sum(-0.5 * eps**2 - 0.5 * jnp.log(2 * jnp.pi) - jnp.log(std))
    return mean + std * eps, log_q


def resolve_conditional(target: AbstractTarget, conditional: str) -> str:
    has_exact = target.conditional_gaussian(jnp.zeros(target.partition.n_x), 1.0) is not None
    if conditional == "auto":
        return "exact" if has_exact else "laplace"
    if conditional == "exact" and not has_exact:
        raise ConfigError(f"[prediction] conditional = 'exact': {type(target).__name__} has no "
                          "exact conditional; use 'laplace'")
    return conditional


def sample_q_y(key, target, X: Float[Array, "S n_x"], beta, conditional: str,
               settings: PredictionSettings) -> tuple[Float[Array, "S n_y"], Float[Array, " S"]]:
    """Y ~ q(Y|X) for each row of X and log q(Y|X); ``conditional`` is 'exact' or 'laplace'."""
    keys = jr.split(key, X.shape[0])
    if conditional == "exact":
        return jax.vmap(lambda x, k: conditional_exact(target, x, beta, k))(X, keys)
    return jax.vmap(lambda x, k: conditional_laplace(target, x, beta, k, settings))(X, keys)


@eqx.filter_jit
def _batch(flow, target, key, beta, n: int, conditional: str, settings: PredictionSettings):
    X, log_qX = flow.sample_and_log_prob(jr.fold_in(key, 0), (n,))
    Y, log_qY = sample_q_y(jr.fold_in(key, 1), target, X, beta, conditional, settings)
    x = target.partition.merge(X, Y)
    u = jax.vmap(target.energy)(x)
    log_q = log_qX + log_qY
    return x, X, log_qX, log_q, u, -beta * u - log_q


def draw_samples(
    key,
    flow,
    target: AbstractTarget,
    beta: float,
    settings: PredictionSettings = PredictionSettings(),
    n: int | None = None,
) -> Samples:
    """N = ``n`` (default settings.n_samples) one-shot samples at ``beta`` with log-weights."""
    n = settings.n_samples if n is None else n
    conditional = resolve_conditional(target, settings.conditional)
    parts = []
    for i, start in enumerate(range(0, n, settings.batch_size)):
        m = min(settings.batch_size, n - start)
        out = _batch(flow, target, jr.fold_in(key, i), jnp.asarray(beta), m, conditional, settings)
        parts.append([np.asarray(a) for a in out])
    x, X, log_qX, log_q, u, log_w = (np.concatenate(p) for p in zip(*parts, strict=True))
    # a non-finite energy means zero weight, not a poisoned estimate
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    return Samples(x=x, X=X, log_qX=log_qX, log_q=log_q, energy=u, log_weights=log_w)


def log_partition_estimate(log_weights: Float[Array, " N"]) -> float:
    """log Z(beta) ≈ log mean exp(log w) (unbiased for Z, consistent for log Z)."""
    lw = np.asarray(log_weights, float)
    m = np.max(lw)
    return float(m + np.log(np.mean(np.exp(lw - m))))
