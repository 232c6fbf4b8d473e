"""The one MALA and the one BAOAB (samplers/langevin.py) reproduce the numbers of the
implementations they replaced: the conditional kernels' MALA and BAOAB (momentum form), the
replica exchange's BAOAB (velocity form, 1 - c1^2) and annealing's own MALA. The old forms are
written out below as they were, step by step; the same keys drive both, so the states agree to
rounding (the forms differ in the order of their multiplications)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.samplers.annealing import anneal
from coarseflow.samplers.kernels import baoab_kernel, mala_kernel
from coarseflow.samplers.langevin import MALAState, hmc_step, mala_step
from coarseflow.samplers.molecular_dynamics import baoab_step, md_init

RTOL = 1e-10


def energy_xy(X, y):
    """Anharmonic, coupled to X, so that the kernels' d u / d X is not trivial."""
    return 0.5 * jnp.sum(y**2 * jnp.array([1.0, 4.0, 9.0])) + 0.3 * jnp.sum(y**4) + X[0] * y[0]


X = jnp.array([0.7])
BETA = jnp.asarray(1.3)
INV_MASS = jnp.array([1.0, 0.5, 0.25])
Y0 = jnp.array([0.4, -0.2, 0.1])


def _grads(y):
    u, (gx, gy) = jax.value_and_grad(energy_xy, argnums=(0, 1))(X, y)
    return u, gy, gx


def _old_mala(key, y, u, gy, h):
    """kernels.mala_kernel's step before the merge: -> (y, u, gy, acceptance)."""

    def drift(y, gy):
        return y - 0.5 * h * h * INV_MASS * BETA * gy

    draws = jax.random.normal(key, (4,), y.dtype)
    noise, z = draws[:3], draws[3]
    y_new = drift(y, gy) + h * jnp.sqrt(INV_MASS) * noise
    u_new, gy_new, _ = _grads(y_new)
    back = (y - drift(y_new, gy_new)) / (h * jnp.sqrt(INV_MASS))
    log_alpha = -BETA * (u_new - u) - 0.5 * jnp.sum(back**2) + 0.5 * jnp.sum(noise**2)
    log_alpha = jnp.where(jnp.isnan(log_alpha), -jnp.inf, log_alpha)
    accept = jax.scipy.special.log_ndtr(z) < log_alpha
    y, u, gy = (jnp.where(accept, a, b) for a, b in ((y_new, y), (u_new, u), (gy_new, gy)))
    return y, u, gy, jnp.exp(jnp.minimum(log_alpha, 0.0))


def test_mala_kernel_reproduces_the_old_one():
    kernel = mala_kernel(energy_xy, X, BETA, INV_MASS, 0.4)
    keys = jax.random.split(jax.random.key(3), 40)
    state = kernel.init(keys[0], Y0)
    y, (u, gy, _) = Y0, _grads(Y0)
    accepted = 0
    for key in keys:
        state, p = kernel.step(key, state)
        y_old = y
        y, u, gy, p_old = _old_mala(key, y, u, gy, 0.4)
        accepted += int(not np.array_equal(y, y_old))
        np.testing.assert_allclose(kernel.position(state), y, rtol=RTOL)
        np.testing.assert_allclose(p, p_old, rtol=RTOL, atol=1e-14)
        u_new, gx_new, gy_new = kernel.observe(state)
        np.testing.assert_allclose(u_new, u, rtol=RTOL)
        np.testing.assert_allclose(gy_new, gy, rtol=RTOL)
        np.testing.assert_allclose(gx_new, _grads(y)[2], rtol=RTOL)
    assert 5 < accepted < 40  # both branches of the test were taken


