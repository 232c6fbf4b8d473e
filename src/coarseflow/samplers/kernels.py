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

* ``mala``: Metropolis-adjusted Langevin with a diagonal mass matrix
  (:func:`coarseflow.samplers.langevin.mala_step`). One joint ``value_and_grad`` over (X, Y)
  gives d u / d X at every state for free, so the mean force costs no extra energy evaluation.
* ``hmc``: Hamiltonian Monte Carlo (:func:`~coarseflow.samplers.langevin.hmc_step`: leapfrog,
  ``hmc_leapfrog`` steps, Metropolis test) with the same mass matrix and the step jittered by
  +-20% per proposal. Its last leapfrog step's pass gives d u / d X, as for mala.
* ``baoab``: underdamped Langevin dynamics, B-A-O-A-B splitting
  (:func:`coarseflow.samplers.langevin.baoab_step`), time step ``step_size``, friction
  ``friction`` (1 / time). No Metropolis test: it samples p(Y | X) up to an O(dt^2) bias in
  configurational averages (exact for a harmonic potential). A step that lands on a non-finite
  energy or force is undone and the velocity redrawn. Its d u / d X is that of the same pass.

A kernel is a :class:`Kernel` of four pure functions; states are NamedTuples so that the kernels
jit, vmap (over chains and over X) and ``lax.scan`` (over steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.samplers.langevin import BAOABState, MALAState, baoab_step, hmc_step, mala_step

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


def energy_and_grads(
    energy_xy: EnergyXY, X: Float[Array, " n_x"], y: Float[Array, " n_y"]
) -> tuple[Array, Array, Array]:
    """u(X, y) (), d u / d y (n_y,), d u / d X (n_x,) from one reverse-mode pass."""
    u, (grad_x, grad_y) = jax.value_and_grad(energy_xy, argnums=(0, 1))(X, y)
    return u, grad_y, grad_x


def _state_of(energy_xy: EnergyXY, X, beta) -> Callable[[Array], MALAState]:
    """y -> the MALAState of exp(-beta u(X, y)), aux (u, d u / d X, d u / d Y): what mala and
    hmc evaluate, from one reverse-mode pass."""

    def evaluate(y):
        u, grad_y, grad_x = energy_and_grads(energy_xy, X, y)
        return MALAState(y, -beta * u, -beta * grad_y, (u, grad_x, grad_y))

    return evaluate


def mala_kernel(
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta: Float[Array, ""],
    inv_mass: Float[Array, " n_y"],
    step_size: float | Array,
) -> Kernel:
    """Metropolis-adjusted Langevin (:func:`~coarseflow.samplers.langevin.mala_step`) on
    exp(-beta u(X, .)) with diagonal mass matrix 1 / inv_mass.

    Proposal y' = y - (h^2 / 2) M^-1 beta grad_y u(y) + h M^-1/2 xi with h = step_size and
    xi ~ N(0, I); accepted with the Metropolis-Hastings probability. A proposal whose energy or
    gradient is not finite is rejected. The acceptance reported is min(1, alpha). The state is a
    MALAState whose aux is (u, d u / d X, d u / d Y).
    """

    evaluate = _state_of(energy_xy, X, beta)

    def init(key, y):
        del key
        return evaluate(y)

    def step(key, state):
        return mala_step(key, state, evaluate, step_size, inv_mass)

    return Kernel(init, step, lambda state: state.z, lambda state: state.aux)


def baoab_kernel(
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta: Float[Array, ""],
    inv_mass: Float[Array, " n_y"],
    dt: float | Array,
    friction: float | Array,
) -> Kernel:
    """Underdamped Langevin dynamics at k_B T = 1 in the potential beta u(X, .), BAOAB splitting
    (:func:`~coarseflow.samplers.langevin.baoab_step`).

    dY = V dt,  dV = -M^-1 beta grad_y u dt - gamma V dt + sqrt(2 gamma M^-1) dW,
    M = 1 / inv_mass, gamma = friction. Velocities start from N(0, M^-1). One energy + gradient
    evaluation per step. If a step lands on a non-finite energy or gradient, it is undone and
    the velocity redrawn from N(0, M^-1); the "acceptance" returned is 1.0 for an ordinary step
    and 0.0 for such an undone one. The state is a BAOABState whose aux is
    (d u / d X, d u / d Y).
    """
    sigma = jnp.sqrt(inv_mass)  # the velocities' std at k_B T = 1

    def accelerate(y):
        u, grad_y, grad_x = energy_and_grads(energy_xy, X, y)
        return u, -beta * inv_mass * grad_y, (grad_x, grad_y)

    def init(key, y):
        u, a, aux = accelerate(y)
        return BAOABState(y, sigma * jax.random.normal(key, y.shape, y.dtype), u, a, aux)

    def step(key, state):
        state, ok = baoab_step(key, state, accelerate, dt=dt, friction=friction, sigma=sigma)
        return state, ok.astype(state.x.dtype)

    return Kernel(init, step, lambda state: state.x, lambda state: (state.energy, *state.aux))


def hmc_kernel(
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta: Float[Array, ""],
    inv_mass: Float[Array, " n_y"],
    step_size: float | Array,
    n_leapfrog: int,
) -> Kernel:
    """Hamiltonian Monte Carlo (:func:`~coarseflow.samplers.langevin.hmc_step`) on
    exp(-beta u(X, .)) with diagonal mass matrix 1 / inv_mass.

    Momenta ~ N(0, M); ``n_leapfrog`` leapfrog steps; Metropolis test (a trajectory through a
    non-finite energy or gradient is rejected). The step of each proposal is drawn uniformly
    from ``step_size * [1 - JITTER, 1 + JITTER]``: with a fixed trajectory length, a
    near-harmonic coordinate whose half period matches it would be sent back and forth without
    mixing. The acceptance reported is min(1, alpha). The state is a MALAState whose aux is
    (u, d u / d X, d u / d Y), as mala's: observing it costs no evaluation.
    """

    evaluate = _state_of(energy_xy, X, beta)

    def init(key, y):
        del key
        return evaluate(y)

    def step(key, state):
        key_jitter, key_step = jax.random.split(key)
        dtype = state.z.dtype
        h = step_size * jax.random.uniform(key_jitter, (), dtype, 1.0 - JITTER, 1.0 + JITTER)
        return hmc_step(key_step, state, evaluate, h, n_leapfrog, inv_mass)

    return Kernel(init, step, lambda state: state.z, lambda state: state.aux)
