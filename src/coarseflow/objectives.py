"""The reverse-KL surrogates whose gradients are the training estimators (METHOD.md section 4).

    grad_phi KL(q_phi(X) || p(X)) = E_z[ -grad_phi log|det df/dz| + F(X) . df(z)/dphi ],

with F(X) = E_{Y ~ p(Y|X)}[beta grad_X u(X, Y)] the mean force, estimated by MCMC on Y|X and held
fixed (stop-gradient) while differentiating. log p0(z) does not depend on phi, so it is left out.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from coarseflow.model.flow import sample_with_log_det


def surrogate_loss(
    params, static, z: Float[Array, "S n_x"], force: Float[Array, "S n_x"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(surrogate value, number of samples used). Samples whose force is not finite are left out.

    Only the gradient with respect to ``params`` is meaningful; the value is logged as a trend.
    """
    flow = eqx.combine(params, static)
    X, log_det = sample_with_log_det(flow, z)
    ok = jnp.all(jnp.isfinite(force), axis=-1)
    force = jnp.where(ok[:, None], jax.lax.stop_gradient(force), 0.0)
    per_sample = -log_det + jnp.sum(force * X, axis=-1)
    n_ok = jnp.sum(ok)
    return jnp.sum(jnp.where(ok, per_sample, 0.0)) / jnp.maximum(n_ok, 1), n_ok


def clip_forces(force: Float[Array, "S n_x"], factor: float) -> Float[Array, "S n_x"]:
    """Each sample's force scaled down to at most ``factor`` x the batch's median force norm.

    A sample in a steric clash (reduced energy ~1e18, as a flow that starts wide proposes) has
    a force ~1e10 times the others'. Unclipped, it alone sets the update's direction, the
    gradient skip/clip of :mod:`coarseflow.optim` then skips or shrinks that update, and the
    rest of the batch teaches nothing. Clipped, it still pushes q out of the clash, with the
    weight of a large force. Only forces beyond ``factor`` x the median change, so for a
    well-behaved target (and factor >> 1) the estimator is unchanged. Non-finite forces pass
    through (``surrogate_loss`` drops them).
    """
    norm = jnp.linalg.norm(force, axis=-1)
    finite = jnp.isfinite(norm)
    cap = factor * jnp.nanmedian(jnp.where(finite, norm, jnp.nan))
    scale = jnp.where(finite & (norm > cap), cap / jnp.where(finite, norm, 1.0), 1.0)
    return force * scale[:, None]


def forward_kl_loss(params, static, X: Float[Array, "S n_x"], weights: Float[Array, " S"]):
    """-sum_i (w_i - 1/S) log q(X_i): the gradient of KL(p || q), importance-weighted.

    ``X`` (S, n_x) are q's own samples, held fixed, and ``weights`` (S,) their self-normalised
    importance weights (summing to 1). -sum_i w_i grad log q(X_i) estimates grad KL(p || q);
    subtracting (1/S) sum_i grad log q(X_i), whose expectation under q is zero, leaves that
    expectation and removes the noise of q's own score: the gradient is driven by how far the
    weights are from uniform, i.e. by where q and p differ (mode weights above all).
    """
    flow = eqx.combine(params, static)
    log_q = flow.log_prob(jax.lax.stop_gradient(X))
    return _centred_forward(log_q, weights)


def _centred_forward(log_q: Float[Array, " S"], weights: Float[Array, " S"]):
    """-sum_i (w_i - 1/S_ok) log q_i over the finite log q_i, the weights held fixed."""
    ok = jnp.isfinite(log_q)
    centred = jax.lax.stop_gradient(weights - 1.0 / jnp.maximum(jnp.sum(ok), 1))
    return -jnp.sum(jnp.where(ok, centred * log_q, 0.0))


class JointTerms(NamedTuple):
    """Per-sample quantities of a batch drawn from q(X) q(Y|X), all (S,) unless noted.

    ``surrogate``: the term whose gradient is the estimator; ``log_weights``: -beta u - log q,
    -inf where not usable; ``ok``: finite and valid; ``u``: reduced energy; ``n_evals``: energy +
    gradient evaluations made (one per sample); ``X`` (S, n_x), ``Y`` (S, n_y): the samples.
    """

    X: Array
    Y: Array
    surrogate: Array
    log_weights: Array
    ok: Array
    u: Array
    n_evals: Array