def test_baoab_kernel_reproduces_the_old_momentum_form():
    """The old kernel carried momenta p = M v; the one BAOAB carries velocities."""
    dt, gamma = 0.3, 2.0
    sqrt_mass = 1.0 / jnp.sqrt(INV_MASS)
    c1, c2 = jnp.exp(-gamma * dt), jnp.sqrt(-jnp.expm1(-2.0 * gamma * dt))
    kernel = baoab_kernel(energy_xy, X, BETA, INV_MASS, dt, gamma)
    keys = jax.random.split(jax.random.key(4), 30)
    state = kernel.init(keys[0], Y0)
    y, p = Y0, sqrt_mass * jax.random.normal(keys[0], (3,), Y0.dtype)
    _, gy, _ = _grads(y)
    for key in keys[1:]:
        state, ok = kernel.step(key, state)
        xi = jax.random.normal(key, (2, 3), y.dtype)
        p = p - 0.5 * dt * BETA * gy
        y = y + 0.5 * dt * INV_MASS * p
        p = c1 * p + c2 * sqrt_mass * xi[0]
        y = y + 0.5 * dt * INV_MASS * p
        u, gy, gx = _grads(y)
        p = p - 0.5 * dt * BETA * gy
        assert float(ok) == 1.0
        np.testing.assert_allclose(state.x, y, rtol=RTOL)
        np.testing.assert_allclose(state.v, INV_MASS * p, rtol=RTOL)
        for got, old in zip(kernel.observe(state), (u, gx, gy), strict=True):
            np.testing.assert_allclose(got, old, rtol=RTOL)


def _md_energy(x):
    return 0.5 * jnp.sum(x**2 * jnp.array([[1.0], [3.0]])) + 0.1 * jnp.sum(x**4)


@pytest.mark.parametrize("v0", [0.3, 300.0])  # 300 nm/ps: the step reaches a NaN and is undone
def test_md_baoab_reproduces_the_old_replica_exchange_step(v0):
    """The old replica-exchange step (c2 = sqrt(1 - c1^2), force / m in the kicks) with the one
    BAOAB's draws: (2, *shape) normals from the step's key, the first for O, the second for a
    redraw (the old step split the key in two instead)."""
    masses, kT, dt, gamma = jnp.array([1.0, 12.0]), 2.5, 0.002, 1.0

    def energy(x):
        return jnp.where(jnp.max(jnp.abs(x)) > 0.5, jnp.nan, _md_energy(x))

    m = masses[:, None]
    x0 = jnp.array([[0.1, -0.2, 0.05], [0.0, 0.1, -0.1]])
    state = md_init(energy, x0, jnp.full((2, 3), v0))
    for key in jax.random.split(jax.random.key(5), 20):
        new = baoab_step(energy, state, key, masses=masses, kT=kT, time_step=dt, friction=gamma)
        xi = jax.random.normal(key, (2, 2, 3))
        c1 = jnp.exp(-gamma * dt)
        c2, sigma = jnp.sqrt(1.0 - c1 * c1), jnp.sqrt(kT / m)
        v = state.velocities + 0.5 * dt * state.forces / m
        x = state.positions + 0.5 * dt * v
        v = c1 * v + c2 * sigma * xi[0]
        x = x + 0.5 * dt * v
        e, g = jax.value_and_grad(energy)(x)
        v = v + 0.5 * dt * -g / m
        ok = bool(jnp.isfinite(e) & jnp.all(jnp.isfinite(g)))
        if ok:
            want = (x, v, e, -g, state.n_reverted)
        else:
            want = (
                state.positions,
                sigma * xi[1],
                state.energy,
                state.forces,
                state.n_reverted + 1,
            )
        for got, old in zip(new, want, strict=True):
            np.testing.assert_allclose(got, old, rtol=RTOL, atol=1e-14)
        state = new
    assert (int(state.n_reverted) > 0) == (v0 > 1.0)


