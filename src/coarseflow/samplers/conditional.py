"""Conditional MCMC on Y | X and the conditional mean force (METHOD.md, section 4, steps 2-3).

For one value of the slow variables X, :func:`mean_force` warm-starts Y by a short descent on the
energy, runs ``n_chains`` parallel chains on p(Y | X) ∝ exp(-beta u(X, Y)), discards ``n_burn``
steps, keeps ``n_keep`` states per chain (every ``thin`` steps) and averages beta d u / d X over
them. The result is an estimate of

    F(X) = E_{Y ~ p(Y|X)} [ beta grad_X u(X, Y) ] = -grad_X log p_beta(X),

the *minus* score of the marginal, which the reverse-KL surrogate uses as a constant.

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

from typing import NamedTuple

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
        (:func:`control_variate_forces`); same expectation, often far less noise.

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


class MeanForce(NamedTuple):
    """Result of :func:`mean_force` for one X (vmapped: a leading batch axis on every field).

    force (n_x,): mean over the kept states of all chains of beta grad_X u(X, Y), i.e. minus the
        score of p_beta(X). States whose energy or gradients are not finite are left out; if all
        are, force is NaN.
    y_last (n_chains, n_y): final chain states (can seed the next call).
    acceptance (): mean acceptance probability over all steps and chains. BAOAB has no Metropolis
        test: it reports the fraction of steps not undone for a non-finite energy (1.0 normally).
    n_nonfinite () int: kept states left out of the mean.
    grad_y_mean (n_y,): mean of beta grad_Y u over the same states; zero in expectation under
        p(Y|X), so it is a control variate for the force (:func:`control_variate_forces`).
    cov_xy (n_x, n_y), cov_yy (n_y, n_y): centred sums of products of beta grad_X u and
        beta grad_Y u over the same states (covariance times the number of states).
    heating (): mean beta u over the last n_keep // 2 kept states minus that over the first
        n_keep // 2 (k_B T at the chains' temperature; NaN if n_keep < 2). The warm start leaves
        Y near a minimum of u, and the chains' energy then rises towards equilibrium (about
        n_y / 2 above the minimum for near-harmonic Y): a clearly positive value means the
        kept states are still heating up, n_burn is too short, and the mean force leans
        towards that of the minimum, i.e. is biased.
    """

    force: Float[Array, " n_x"]
    y_last: Float[Array, "n_chains n_y"]
    acceptance: Float[Array, ""]
    n_nonfinite: Array
    grad_y_mean: Float[Array, " n_y"]
    cov_xy: Float[Array, "n_x n_y"]
    cov_yy: Float[Array, "n_y n_y"]
    heating: Float[Array, ""]
    n_evals: Array  # () energy + gradient evaluations this call made (warm start included)


def control_variate_forces(mf: MeanForce, ridge: float = 1e-8) -> Float[Array, "S n_x"]:
    """Mean forces (S, n_x) with the zero-mean control variate beta grad_Y u subtracted.

    Under p(Y|X), E[grad_Y u] = 0 (integrate the Y-derivative of exp(-beta u) by parts), so
    F_cv = mean(beta grad_X u) - C mean(beta grad_Y u) has the mean of the plain estimate for
    any fixed C (n_x, n_y). C = S_xy S_yy^-1, pooled over the batch (within-X covariances), is
    the least-squares choice: it removes the part of the force noise that moves with the fast
    variables (for a molecule: bond and angle forces shared by a coarse-grained atom and its
    fast neighbours; for the Gaussian mixture all of the noise). ``mf`` is a batched MeanForce
    (leading axis S); rows whose force is not finite are left out of C and stay NaN.
    """
    ok = jnp.all(jnp.isfinite(mf.force), axis=-1)
    ok = (
        ok
        & jnp.all(jnp.isfinite(mf.cov_yy), axis=(-2, -1))
        & jnp.all(jnp.isfinite(mf.cov_xy), axis=(-2, -1))
    )
    s_xy = jnp.sum(jnp.where(ok[:, None, None], mf.cov_xy, 0.0), axis=0)
    s_yy = jnp.sum(jnp.where(ok[:, None, None], mf.cov_yy, 0.0), axis=0)
    n_y = s_yy.shape[0]
    scale = jnp.trace(s_yy) / n_y
    # solve C S_yy = S_xy with a small ridge so an (almost) singular S_yy stays harmless
    c = jnp.linalg.solve(s_yy + ridge * jnp.maximum(scale, 1e-30) * jnp.eye(n_y), s_xy.T).T
    c = jnp.where(jnp.all(jnp.isfinite(c)), c, 0.0)
    return mf.force - jnp.einsum("ij,sj->si", c, jnp.where(ok[:, None], mf.grad_y_mean, 0.0))


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
    # each chain's init and steps (HMC: its leapfrog steps, and one more per step to observe
    # grad_X, which the scan computes at every step)
    n_warm = (settings.warm_start_steps + 1) * (1 if y0.ndim == 1 else settings.n_chains)
    per_step = settings.hmc_leapfrog if settings.kernel == "hmc" else 1
    observe = settings.n_steps if (settings.kernel == "hmc" and with_force) else 0
    n_evals = n_warm * (settings.warm_start_steps > 0) + settings.n_chains * (
        1 + settings.n_steps * per_step + observe
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


def mean_force(
    key: PRNGKeyArray,
    energy_xy: EnergyXY,
    X: Float[Array, " n_x"],
    beta,
    y0: Float[Array, "*n_chains n_y"],
    settings: ChainSettings,
    mass: Float[Array, " n_y"] | None = None,
) -> MeanForce:
    """Estimate F(X) = E_{Y ~ p(Y|X)}[beta grad_X u(X, Y)] = -grad_X log p_beta(X).

    energy_xy(X (n_x,), Y (n_y,)) -> reduced energy u (); the chains target exp(-beta u(X, .)).
    y0: (n_y,) or (n_chains, n_y) starting states; the warm start (:func:`minimize_y` with the
    settings' ``warm_start_*``) is applied from there. mass: (n_y,) per-coordinate masses, None
    for ones. beta: scalar, may be traced. Only kept states (after burn-in) enter the mean; see
    :class:`MeanForce` for non-finite states. With MALA and BAOAB, grad_X comes from the same
    gradient evaluation as the chain's grad_Y; with HMC it costs one extra evaluation per kept
    state. Pure JAX: jit and vmap it (over key, X, y0) from the caller.
    """
    y_last, acceptance, (gx, gy, u, finite), n_evals = _run_chains(
        key, energy_xy, X, beta, y0, settings, mass, with_force=True
    )
    n_kept = settings.n_chains * settings.n_keep
    n_finite = jnp.sum(finite.astype(jnp.int32))
    beta = jax.lax.stop_gradient(jnp.asarray(beta, gx.dtype))
    n = jnp.maximum(n_finite, 1)
    # gradient rows of all steps (zeros where not kept or not finite): centre over kept rows
    w = finite.astype(gx.dtype)[:, None]
    gx, gy = beta * gx, beta * gy
    mean_x, mean_y = jnp.sum(gx, 0) / n, jnp.sum(gy, 0) / n
    force = jnp.where(n_finite > 0, mean_x, jnp.nan)
    dx, dy = (gx - mean_x) * w, (gy - mean_y) * w
    heating = _heating(beta * u, finite, settings)
    return MeanForce(
        force,
        y_last,
        acceptance,
        n_kept - n_finite,
        mean_y,
        dx.T @ dy,
        dy.T @ dy,
        heating,
        jnp.asarray(n_evals),
    )


def _heating(beta_u: Float[Array, " R"], finite: Array, settings: ChainSettings) -> Array:
    """Mean beta u over the last n_keep // 2 kept states minus the first n_keep // 2 ().

    beta_u and finite are per step of every chain (R = n_chains * n_steps, chains outer).
    """
    half = settings.n_keep // 2
    step = jnp.tile(jnp.arange(settings.n_steps), settings.n_chains)
    k = (step - settings.n_burn) // settings.thin  # index of the kept state (where kept)
    first = finite & (k < half)
    last = finite & (k >= settings.n_keep - half)

    def mean(mask):
        n = jnp.sum(mask)
        return jnp.where(n > 0, jnp.sum(jnp.where(mask, beta_u, 0.0)) / jnp.maximum(n, 1), jnp.nan)

    return mean(last) - mean(first)


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

    Same arguments and chains as :func:`mean_force`. Returns (ys, acceptance): ys has shape
    (n_chains * n_keep, n_y), chain-major (rows c * n_keep ... (c + 1) * n_keep - 1 are chain c in
    time order, so ``ys.reshape(n_chains, n_keep, n_y)`` recovers the chains); acceptance is the
    mean acceptance probability (). Non-finite states are returned as they are.
    """
    _, acceptance, kept, _ = _run_chains(
        key, energy_xy, X, beta, y0, settings, mass, with_force=False
    )
    n_y = kept.shape[-1]
    return kept.reshape(settings.n_chains * settings.n_keep, n_y), acceptance
