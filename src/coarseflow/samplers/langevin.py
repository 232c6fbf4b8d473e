"""The Langevin and Hamiltonian integrators of coarseflow, as pure one-step functions: MALA,
HMC and BAOAB.

Every sampler is built on these: the conditional chains (:mod:`~coarseflow.samplers.kernels`),
the reference's molecular dynamics (:mod:`~coarseflow.samplers.replica_exchange`) and annealed
importance sampling (:mod:`~coarseflow.samplers.annealing`, whose target changes at every
step). Each step is written for one configuration; callers vmap over chains and scan over
steps. What a caller computes together with the density or the force (energies, the gradient
with respect to X, forces in kJ/mol/nm) travels along as ``aux`` and is kept or undone with the
state, so nothing is evaluated twice.

* :func:`mala_step`: Metropolis-adjusted Langevin with a diagonal mass matrix. Written here
  rather than taken from ``blackjax.mala`` because blackjax's MALA has no mass matrix and keeps
  no ``aux``.
* :func:`hmc_step`: Hamiltonian Monte Carlo with a diagonal mass matrix on the same states
  (the chains' ``hmc`` kernel, and annealed importance sampling with several leapfrog steps
  per temperature); one leapfrog step is MALA exactly.
* :func:`baoab_step`: underdamped Langevin dynamics, B-A-O-A-B splitting (Leimkuhler and
  Matthews 2013). No Metropolis test: it samples exp(-U / k_B T) up to an O(dt^2) bias in
  configurational averages (exact for a harmonic potential).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class MALAState(NamedTuple):
    """z (d,); log_p (): log pi(z) up to a constant; grad (d,): d log pi / dz at z; aux: what
    the evaluation of pi returned beside them (any pytree)."""

    z: Array
    log_p: Array
    grad: Array
    aux: Any = ()


def _select(pred: Array, a, b):
    return jax.tree.map(lambda s, t: jnp.where(pred, s, t), a, b)


def mala_step(
    key: PRNGKeyArray,
    state: MALAState,
    evaluate: Callable[[Array], MALAState],
    step_size: float | Array,
    inv_mass: float | Float[Array, " d"] = 1.0,
) -> tuple[MALAState, Array]:
    """One Metropolis-adjusted Langevin step on pi, with mass matrix diag(1 / inv_mass).

    Proposal z' = z + (h^2 / 2) M^-1 grad log pi(z) + h M^-1/2 xi, h = ``step_size``,
    xi ~ N(0, I); accepted with the Metropolis-Hastings probability. ``evaluate(z)`` is the
    state at z; ``state`` must be ``evaluate(state.z)`` (a caller whose pi changes between steps
    passes the state under the new pi). A proposal whose log pi or gradient is not finite is
    rejected. Returns (the new state, the acceptance probability min(1, alpha) ()).
    """
    h = step_size
    sqrt_inv_mass = jnp.sqrt(inv_mass)
    # One random call per step (cheaper to compile): d proposal normals and one normal u whose
    # CDF Phi(u) is the uniform of the Metropolis test (log_ndtr(u) = log U).
    d = state.z.shape[0]
    draws = jax.random.normal(key, (d + 1,), state.z.dtype)
    noise, u = draws[:d], draws[d]

    def drift(s: MALAState) -> Array:
        return s.z + 0.5 * h * h * inv_mass * s.grad

    new = evaluate(drift(state) + h * sqrt_inv_mass * noise)
    back = (state.z - drift(new)) / (h * sqrt_inv_mass)
    log_alpha = new.log_p - state.log_p - 0.5 * jnp.sum(back**2) + 0.5 * jnp.sum(noise**2)
    finite = jnp.isfinite(new.log_p) & jnp.all(jnp.isfinite(new.grad)) & ~jnp.isnan(log_alpha)
    log_alpha = jnp.where(finite, log_alpha, -jnp.inf)
    accept = jax.scipy.special.log_ndtr(u) < log_alpha
    return _select(accept, new, state), jnp.exp(jnp.minimum(log_alpha, 0.0))


def hmc_step(
    key: PRNGKeyArray,
    state: MALAState,
    evaluate: Callable[[Array], MALAState],
    step_size: float | Array,
    n_leapfrog: int,
    inv_mass: float | Float[Array, " d"] = 1.0,
) -> tuple[MALAState, Array]:
    """One Hamiltonian Monte Carlo step on pi with mass matrix M = diag(1 / inv_mass): momentum
    p ~ N(0, M), ``n_leapfrog`` leapfrog steps of size h = ``step_size``, a Metropolis test on
    H = -log pi(z) + p M^-1 p / 2. ``evaluate`` and ``state`` as :func:`mala_step`'s; each
    leapfrog step costs one evaluation. A trajectory that meets a non-finite log pi or gradient
    is rejected. With one leapfrog step it is :func:`mala_step` exactly: the same proposal from
    the same key, the same test. Returns (the new state, min(1, alpha) ()).
    """
    h = step_size
    d = state.z.shape[0]
    draws = jax.random.normal(key, (d + 1,), state.z.dtype)  # as mala_step's: noise, then u
    p0, u = draws[:d] / jnp.sqrt(inv_mass), draws[d]

    def leapfrog(carry, _):
        s, p, finite = carry
        new = evaluate(s.z + h * inv_mass * p)
        finite = finite & jnp.isfinite(new.log_p) & jnp.all(jnp.isfinite(new.grad))
        return (new, p + h * new.grad, finite), None

    (new, p, finite), _ = jax.lax.scan(
        leapfrog, (state, p0 + 0.5 * h * state.grad, jnp.asarray(True)), None, length=n_leapfrog
    )
    p = p - 0.5 * h * new.grad  # the last momentum step is a half step
    kinetic = lambda p: 0.5 * jnp.sum(inv_mass * p**2)  # noqa: E731
    log_alpha = new.log_p - state.log_p - kinetic(p) + kinetic(p0)
    finite = finite & ~jnp.isnan(log_alpha)
    log_alpha = jnp.where(finite, log_alpha, -jnp.inf)
    accept = jax.scipy.special.log_ndtr(u) < log_alpha
    return _select(accept, new, state), jnp.exp(jnp.minimum(log_alpha, 0.0))


class BAOABState(NamedTuple):
    """x: positions (any shape); v: velocities (like x); energy (): U(x); a: the acceleration
    -grad U(x) / m (like x); aux: what the evaluation returned beside them (any pytree)."""

    x: Array
    v: Array
    energy: Array
    a: Array
    aux: Any = ()


def baoab_step(
    key: PRNGKeyArray,
    state: BAOABState,
    accelerate: Callable[[Array], tuple[Array, Array, Any]],
    *,
    dt: float | Array,
    friction: float | Array,
    sigma: float | Array,
) -> tuple[BAOABState, Array]:
    """One BAOAB step of dx = v dt, dv = a(x) dt - gamma v dt + sqrt(2 gamma) sigma dW.

    ``accelerate(x)`` -> (U(x) (), a(x) (like x), aux); ``sigma`` = sqrt(k_B T / m), the
    velocities' equilibrium std (broadcast against v); gamma = ``friction`` (1 / time), time step
    ``dt``. Half kick, half drift, exact Ornstein-Uhlenbeck velocity update, half drift, new
    force, half kick: one evaluation per step (the closing half kick's force is the next step's
    opening one). A step that lands on a non-finite energy, acceleration or velocity is undone
    and the velocities redrawn from N(0, sigma^2). Returns (the new state, whether the step was
    kept ()).
    """
    xi = jax.random.normal(key, (2,) + state.v.shape, state.v.dtype)
    c1 = jnp.exp(-friction * dt)
    c2 = jnp.sqrt(-jnp.expm1(-2.0 * friction * dt))  # sqrt(1 - c1^2), accurate at small gamma dt
    v = state.v + 0.5 * dt * state.a  # B
    x = state.x + 0.5 * dt * v  # A
    v = c1 * v + c2 * sigma * xi[0]  # O
    x = x + 0.5 * dt * v  # A
    energy, a, aux = accelerate(x)
    v = v + 0.5 * dt * a  # B
    ok = jnp.isfinite(energy) & jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(v))
    undone = state._replace(v=sigma * xi[1])
    return _select(ok, BAOABState(x, v, energy, a, aux), undone), ok