def _energy_forces(target, X, Y, beta, force_clip: float):
    """u (S,), and beta grad_X u (S, n_x), beta grad_Y u (S, n_y) held fixed, jointly clipped
    per sample by :func:`clip_forces` (a clash cannot set the update)."""
    X, Y = jax.lax.stop_gradient(X), jax.lax.stop_gradient(Y)
    u, (gx, gy) = jax.vmap(jax.value_and_grad(target.energy_xy, argnums=(0, 1)))(X, Y)
    g = clip_forces(beta * jnp.concatenate([gx, gy], axis=-1), force_clip)
    return u, g[:, : X.shape[-1]], g[:, X.shape[-1] :]


def masked_mean(values, ok):
    return jnp.sum(jnp.where(ok, values, 0.0)) / jnp.maximum(jnp.sum(ok), 1)


def joint_terms(
    flow, conditional, key, target, z: Float[Array, "S n_x"], beta, force_clip: float
) -> JointTerms:
    """The fully reparameterised reverse KL of q(X) q(Y|X) against p_beta (no chains).

    X = f(z), Y ~ q(Y|X) reparameterised; the gradient of log q(X) + log q(Y|X) + beta u(X, Y)
    is autodiff's, with beta grad u entered as a fixed (clipped) force dotted into (X, Y), so
    that it equals the gradient of the joint KL where nothing is clipped.
    """
    X, log_det = sample_with_log_det(flow, z)
    log_qX = flow.base_dist.log_prob(z) - log_det
    draws = conditional.sample_batch(key, target, X, beta)
    u, gx, gy = _energy_forces(target, X, draws.Y, beta, force_clip)
    log_q = log_qX + draws.log_q
    ok = (
        draws.valid
        & jnp.isfinite(log_q)
        & jnp.isfinite(u)
        & jnp.all(jnp.isfinite(gx), -1)
        & jnp.all(jnp.isfinite(gy), -1)
    )
    surrogate = log_q + jnp.sum(gx * X, -1) + jnp.sum(gy * draws.Y, -1)
    log_w = jnp.where(ok, jax.lax.stop_gradient(-beta * u - log_q), -jnp.inf)
    return JointTerms(X, draws.Y, surrogate, log_w, ok, u, jnp.asarray(z.shape[0]))


def conditional_terms(conditional, key, target, X, beta, force_clip: float) -> JointTerms:
    """The conditional reverse KL E_{q(X)} KL(q(Y|X) || p_beta(Y|X)) at fixed X (S, n_x): the
    ``hybrid`` objective's part for q(Y|X). log q(X) is not part of it (surrogate, log_weights
    leave it out)."""
    X = jax.lax.stop_gradient(X)
    draws = conditional.sample_batch(key, target, X, beta)
    u, _, gy = _energy_forces(target, X, draws.Y, beta, force_clip)
    ok = draws.valid & jnp.isfinite(draws.log_q) & jnp.isfinite(u) & jnp.all(jnp.isfinite(gy), -1)
    surrogate = draws.log_q + jnp.sum(gy * draws.Y, -1)
    log_w = jnp.where(ok, jax.lax.stop_gradient(-beta * u - draws.log_q), -jnp.inf)
    return JointTerms(X, draws.Y, surrogate, log_w, ok, u, jnp.asarray(X.shape[0]))


def joint_forward_kl_loss(flow, conditional, target, X, Y, beta, weights):
    """-sum_i (w_i - 1/S) [log q(X_i) + log q(Y_i|X_i)]: :func:`forward_kl_loss` on the joint,
    with the learned conditional's exact density; samples (S, .) and weights (S,) held fixed."""
    X, Y = jax.lax.stop_gradient(X), jax.lax.stop_gradient(Y)
    log_q = flow.log_prob(X) + jax.vmap(lambda x, y: conditional.log_prob(target, x, beta, y))(X, Y)
    return _centred_forward(log_q, weights)
