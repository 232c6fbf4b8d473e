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


def forward_kl_loss(params, static, X: Float[Array, "S n_x"], weights: Float[Array, " S"]):
    """-sum_i w_i log q(X_i): an importance-weighted estimate of KL(p || q) up to a constant.

    ``X`` are held fixed (stop-gradient) and ``weights`` are the self-normalised importance
    weights of the all-atom samples (summing to 1). Its gradient pulls q toward the reweighted
    distribution, in particular every mode's weight toward its importance-weighted estimate.
    """
    flow = eqx.combine(params, static)
    log_q = flow.log_prob(jax.lax.stop_gradient(X))
    weights = jax.lax.stop_gradient(weights)
    use = (weights > 0) & jnp.isfinite(log_q)
    return -jnp.sum(jnp.where(use, weights * log_q, 0.0))
