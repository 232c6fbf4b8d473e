"""Annealed importance sampling (Neal 2001) from a standard normal to an unnormalised density.

The path is geometric, log pi_t(z) = (1 - t) log N(z; 0, I) + t log gamma(z), with t_k = k / K
for k = 0 ... K. z_0 ~ N(0, I); at each k = 1 ... K the log-weight gains

    (t_k - t_{k-1}) * (log gamma(z_{k-1}) - log N(z_{k-1}; 0, I))

and z_k is one MALA step (identity preconditioner, step ``step_size``) that leaves pi_{t_k}
invariant. Then E[exp(log w)] = ∫ gamma exactly (for any K, any step size), and (z_K, w) is a
properly weighted sample of gamma / ∫ gamma: E[w f(z_K)] = ∫ gamma f. K = 0 is plain importance
sampling from N(0, I). The closer gamma is to a standard normal (``predict`` whitens Y|X by its
Laplace fit), the shorter the path can be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


class Annealed(NamedTuple):
    """z: the final state (d,); log_weight (): log of the AIS weight, an unbiased estimate of
    ∫ gamma in exp; acceptance (): mean MALA acceptance probability over the K steps."""

    z: Array
    log_weight: Array
    acceptance: Array


def _log_normal(z: Array) -> Array:
    return -0.5 * jnp.sum(z**2) - 0.5 * z.shape[0] * jnp.log(2.0 * jnp.pi)


def annealed_importance(
    key: PRNGKeyArray,
    log_gamma: Callable[[Array], Array],
    d: int,
    n_steps: int,
    step_size: float,
    dtype=jnp.float64,
) -> Annealed:
    """AIS from N(0, I_d) to ``log_gamma`` (one z (d,) -> scalar) in ``n_steps`` MALA steps.

    A non-finite log gamma or gradient at a proposal rejects it; at z_0 it makes the weight
    zero (log_weight = -inf).
    """
    key0, key_path = jax.random.split(key)
    z0 = jax.random.normal(key0, (d,), dtype)
    value_and_grad = jax.value_and_grad(log_gamma)

    def evaluate(z):
        lg, g = value_and_grad(z)
        ok = jnp.isfinite(lg) & jnp.all(jnp.isfinite(g))
        return jnp.where(ok, lg, -jnp.inf), jnp.where(ok, g, 0.0)

    lg0, g0 = evaluate(z0)
    if n_steps == 0:
        return Annealed(z0, lg0 - _log_normal(z0), jnp.asarray(1.0, dtype))
    h = step_size

    def log_pi(t, z, lg):
        return (1.0 - t) * _log_normal(z) + t * lg

    def grad_pi(t, z, g):
        return -(1.0 - t) * z + t * g

    # MALA written here rather than kernels.mala_kernel: the target changes with t at every
    # step, and the carry keeps log gamma and its gradient, so pi_t and its gradient at any t
    # cost nothing; a fixed-target kernel would re-evaluate gamma at each new t (twice the work).
    def body(carry, inputs):
        z, lg, g, log_w = carry
        t_prev, t, k = inputs
        log_w = log_w + (t - t_prev) * (lg - _log_normal(z))
        draws = jax.random.normal(k, (d + 1,), dtype)
        noise, u = draws[:d], draws[d]
        z_new = z + 0.5 * h * h * grad_pi(t, z, g) + h * noise
        lg_new, g_new = evaluate(z_new)
        back = (z - z_new - 0.5 * h * h * grad_pi(t, z_new, g_new)) / h
        log_alpha = (log_pi(t, z_new, lg_new) - log_pi(t, z, lg)
                     - 0.5 * jnp.sum(back**2) + 0.5 * jnp.sum(noise**2))
        log_alpha = jnp.where(jnp.isfinite(lg_new) & ~jnp.isnan(log_alpha), log_alpha, -jnp.inf)
        accept = jax.scipy.special.log_ndtr(u) < log_alpha
        z, lg, g = (jnp.where(accept, a, b) for a, b in ((z_new, z), (lg_new, lg), (g_new, g)))
        return (z, lg, g, log_w), jnp.exp(jnp.minimum(log_alpha, 0.0))

    t = jnp.linspace(0.0, 1.0, n_steps + 1, dtype=dtype)
    keys = jax.random.split(key_path, n_steps)
    init = (z0, lg0, g0, jnp.zeros((), dtype))
    (z, _, _, log_w), acc = jax.lax.scan(body, init, (t[:-1], t[1:], keys))
    # a start outside gamma's support has weight zero whatever the path did afterwards
    log_w = jnp.where(jnp.isfinite(lg0), log_w, -jnp.inf)
    return Annealed(z, log_w, jnp.mean(acc))

