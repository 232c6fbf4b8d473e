"""A learned q(Y|X)'s mean moved toward the mode of p_beta(Y|X) at one X: the polish of
:meth:`coarseflow.model.conditional.LearnedConditional.polished` ([prediction] polish_steps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def polish_mean(
    target, X, beta, mu: Float[Array, " n_y"], L: Float[Array, "n_y n_y"], steps: int
) -> Float[Array, " n_y"]:
    """mu (n_y,), a mean in the target's coordinates xi of Y, after ``steps`` steps toward the
    mode of p_beta(xi|X) at X (n_x,): on v(xi) = beta u(X, Y(xi)) - log|dY/dxi|, the step
    -L L^T grad v / beta (L the model's Cholesky factor before its 1 / sqrt(beta); Newton's
    step where the model's covariance is the inverse Hessian), taken if v falls, else halved
    for the next try.

    A deterministic function of X, so a Gaussian around it keeps its exact density; it repairs
    the mean where the network extrapolates (rare basins of q(X)). steps + 1 energy + force
    evaluations. Gradients pass it straight through (the shift is held constant): a sampler
    that moves X along a gradient (the refinement's MALA) stays exact through its Metropolis
    test, whatever the gradient, and needs no second derivatives of u.
    """

    def v_and_grad(xi):
        def v(xi):
            Y, log_det = target.y_cartesian(X, xi)
            return beta * target.energy_xy(X, Y) - log_det

        value, grad = jax.value_and_grad(v)(xi)
        ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        return jnp.where(ok, value, jnp.inf), jnp.where(ok, grad, 0.0)

    def step(carry, _):
        xi, value, grad, scale = carry
        new = xi - scale * (L @ (L.T @ grad)) / beta
        new_value, new_grad = v_and_grad(new)
        better = new_value <= value
        return (
            jnp.where(better, new, xi),
            jnp.where(better, new_value, value),
            jnp.where(better, new_grad, grad),
            jnp.where(better, scale, 0.5 * scale),
        ), None

    start = (mu, *v_and_grad(mu), jnp.asarray(1.0, mu.dtype))
    (xi, *_), _ = jax.lax.scan(step, jax.lax.stop_gradient(start), None, length=steps)
    return mu + jax.lax.stop_gradient(xi - mu)
