"""The reverse-KL surrogate whose gradient is the paper's estimator (METHOD.md section 4).

    grad_phi KL(q_phi(X) || p(X)) = E_z[ -grad_phi log|det df/dz| + F(X) . df(z)/dphi ],

with F(X) = E_{Y ~ p(Y|X)}[beta grad_X u(X, Y)] the mean force, estimated by MCMC on Y|X and held
fixed (stop-gradient) while differentiating. log p0(z) does not depend on phi, so it is left out.
"""

from __future__ import annotations

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
    ok = jnp.isfinite(log_q)
    centred = jax.lax.stop_gradient(weights - 1.0 / jnp.maximum(jnp.sum(ok), 1))
    return -jnp.sum(jnp.where(ok, centred * log_q, 0.0))
