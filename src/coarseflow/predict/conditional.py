"""q(Y|X) of the one-shot samples (METHOD.md section 7). For x = Phi(X, Y) with X ~ q(X) from
the flow, Y ~ q(Y|X), where q(Y|X) is

* ``exact``: the target's own p_beta(Y|X), when it is a known Gaussian (double well, mixture);
* ``laplace``: a Gaussian fit of p_beta(Y|X) at its mode: Y* minimises u(X, .) and the
  covariance is the inverse Hessian of beta u in Y (eigenvalues by absolute value, floored, so
  it stays positive).
* ``ais``: annealed importance sampling from that Gaussian to p_beta(Y|X), in the coordinates
  that whiten it (:mod:`coarseflow.samplers.annealing`, ``ais_steps`` MALA steps), ``ais_paths``
  independent paths per X that share the fit. Each path's weight w_j is an unbiased estimate of
  Z(X) = ∫ exp(-beta u(X, Y)) dY, and so is their mean w_AIS; Y is the end of path j, chosen
  with probability w_j / sum(w), and q(Y|X) the density this implies: log q(Y|X) =
  -beta u(X, Y) - log w_AIS. So the weights below are w_AIS / q(X), unbiased for Z(X) / q(X),
  and their variance falls as the paths lengthen and multiply; ``ais_steps = 0`` with one path
  is exactly ``laplace``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float

from coarseflow.errors import ConfigError
from coarseflow.model.gaussian import wrap
from coarseflow.predict.settings import PredictionSettings
from coarseflow.samplers.annealing import annealed_importance
from coarseflow.samplers.conditional import minimize_y
from coarseflow.targets.base import AbstractTarget


def laplace_fit(target: AbstractTarget, X, beta, settings: PredictionSettings):
    """The Gaussian fit of p_beta(xi|X) at its mode, for one X (n_x,), in the target's
    coordinates xi = ``target.y_internal(X, Y)`` (Y itself unless the target says otherwise).

    The density of xi is exp(-v(xi)), v = beta u(X, Y(xi)) - log|det dY/dxi|. Returns the mode
    xi* (n_y,) and the eigenvalues (n_y,) and eigenvectors (n_y, n_y) of the Hessian of v there.
    The mode is found by ``minimize_steps`` descent steps on u in Y (from ``y_init``), then
    ``newton_steps`` Newton steps on v in xi; a Newton step is taken only if it keeps v finite
    and does not raise it. The eigenvalues enter by absolute value, floored at 1e-6 of the
    largest: where the descent stopped short of the minimum (a negative curvature), flooring a
    negative eigenvalue instead would make a Newton step and the Gaussian's width along it huge.
    """
    y = minimize_y(
        target.energy_xy,
        X,
        beta,
        target.y_init(X),
        settings.minimize_steps,
        settings.minimize_lr,
        target.y_mass(),
    )

    def v(xi):
        Y, log_det = target.y_cartesian(X, xi)
        return beta * target.energy_xy(X, Y) - log_det

    hess_fn, grad_fn = jax.hessian(v), jax.grad(v)

    def floored_eigh(xi):
        lam, vec = jnp.linalg.eigh(hess_fn(xi))
        floor = 1e-6 * jnp.maximum(jnp.max(jnp.abs(lam)), 1.0)
        return jnp.maximum(jnp.abs(lam), floor), vec

    def newton(xi, _):
        lam, vec = floored_eigh(xi)
        xi_new = xi - vec @ ((vec.T @ grad_fn(xi)) / lam)
        v_new = v(xi_new)
        ok = jnp.isfinite(v_new) & (v_new <= v(xi))
        return jnp.where(ok, xi_new, xi), None

    xi, _ = jax.lax.scan(newton, target.y_internal(X, y), None, length=settings.newton_steps)
    lam, vec = floored_eigh(xi)
    return xi, lam, vec


def _whitened(target: AbstractTarget, X, beta, settings: PredictionSettings):
    """The Laplace fit as a map from whitened z (n_y,) (a standard normal under the fit) to
    (Y (n_y,), log|det dY/dz| + log y_symmetry_number).

    The log-det is -inf outside the support: a dihedral more than pi from the mode (so every Y
    has one xi), or Y outside the target's ``y_in_domain`` around the mode (one of each set of
    equivalent relabelings, e.g. methyl rotamers, which a path from one would otherwise reach
    only rarely, making the weights heavy-tailed).
    """
    xi_star, lam, vec = laplace_fit(target, X, beta, settings)
    Y_star, _ = target.y_cartesian(X, xi_star)
    scale = vec / jnp.sqrt(lam)
    periodic = jnp.asarray(target.y_periodic())
    # the domain holds one of the target's equivalent copies of each Y: it stands for all
    log_det_scale = -0.5 * jnp.sum(jnp.log(lam)) + math.log(target.y_symmetry_number())

    def to_y(z):
        xi = xi_star + scale @ z
        Y, log_det = target.y_cartesian(X, xi)
        inside = jnp.all(jnp.where(periodic, jnp.abs(xi - xi_star) < jnp.pi, True))
        inside = inside & target.y_in_domain(X, Y, Y_star)
        log_det = log_det + log_det_scale
        return Y, jnp.where(inside & ~jnp.isnan(log_det), log_det, -jnp.inf)

    return to_y


def conditional_laplace(target: AbstractTarget, X, beta, key, settings: PredictionSettings):
    """Y from the :func:`laplace_fit` (a Gaussian in xi), log q(Y|X) and NaN (no AIS), for one
    X (n_x,)."""
    to_y = _whitened(target, X, beta, settings)
    z = jr.normal(key, (target.partition.n_y,), dtype=X.dtype)
    Y, log_det = to_y(z)
    log_q = jnp.sum(-0.5 * z**2 - 0.5 * jnp.log(2 * jnp.pi)) - log_det
    return Y, log_q, jnp.asarray(jnp.nan, X.dtype)


def conditional_ais(target: AbstractTarget, X, beta, key, settings: PredictionSettings):
    """Y from ``ais_paths`` AIS paths from the :func:`laplace_fit` to p_beta(Y|X), for one X.

    In the whitened coordinates z of the fit, gamma(z) = exp(-beta u(X, Y(z))) |dY/dz|
    integrates to Z(X). Returns Y (n_y,), the end of path j drawn with probability w_j / sum(w),
    and the implied log q(Y|X) = -beta u(X, Y) - log mean(w), so that -beta u - log q(Y|X) is
    the log of the mean AIS weight. (Y, mean(w)) is properly weighted: E[mean(w) f(Y)] =
    sum_j E[w_j f(Y_j)] / M = ∫ gamma f. Third: the paths' mean MALA acceptance, by which to
    tune ``ais_step_size``.
    """
    to_y = _whitened(target, X, beta, settings)

    def log_gamma(z):
        Y, log_det = to_y(z)
        return -beta * target.energy_xy(X, Y) + log_det

    key_paths, key_pick = jr.split(key)
    out = jax.vmap(
        lambda k: annealed_importance(
            k, log_gamma, target.partition.n_y, settings.ais_steps, settings.ais_step_size, X.dtype
        )
    )(jr.split(key_paths, settings.ais_paths))
    log_z = jax.nn.logsumexp(out.log_weight) - math.log(settings.ais_paths)
    # every path at zero weight: any Y will do, its weight is zero
    pick = jr.categorical(key_pick, jnp.where(jnp.isfinite(log_z), out.log_weight, 0.0))
    Y, _ = to_y(out.z[pick])
    return Y, -beta * target.energy_xy(X, Y) - log_z, jnp.mean(out.acceptance)


def conditional_exact(target: AbstractTarget, X, beta, key):
    """Y from the target's own Gaussian p_beta(Y|X), log q(Y|X) and NaN (no AIS), for one X
    (n_x,)."""
    mean, std = target.conditional_gaussian(X, beta)
    eps = jr.normal(key, mean.shape, dtype=mean.dtype)
    log_q = jnp.sum(-0.5 * eps**2 - 0.5 * jnp.log(2 * jnp.pi) - jnp.log(std))
    return mean + std * eps, log_q, jnp.asarray(jnp.nan, mean.dtype)


def resolve_conditional(target: AbstractTarget, conditional: str) -> str:
    """The q(Y|X) that ``conditional`` means for ``target``: ``auto`` is ``exact`` where the
    target has an exact conditional, else ``ais``; ``exact`` without one is a ConfigError."""
    has_exact = target.conditional_gaussian(jnp.zeros(target.partition.n_x), 1.0) is not None
    if conditional == "auto":
        return "exact" if has_exact else "ais"
    if conditional == "exact" and not has_exact:
        raise ConfigError(
            f"[prediction] conditional = 'exact': {type(target).__name__} has no "
            "exact conditional; use 'ais' or 'laplace'"
        )
    return conditional


def sample_q_y(
    key, target, X: Float[Array, "S n_x"], beta, conditional: str, settings: PredictionSettings
):
    """(Y (S, n_y) ~ q(Y|X) for each row of X, log q(Y|X) (S,), AIS acceptance (S,), NaN
    unless ais); ``conditional``: exact, laplace or ais."""
    keys = jr.split(key, X.shape[0])
    if conditional == "exact":
        return jax.vmap(lambda x, k: conditional_exact(target, x, beta, k))(X, keys)
    one = {"laplace": conditional_laplace, "ais": conditional_ais}[conditional]
    return jax.vmap(lambda x, k: one(target, x, beta, k, settings))(X, keys)


def with_polish(learned, settings: PredictionSettings):
    """A learned conditional as prediction uses it: its mean polished by [prediction]
    polish_steps (None stays None)."""
    if learned is None or settings.polish_steps == 0:
        return learned
    return learned.polished(settings.polish_steps)


def sample_learned(key, target, X: Float[Array, "S n_x"], beta, learned):
    """(Y (S, n_y), log q(Y|X) (S,), NaN (S,)) from a learned conditional; samples outside its
    valid range get log q = +inf, i.e. weight zero (see :mod:`coarseflow.model.conditional`)."""
    draws = learned.sample_batch(key, target, X, beta)
    log_q = jnp.where(draws.valid, draws.log_q, jnp.inf)
    return draws.Y, log_q, jnp.full(X.shape[:1], jnp.nan, X.dtype)


def fit_to_laplace(conditional, target, X, beta, settings: PredictionSettings):
    """A learned conditional (:mod:`coarseflow.model.conditional`) with b and L set from the
    :func:`laplace_fit` of p_beta(Y|X) at each row of X (S, n_x).

    b is the mean offset of the fits' modes from xi_ref (periodic ones wrapped), L the Cholesky
    factor of the mean of their covariances times beta (so beta-free, as in the model). Rows
    whose fit is not finite are left out; if none is finite the conditional stays as it is.
    """
    beta = jnp.asarray(beta)

    def one(x):
        xi, lam, vec = laplace_fit(target, x, beta, settings)
        xi_ref = target.y_internal(x, target.y_init(x))
        cov = (vec / lam) @ vec.T * beta
        return xi - xi_ref, cov

    offsets, covs = jax.jit(jax.vmap(one))(X)
    periodic = np.asarray(conditional.periodic, bool)
    offsets = jnp.where(periodic, wrap(offsets), offsets)
    ok = jnp.all(jnp.isfinite(offsets), -1) & jnp.all(jnp.isfinite(covs), (-2, -1))
    if not bool(jnp.any(ok)):
        return conditional
    n_ok = jnp.sum(ok)
    loc = jnp.sum(jnp.where(ok[:, None], offsets, 0.0), 0) / n_ok
    cov = jnp.sum(jnp.where(ok[:, None, None], covs, 0.0), 0) / n_ok
    n = conditional.n_y
    cov = cov + 1e-9 * jnp.trace(cov) / n * jnp.eye(n)
    L = jnp.linalg.cholesky(cov)
    rows, cols = np.tril_indices(n, -1)
    return eqx.tree_at(
        lambda c: (c.loc, c.log_diag, c.lower),
        conditional,
        (loc, jnp.log(jnp.diag(L)), L[rows, cols]),
    )
