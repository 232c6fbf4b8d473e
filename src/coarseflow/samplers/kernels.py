"""MCMC kernels on the fast variables Y for a fixed X, as pure ``init`` / ``step`` functions.

Every kernel targets the conditional density

    p(Y | X) ∝ exp(-beta u(X, Y))

of a reduced energy ``u`` (dimensionless, U / k_B T at the target temperature). Here the chains
run at k_B T = 1 in the potential ``beta * u`` (so ``beta`` may be traced). Masses ``m`` (one per
coordinate of Y, so ``inv_mass`` is ``(n_y,)``) precondition all three kernels the same way: one
step moves coordinate ``i`` by about ``step_size / sqrt(m_i)``, so heavy (or stiff, if the masses
follow stiffness) coordinates take smaller steps. :mod:`coarseflow.samplers.conditional` passes
``step_size / sqrt(beta)`` (and ``friction * sqrt(beta)``) so that its settings are those of the
dynamics of u at k_B T = 1 / beta.

* ``mala``: Metropolis-adjusted Langevin with a diagonal mass matrix. Written here rather than
  taken from ``blackjax.mala`` because blackjax's MALA has no mass matrix, and because one joint
  ``value_and_grad`` over (X, Y) gives d u / d X at every state for free, so the mean force costs
  no extra energy evaluation.
* ``hmc``: ``blackjax.hmc`` (velocity Verlet, ``hmc_leapfrog`` steps, Metropolis test) with
  ``inverse_mass_matrix = 1 / m`` and the step jittered by +-20% per proposal. d u / d X is
  evaluated separately, at kept states only.
* ``baoab``: underdamped Langevin dynamics, B-A-O-A-B splitting (Leimkuhler and Matthews 2013),
  time step ``step_size``, friction ``friction`` (1 / time). No Metropolis test: it samples
  p(Y | X) up to an O(dt^2) bias in configurational averages (exact for a harmonic potential).
  A step that lands on a non-finite energy or force is undone and the momentum redrawn.

A kernel is a :class:`Kernel` of four pure functions; states are NamedTuples so that the kernels
jit, vmap (over chains and over X) and ``lax.scan`` (over steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

EnergyXY = Callable[[Array, Array], Array]

JITTER = 0.2  # HMC: relative half-width of the uniform jitter of the leapfrog step


class Kernel(NamedTuple):
    """A Markov kernel on Y for one fixed X.

    init(key, y (n_y,)) -> state; step(key, state) -> (state, acceptance probability ());
    position(state) -> y (n_y,); observe(state) -> (u (), d u / d X (n_x,), d u / d Y (n_y,))
    at the state.
    """

    init: Callable[[PRNGKeyArray, Array], Any]
    step: Callable[[PRNGKeyArray, Any], tuple[Any, Array]]
    position: Callable[[Any], Array]
    observe: Callable[[Any], tuple[Array, Array, Array]]


class LangevinState(NamedTuple):
    """State of the MALA and BAOAB chains (one chain, one X).

    y (n_y,); u (): reduced energy u(X, y), not multiplied by beta; grad_y (n_y,) = d u / d y;
    grad_x (n_x,) = d u / d X; momentum (n_y,): BAOAB only (MALA carries zeros).
    """

    y: Array
    u: Array
    grad_y: Array
    grad_x: Array
    momentum: Array


def energy_and_grads(
    energy_xy: EnergyXY, X: Float[Array, " n_x"], y: Float[Array, " n_y"]
) -> tuple[Array, Array, Array]:
    """u(X, y) (), d u / d y (n_y,), d u / d X (n_x,) from one reverse-mode pass."""
    u, (grad_x, grad_y) = jax.value_and_grad(energy_xy, argnums=(0, 1))(X, y)
    return u, grad_y, grad_x


def _finite(u: Array, grad_y: Array) -> Array:
    return jnp.isfinite(u) & jnp.all(jnp.isfinite(grad_y))


def _select(pred: Array, a: NamedTuple, b: NamedTuple):
    return jax.tree.map(lambda s, t: jnp.where(pred, s, t), a, b)


def _langevin_position(state: LangevinState) -> Array:
    return state.y


def _langevin_observe(state: LangevinState) -> tuple[Array, Array, Array]:
    return state.u, state.grad_x, state.grad_y


def mala_kernel(
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta: Float[Array, ""],
    inv_mass: Float[Array, " n_y"],
    step_size: float | Array,
) -> Kernel:
    """Metropolis-adjusted Langevin on exp(-beta u(X, .)) with diagonal mass matrix 1 / inv_mass.

    Proposal y' = y - (h^2 / 2) M^-1 beta grad_y u(y) + h M^-1/2 xi with h = step_size and
    xi ~ N(0, I); accepted with the Metropolis-Hastings probability. A proposal whose energy or
    gradient is not finite is rejected. The acceptance reported is min(1, alpha).
    """
    h = step_size
    sqrt_inv_mass = jnp.sqrt(inv_mass)

    def evaluate(y):
        u, gy, gx = energy_and_grads(energy_xy, X, y)
        return LangevinState(y, u, gy, gx, jnp.zeros_like(y))

    def drift(state):
        return state.y - 0.5 * h * h * inv_mass * beta * state.grad_y

    def init(key, y):
        del key
        return evaluate(y)

    def step(key, state):
        # One random call per step (cheaper to compile): n_y proposal normals and one normal z
        # whose CDF Phi(z) is the uniform of the Metropolis test (log_ndtr(z) = log U).
        n_y = state.y.shape[0]
        draws = jax.random.normal(key, (n_y + 1,), state.y.dtype)
        noise, z = draws[:n_y], draws[n_y]
        new = evaluate(drift(state) + h * sqrt_inv_mass * noise)
        log_fwd = -0.5 * jnp.sum(noise**2)
        back = (state.y - drift(new)) / (h * sqrt_inv_mass)
        log_bwd = -0.5 * jnp.sum(back**2)
        log_alpha = -beta * (new.u - state.u) + log_bwd - log_fwd
        log_alpha = jnp.where(jnp.isnan(log_alpha), -jnp.inf, log_alpha)
        accept = jax.scipy.special.log_ndtr(z) < log_alpha
        p_accept = jnp.exp(jnp.minimum(log_alpha, 0.0))
        return _select(accept, new, state), p_accept

    return Kernel(init, step, _langevin_position, _langevin_observe)


def baoab_kernel(
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta: Float[Array, ""],
    inv_mass: Float[Array, " n_y"],
    dt: float | Array,
    friction: float | Array,
) -> Kernel:
    """Underdamped Langevin dynamics at k_B T = 1 in the potential beta u(X, .), BAOAB splitting.

    dY = M^-1 P dt,  dP = -beta grad_y u dt - gamma P dt + sqrt(2 gamma M) dW,  M = 1 / inv_mass,
    gamma = friction. Momenta start from N(0, M). One energy + gradient evaluation per step (the
    closing B half-kick reuses the force of the next opening one). If a step lands on a non-finite
    energy or gradient, it is undone and the momentum redrawn from N(0, M); the "acceptance"
    returned is 1.0 for an ordinary step and 0.0 for such an undone one.
    """
    sqrt_mass = 1.0 / jnp.sqrt(inv_mass)
    c1 = jnp.exp(-friction * dt)
    c2 = jnp.sqrt(-jnp.expm1(-2.0 * friction * dt))

    def init(key, y):
        u, gy, gx = energy_and_grads(energy_xy, X, y)
        p = sqrt_mass * jax.random.normal(key, y.shape, y.dtype)
        return LangevinState(y, u, gy, gx, p)

    def step(key, state):
        xi = jax.random.normal(key, (2,) + state.y.shape, state.y.dtype)
        p = state.momentum - 0.5 * dt * beta * state.grad_y  # B
        y = state.y + 0.5 * dt * inv_mass * p  # A
        p = c1 * p + c2 * sqrt_mass * xi[0]  # O
        y = y + 0.5 * dt * inv_mass * p  # A
        u, gy, gx = energy_and_grads(energy_xy, X, y)
        p = p - 0.5 * dt * beta * gy  # B
        new = LangevinState(y, u, gy, gx, p)
        ok = _finite(u, gy) & jnp.all(jnp.isfinite(p))
        redrawn = sqrt_mass * xi[1]
        undone = state._replace(momentum=redrawn)
        return _select(ok, new, undone), ok.astype(y.dtype)

    return Kernel(init, step, _langevin_position, _langevin_observe)


def hmc_kernel(
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta: Float[Array, ""],
    inv_mass: Float[Array, " n_y"],
    step_size: float | Array,
    n_leapfrog: int,
) -> Kernel:
    """``blackjax.hmc`` on log p(y) = -beta u(X, y), inverse mass matrix ``inv_mass``.

    Momenta ~ N(0, M); ``n_leapfrog`` velocity-Verlet steps; Metropolis test (a non-finite energy
    is rejected by blackjax). The step of each proposal is drawn uniformly from
    ``step_size * [1 - JITTER, 1 + JITTER]``: with a fixed trajectory length, a near-harmonic
    coordinate whose half period matches it would be sent back and forth without mixing. The
    acceptance reported is blackjax's min(1, exp(-dH)). ``observe`` costs one extra gradient
    evaluation (d u / d X).
    """
    kernel = blackjax.hmc.build_kernel()

    def logdensity(y):
        return -beta * energy_xy(X, y)

    def init(key, y):
        del key
        return blackjax.hmc.init(y, logdensity)

    def step(key, state):
        key_jitter, key_step = jax.random.split(key)
        dtype = state.position.dtype
        h = step_size * jax.random.uniform(key_jitter, (), dtype, 1.0 - JITTER, 1.0 + JITTER)
        state, info = kernel(key_step, state, logdensity, h, inv_mass, n_leapfrog)
        return state, jnp.asarray(info.acceptance_rate, dtype)

    def position(state):
        return state.position

    def observe(state):
        u, (grad_x, grad_y) = jax.value_and_grad(energy_xy, argnums=(0, 1))(X, state.position)
        return u, grad_x, grad_y

    return Kernel(init, step, position, observe)