def _old_anneal(key, log_base, log_gamma, z0, n_steps, h):
    """annealing.anneal's own MALA before the merge (aux left out)."""
    d, dtype = z0.shape[0], z0.dtype

    def value_and_grad(z):
        lg, g = jax.value_and_grad(log_gamma)(z)
        lb, gb = jax.value_and_grad(log_base)(z)
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

    def body(carry, inputs):
        z, lg, lb, g, gb, log_w = carry
        t_prev, t, k = inputs
        log_w = log_w + (t - t_prev) * (lg - lb)
        draws = jax.random.normal(k, (d + 1,), dtype)
        noise, u = draws[:d], draws[d]
        z_new = z + 0.5 * h * h * ((1.0 - t) * gb + t * g) + h * noise
        lg_new, lb_new, g_new, gb_new = value_and_grad(z_new)
        back = (z - z_new - 0.5 * h * h * ((1.0 - t) * gb_new + t * g_new)) / h
        log_alpha = (
            (1.0 - t) * lb_new
            + t * lg_new
            - (1.0 - t) * lb
            - t * lg
            - 0.5 * jnp.sum(back**2)
            + 0.5 * jnp.sum(noise**2)
        )
        finite = jnp.isfinite(lg_new) & jnp.isfinite(lb_new) & ~jnp.isnan(log_alpha)
        log_alpha = jnp.where(finite, log_alpha, -jnp.inf)
        accept = jax.scipy.special.log_ndtr(u) < log_alpha
        new, old = (z_new, lg_new, lb_new, g_new, gb_new), (z, lg, lb, g, gb)
        z, lg, lb, g, gb = (jnp.where(accept, a, b) for a, b in zip(new, old, strict=True))
        return (z, lg, lb, g, gb, log_w), jnp.exp(jnp.minimum(log_alpha, 0.0))

    t = jnp.linspace(0.0, 1.0, n_steps + 1, dtype=dtype)
    init = (z0, *value_and_grad(z0), jnp.zeros((), dtype))
    (z, *_, log_w), acc = jax.lax.scan(body, init, (t[:-1], t[1:], jax.random.split(key, n_steps)))
    return z, log_w, jnp.mean(acc)


def test_anneal_reproduces_its_old_mala():
    """A gamma with a hole (log gamma = -inf for z_0 > 1.5), so that rejections of non-finite
    proposals are exercised as well as ordinary ones."""

    def log_base(z):
        return -0.5 * jnp.sum(z**2) - jnp.log(2 * jnp.pi)

    def log_gamma(z):
        value = -jnp.sum((z - jnp.array([1.0, -0.5])) ** 2 / jnp.array([0.3, 2.0]))
        return jnp.where(z[0] > 1.5, -jnp.inf, value)

    keys = jax.random.split(jax.random.key(0), 8)
    z0 = 0.5 * jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (2,)))(keys)
    new = jax.jit(
        jax.vmap(lambda k, z: anneal(k, log_base, lambda z: (log_gamma(z), ()), z, 25, 0.6))
    )(keys, z0)
    z, log_w, acc = jax.jit(jax.vmap(lambda k, z: _old_anneal(k, log_base, log_gamma, z, 25, 0.6)))(
        keys, z0
    )
    np.testing.assert_allclose(new.z, z, rtol=RTOL)
    np.testing.assert_allclose(new.log_weight, log_w, rtol=RTOL)
    np.testing.assert_allclose(new.acceptance, acc, rtol=RTOL)
    assert np.all((0.2 < acc) & (acc < 1.0))


def test_hmc_with_one_leapfrog_step_is_mala():
    """The same key gives MALA's proposal and test (identity mass), through a density with a
    hole (non-finite log pi for z_0 > 1.2) so that rejections are exercised too."""

    def evaluate(z):
        value, grad = jax.value_and_grad(
            lambda z: -jnp.sum((z - jnp.array([1.0, -0.5])) ** 2 / jnp.array([0.3, 2.0]))
        )(z)
        value = jnp.where(z[0] > 1.2, -jnp.inf, value)
        return MALAState(z, value, grad, value)

    def both(key, z):
        state = evaluate(z)
        return mala_step(key, state, evaluate, 0.7), hmc_step(key, state, evaluate, 0.7, 1)

    keys = jax.random.split(jax.random.key(3), 64)
    z0 = 0.5 * jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (2,)))(keys)
    (mala, acc_mala), (hmc, acc_hmc) = jax.jit(jax.vmap(both))(keys, z0)
    np.testing.assert_allclose(hmc.z, mala.z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc_hmc, acc_mala, rtol=1e-10, atol=1e-12)
    moved = np.any(np.asarray(mala.z) != np.asarray(z0), axis=1)
    assert 0.2 < moved.mean() < 1.0  # accepted and rejected proposals both occur
