"""Annealed importance sampling (Neal 2001) from a normalised base density to an unnormalised one.

The path is geometric, log pi_t(z) = (1 - t) log q0(z) + t log gamma(z), with t_k = k / K for
k = 0 ... K. z_0 ~ q0; at each k = 1 ... K the log-weight gains

    (t_k - t_{k-1}) * (log gamma(z_{k-1}) - log q0(z_{k-1}))

and z_k is one MALA step (:func:`coarseflow.samplers.langevin.mala_step`, identity mass
matrix, step ``step_size``) that leaves pi_{t_k} invariant, or with ``n_leapfrog`` L > 1 one
HMC step of L leapfrog steps (:func:`coarseflow.samplers.langevin.hmc_step`), which moves
further per evaluation. Then E[exp(log w)] = ∫ gamma
exactly (for any K, any step size), and (z_K, w) is a properly weighted sample of
gamma / ∫ gamma: E[w f(z_K)] = ∫ gamma f. K = 0 is plain importance sampling from q0.
:func:`annealed_importance` starts from N(0, I) (``predict`` whitens Y|X by its Laplace fit, so
that gamma is close to it); :func:`anneal` from any q0 with a log-density that autodiff can
differentiate (``fab`` starts from the flow's own base).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from coarseflow.samplers.langevin import MALAState, hmc_step, mala_step


class Annealed(NamedTuple):
    """z: the final state (d,); log_weight (): log of the AIS weight, an unbiased estimate of
    ∫ gamma in exp; acceptance (): mean MALA acceptance probability over the K steps; aux:
    what ``log_gamma`` returned beside its value at z_0 (``()`` for :func:`annealed_importance`).
    """

    z: Array
    log_weight: Array
    acceptance: Array
    aux: object = ()


def _log_normal(z: Array) -> Array:
    return -0.5 * jnp.sum(z**2) - 0.5 * z.shape[0] * jnp.log(2.0 * jnp.pi)


def annealed_importance(
    key: PRNGKeyArray,
    log_gamma: Callable[[Array], Array],
    d: int,
    n_steps: int,
    step_size: float,
    dtype=jnp.float64,
    n_leapfrog: int = 1,
) -> Annealed:
    """AIS from N(0, I_d) to ``log_gamma`` (one z (d,) -> scalar) in ``n_steps`` MALA steps
    (or HMC steps of ``n_leapfrog`` leapfrog steps, as :func:`anneal`).

    A non-finite log gamma or gradient at a proposal rejects it; at z_0 it makes the weight
    zero (log_weight = -inf).
    """
    key0, key_path = jax.random.split(key)
    z0 = jax.random.normal(key0, (d,), dtype)
    return anneal(
        key_path, _log_normal, lambda z: (log_gamma(z), ()), z0, n_steps, step_size, n_leapfrog
    )


def anneal(
    key: PRNGKeyArray,
    log_base: Callable[[Array], Array],
    log_gamma: Callable[[Array], tuple[Array, object]],
    z0: Array,
    n_steps: int,
    step_size: float,
    n_leapfrog: int = 1,
) -> Annealed:
    """AIS from the base q0 (``log_base``: normalised, z (d,) -> scalar) to ``log_gamma``
    (z -> (value, aux)), starting at z0 (d,) ~ q0, in ``n_steps`` MALA steps (``n_leapfrog``
    = 1) or HMC steps of ``n_leapfrog`` leapfrog steps: n_steps * n_leapfrog + 1 evaluations.

    A proposal where log q0, log gamma or a gradient is not finite is rejected; a start where
    log gamma is not finite has weight zero (log_weight = -inf). ``aux`` at z0 is returned.
    """
    dtype = z0.dtype

    def value_and_grad(z):
        (lg, aux), g = jax.value_and_grad(log_gamma, has_aux=True)(z)
        lb, gb = jax.value_and_grad(log_base)(z)
        return lg, lb, g, gb, aux

    def evaluate(z):
        lg, lb, g, gb, _ = value_and_grad(z)
        ok = (
            jnp.isfinite(lg)
            & jnp.isfinite(lb)
            & jnp.all(jnp.isfinite(g))
            & jnp.all(jnp.isfinite(gb))
        )
        return (
            jnp.where(ok, lg, -jnp.inf),
            jnp.where(ok, lb, -jnp.inf),
            jnp.where(ok, g, 0.0),
            jnp.where(ok, gb, 0.0),
        )

    lg0, lb0, g0, gb0, aux0 = value_and_grad(z0)
    ok0 = jnp.isfinite(lg0) & jnp.all(jnp.isfinite(g0))
    lg0, g0 = jnp.where(ok0, lg0, -jnp.inf), jnp.where(ok0, g0, 0.0)
    if n_steps == 0:
        return Annealed(z0, lg0 - lb0, jnp.asarray(1.0, dtype), aux0)

    def at(t, z, lg, lb, g, gb) -> MALAState:
        """The state under pi_t, log gamma and log q0 and their gradients carried in aux: pi_t
        and its gradient at any t cost no evaluation."""
        return MALAState(z, (1.0 - t) * lb + t * lg, (1.0 - t) * gb + t * g, (lg, lb, g, gb))

    def body(carry, inputs):
        z, lg, lb, g, gb, log_w = carry
        t_prev, t, k = inputs
        log_w = log_w + (t - t_prev) * (lg - lb)
        state = at(t, z, lg, lb, g, gb)
        under_t = lambda z: at(t, z, *evaluate(z))  # noqa: E731
        if n_leapfrog == 1:
            state, p_accept = mala_step(k, state, under_t, step_size)
        else:
            state, p_accept = hmc_step(k, state, under_t, step_size, n_leapfrog)
        return (state.z, *state.aux, log_w), p_accept

    t = jnp.linspace(0.0, 1.0, n_steps + 1, dtype=dtype)
    keys = jax.random.split(key, n_steps)
    init = (z0, lg0, lb0, g0, gb0, jnp.zeros((), dtype))
    (z, _, _, _, _, log_w), acc = jax.lax.scan(body, init, (t[:-1], t[1:], keys))
    # a start outside gamma's support has weight zero whatever the path did afterwards
    log_w = jnp.where(jnp.isfinite(lg0), log_w, -jnp.inf)
    return Annealed(z, log_w, jnp.mean(acc), aux0)
