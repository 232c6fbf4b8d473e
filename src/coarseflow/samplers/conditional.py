"""Conditional MCMC on Y | X (METHOD.md, section 4, step 2): the chains' settings, their warm
start and their run.

For one value of the slow variables X, the chains warm-start Y by a short descent on the energy
(:func:`minimize_y`), run ``n_chains`` parallel chains on p(Y | X) ∝ exp(-beta u(X, Y)), discard
``n_burn`` steps and keep ``n_keep`` states per chain (every ``thin`` steps):
:func:`sample_conditional` returns those states, :func:`coarseflow.samplers.force.mean_force`
averages beta d u / d X over them.

Everything is pure JAX with static settings: call it under ``jax.jit`` and ``jax.vmap`` it over a
batch of X (and keys, starting states). ``beta`` and ``X`` may be traced; changing them does not
recompile. No gradient flows back through the sampler: X, Y and beta enter through
``stop_gradient``.

Units: ``u`` is the reduced energy (U / k_B T at the target temperature) and beta in (0, 1] the
tempering parameter. The chains are the dynamics of the potential u at temperature
k_B T = 1 / beta (target temperature / beta), with masses m (one per coordinate of Y), as in
molecular dynamics: ``step_size`` and ``friction`` are in the time unit of that dynamics
(sqrt(m / k) for a spring u = k y^2 / 2), so one step moves coordinate i by about
step_size * sqrt(k_B T / m_i) = step_size / sqrt(beta m_i). The integrators' stability is set by
the fastest vibration sqrt(k_i / m_i) of u, not by beta, and for a near-harmonic conditional the
acceptance does not change along the tempering ladder: the chains widen with p(Y | X) as beta
falls. (Internally the kernels of :mod:`coarseflow.samplers.kernels` run the potential beta u at
k_B T = 1 with the time step step_size / sqrt(beta) and friction friction * sqrt(beta): the same
process, time rescaled.)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow import checks
from coarseflow.samplers.kernels import (
    EnergyXY,
    Kernel,
    baoab_kernel,
    hmc_kernel,
    mala_kernel,
)

KERNELS = ("mala", "hmc", "baoab")


class ChainSettings(eqx.Module):
    """Settings of the conditional chains (the ``[chains]`` table of a config). All static.

    kernel: "mala" | "hmc" | "baoab" (see :mod:`coarseflow.samplers.kernels`).
    step_size: MALA step h, HMC leapfrog step, BAOAB time step dt; a time in the units of the
        dynamics of u with masses m (see the module docstring): a step moves coordinate i by
        about step_size / sqrt(beta m_i). Stability needs step_size * sqrt(k_i / m_i) < 2 for
        the stiffest curvature k_i of u (well below it for good MALA / HMC acceptance).
    n_chains: parallel chains per X.
    n_burn: steps discarded before the first kept state.
    n_keep: states kept per chain after burn-in.
    thin: steps between kept states (the first kept state is ``thin`` steps after burn-in).
    hmc_leapfrog: leapfrog steps per HMC proposal.
    friction: BAOAB friction gamma (1 / time, same time unit).
    warm_start_steps: descent steps on u over Y before the chains (0 = none).
    warm_start_lr: initial step of that descent, scaled by 1 / mass (see :func:`minimize_y`).
    control_variate: subtract the zero-mean control variate beta grad_Y u from the mean force
        (:func:`~coarseflow.samplers.force.control_variate_forces`); same expectation, often
        far less noise.

    Each step of MALA or BAOAB costs one energy + gradient evaluation; an HMC step costs
    ``hmc_leapfrog`` of them. A call costs ``n_chains * (n_burn + n_keep * thin)`` steps after
    ``warm_start_steps`` descent evaluations.
    """

    kernel: str = eqx.field(default="mala", static=True)
    step_size: float = eqx.field(default=0.05, static=True)
    n_chains: int = eqx.field(default=4, static=True)
    n_burn: int = eqx.field(default=50, static=True)
    n_keep: int = eqx.field(default=25, static=True)
    thin: int = eqx.field(default=1, static=True)
    hmc_leapfrog: int = eqx.field(default=5, static=True)
    friction: float = eqx.field(default=1.0, static=True)
    warm_start_steps: int = eqx.field(default=20, static=True)
    warm_start_lr: float = eqx.field(default=0.01, static=True)
    control_variate: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        checks.boolean("[chains] control_variate", self.control_variate)
        checks.choice("[chains] kernel", self.kernel, KERNELS)
        for name in ("step_size", "friction", "warm_start_lr"):
            checks.number(f"[chains] {name}", getattr(self, name), 0.0)
        for name, low in (
            ("n_chains", 1),
            ("n_burn", 0),
            ("n_keep", 1),
            ("thin", 1),
            ("hmc_leapfrog", 1),
            ("warm_start_steps", 0),
        ):
            checks.integer(f"[chains] {name}", getattr(self, name), low)

    @property
    def n_steps(self) -> int:
        """Kernel steps per chain (burn-in included)."""
        return self.n_burn + self.n_keep * self.thin


def _inv_mass(mass, n_y: int, dtype) -> Array:
    if mass is None:
        return jnp.ones(n_y, dtype)
    mass = jnp.asarray(mass, dtype)
    if mass.shape != (n_y,):
        raise ValueError(f"mass: expected shape ({n_y},), got {mass.shape}")
    return 1.0 / mass


def _build_kernel(settings: ChainSettings, energy_xy, X, beta, inv_mass) -> Kernel:
    """The kernel in the potential beta u at k_B T = 1, its time rescaled by sqrt(beta)."""
    step = settings.step_size / jnp.sqrt(beta)
    if settings.kernel == "mala":
        return mala_kernel(energy_xy, X, beta, inv_mass, step)
    if settings.kernel == "hmc":
        return hmc_kernel(energy_xy, X, beta, inv_mass, step, settings.hmc_leapfrog)
    friction = settings.friction * jnp.sqrt(beta)
    return baoab_kernel(energy_xy, X, beta, inv_mass, step, friction)


def _float_dtype(*arrays):
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def minimize_y(
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta,
    y0: Float[Array, " n_y"],
    steps: int,
    lr: float,
    mass: Float[Array, " n_y"] | None = None,
) -> Float[Array, " n_y"]:
    """Descend u(X, .) from y0 for ``steps`` iterations: the chains' warm start.

    Iteration: y' = y - eta M^-1 grad_y u(X, y), with eta starting at ``lr`` (in units of
    time^2: the zero-noise MALA drift has eta = step_size^2 / 2). The step is taken only if u
    does not increase and stays finite; then eta grows by 1.2, otherwise y stays and eta halves.
    So the descent never blows up on stiff energies: a too large ``lr`` costs a few iterations;
    on a badly conditioned u, masses that follow the stiffness speed it up. One energy +
    gradient evaluation per iteration. A y0 with non-finite energy or gradient is returned
    unchanged. The minimiser of beta u is that of u: ``beta`` does not change the path and is
    taken for symmetry with the samplers. Shapes: X (n_x,), y0 (n_y,), mass (n_y,) or None
    (ones).
    """
    del beta
    y0 = jnp.asarray(y0)
    dtype = _float_dtype(y0, X)
    y0 = y0.astype(dtype)
    if y0.ndim != 1:
        raise ValueError(f"y0: expected shape (n_y,), got {y0.shape}")
    if steps == 0:
        return y0
    inv_mass = _inv_mass(mass, y0.shape[0], dtype)

    def value_and_grad(y):
        return jax.value_and_grad(energy_xy, argnums=1)(X, y)

    def body(carry, _):
        y, f, g, eta = carry
        y_new = y - eta * inv_mass * g
        f_new, g_new = value_and_grad(y_new)
        ok = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new)) & (f_new <= f)
        carry = (
            jnp.where(ok, y_new, y),
            jnp.where(ok, f_new, f),
            jnp.where(ok, g_new, g),
            jnp.where(ok, 1.2 * eta, 0.5 * eta),
        )
        return carry, None

    f0, g0 = value_and_grad(y0)
    init = (y0, f0, g0, jnp.asarray(lr, dtype))
    (y, _, _, _), _ = jax.lax.scan(body, init, None, length=steps)
    return y


def _starts(energy_xy, X, beta, y0, settings: ChainSettings, mass, dtype) -> Array:
    """Warm-started starting states (n_chains, n_y) from y0 (n_y,) or (n_chains, n_y)."""
    y0 = jnp.asarray(y0).astype(dtype)

    def warm(y):
        return minimize_y(
            energy_xy, X, beta, y, settings.warm_start_steps, settings.warm_start_lr, mass
        )

    if y0.ndim == 1:
        return jnp.broadcast_to(warm(y0), (settings.n_chains, y0.shape[0]))
    if y0.ndim == 2 and y0.shape[0] == settings.n_chains:
        return jax.vmap(warm)(y0)
    raise ValueError(
        f"y0: expected shape (n_y,) or (n_chains={settings.n_chains}, n_y), got {y0.shape}"
    )


def _run_chains(key, energy_xy, X, beta, y0, settings: ChainSettings, mass, with_force: bool):
    """Run all chains for one X.

    Returns (y_last (n_chains, n_y), acceptance (), out) where out is, if ``with_force``,
    (grad_X u (R, n_x), grad_Y u (R, n_y), u (R,), kept-and-finite mask (R,)) over the
    R = n_chains * n_steps steps (zeroed where the mask is false), else the kept states
    (n_chains, n_keep, n_y).
    """
    X = jax.lax.stop_gradient(jnp.asarray(X))
    dtype = _float_dtype(X, jnp.asarray(y0))
    X = X.astype(dtype)
    beta = jax.lax.stop_gradient(jnp.asarray(beta, dtype))
    y0 = jax.lax.stop_gradient(jnp.asarray(y0))
    n_y = y0.shape[-1]
    inv_mass = _inv_mass(mass, n_y, dtype)
    starts = _starts(energy_xy, X, beta, y0, settings, mass, dtype)
    kernel = _build_kernel(settings, energy_xy, X, beta, inv_mass)

    n_burn, thin = settings.n_burn, settings.thin

    def chain(keys, y_start):
        # One scan over all steps (one copy of the kernel in the compiled program); step i is
        # kept when i >= n_burn and (i - n_burn + 1) is a multiple of thin.
        state = kernel.init(jax.random.fold_in(keys, settings.n_steps), y_start)

        def body(carry, i):
            state, acc_sum = carry
            state, acc = kernel.step(jax.random.fold_in(keys, i), state)
            carry = (state, acc_sum + acc)
            if not with_force:
                return carry, kernel.position(state)
            kept = (i >= n_burn) & ((i - n_burn) % thin == thin - 1)
            u, grad_x, grad_y = kernel.observe(state)
            finite = (
                kept
                & jnp.isfinite(u)
                & jnp.all(jnp.isfinite(grad_x))
                & jnp.all(jnp.isfinite(grad_y))
            )
            observed = tuple(jnp.where(finite, v, 0.0) for v in (grad_x, grad_y, u))
            return carry, (*observed, finite)

        carry = (state, jnp.zeros((), dtype))
        (state, acc_sum), ys = jax.lax.scan(body, carry, jnp.arange(settings.n_steps))
        out = ys if with_force else ys[n_burn + thin - 1 :: thin]
        return kernel.position(state), acc_sum / settings.n_steps, out

    keys = jax.random.split(key, settings.n_chains)
    y_last, acceptance, out = jax.vmap(chain)(keys, starts)
    # what the loops above ran: the descent (f0 and one per step, once per distinct start),
    # each chain's init and steps (HMC: its leapfrog steps; grad_X comes with every pass)
    n_warm = (settings.warm_start_steps + 1) * (1 if y0.ndim == 1 else settings.n_chains)
    per_step = settings.hmc_leapfrog if settings.kernel == "hmc" else 1
    n_evals = n_warm * (settings.warm_start_steps > 0) + settings.n_chains * (
        1 + settings.n_steps * per_step
    )
    if with_force:
        gx, gy, u, finite = out  # every step of every chain; zeros where not kept or not finite
        out = (
            gx.reshape(-1, gx.shape[-1]),
            gy.reshape(-1, gy.shape[-1]),
            u.reshape(-1),
            finite.reshape(-1),
        )
    return y_last, jnp.mean(acceptance), out, n_evals


def sample_conditional(
    key: PRNGKeyArray,
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta,
    y0: Float[Array, "*n_chains n_y"],
    settings: ChainSettings,
    mass: Float[Array, " n_y"] | None = None,
) -> tuple[Float[Array, "n_samples n_y"], Float[Array, ""]]:
    """Kept states of the chains on p(Y | X) ∝ exp(-beta u(X, Y)), for prediction or diagnostics.

    Same arguments and chains as :func:`~coarseflow.samplers.force.mean_force`. Returns
    (ys, acceptance): ys has shape (n_chains * n_keep, n_y), chain-major (rows c * n_keep ...
    (c + 1) * n_keep - 1 are chain c in time order, so ``ys.reshape(n_chains, n_keep, n_y)``
    recovers the chains); acceptance is the mean acceptance probability (). Non-finite states
    are returned as they are.
    """
    _, acceptance, kept, _ = _run_chains(
        key, energy_xy, X, beta, y0, settings, mass, with_force=False
    )
    n_y = kept.shape[-1]
    return kept.reshape(settings.n_chains * settings.n_keep, n_y), acceptance
