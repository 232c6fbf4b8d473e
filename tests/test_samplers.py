"""Conditional samplers on Y | X and the mean force, against analytic moments and exact scores.

Monte Carlo tolerances are 5 standard errors. Standard errors come from the spread of
independent chains (or of independent replicas), which accounts for autocorrelation within a
chain. Each check also asserts that its standard error is small against the quantity tested,
so that a tolerance cannot be vacuous. One jitted program per test (per kernel); beta and X are
traced, so the second beta reuses the compiled program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.errors import ConfigError
from coarseflow.samplers import ChainSettings, mean_force, minimize_y, sample_conditional

N_SIGMA = 5.0

# Linear-Gaussian conditional: u(X, Y) = -log N(X | 0, I) + |Y - B X|^2 / (2 s^2) (+ const).
B = jnp.array([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]])
S = 0.3
X_GAUSS = jnp.array([0.4, -0.8])


def gaussian_energy(X, Y):
    return 0.5 * jnp.sum(X**2) + jnp.sum((Y - B @ X) ** 2) / (2 * S**2)


def _chain_moments(ys, n_chains, mean_exact):
    """Per-chain mean and mean square deviation from the exact mean: (est, se) for each."""
    ys = np.asarray(ys).reshape(n_chains, -1, ys.shape[-1])
    means = ys.mean(axis=1)
    sq = ((ys - np.asarray(mean_exact)) ** 2).mean(axis=1)
    se = lambda a: a.std(axis=0, ddof=1) / np.sqrt(a.shape[0])  # noqa: E731
    return means.mean(axis=0), se(means), sq.mean(axis=0), se(sq)


GAUSS_SETTINGS = {
    "mala": ChainSettings(kernel="mala", step_size=0.3),
    "hmc": ChainSettings(kernel="hmc", step_size=0.1, hmc_leapfrog=5),
    "baoab": ChainSettings(kernel="baoab", step_size=0.1, friction=3.0),
}


def _gauss_settings(kernel: str, **chains) -> ChainSettings:
    """The kernel's GAUSS_SETTINGS step (and leapfrog / friction) with the given chain sizes."""
    base = GAUSS_SETTINGS[kernel]
    return ChainSettings(
        kernel=kernel,
        step_size=base.step_size,
        hmc_leapfrog=base.hmc_leapfrog,
        friction=base.friction,
        **chains,
    )


@pytest.mark.parametrize("kernel", ["mala", "hmc", "baoab"])
def test_gaussian_conditional_moments_and_mean_force(kernel):
    settings = _gauss_settings(kernel, n_chains=128, n_burn=60, n_keep=16, thin=4)
    n_rep = 24

    @jax.jit
    def run(key, X, beta, y0):
        key_s, key_f = jax.random.split(key)
        ys, acc = sample_conditional(key_s, gaussian_energy, X, beta, y0, settings)
        keys = jax.random.split(key_f, n_rep)
        mf = jax.vmap(lambda k: mean_force(k, gaussian_energy, X, beta, y0, settings))(keys)
        return ys, acc, mf

    mean_exact = np.asarray(B @ X_GAUSS)
    for i, beta in enumerate((1.0, 0.5)):
        ys, acc, mf = run(jax.random.key(10 + i), X_GAUSS, beta, jnp.zeros(3))
        assert ys.shape == (settings.n_chains * settings.n_keep, 3)
        assert 0.5 < float(acc) <= 1.0
        var_exact = S**2 / beta
        m, m_se, v, v_se = _chain_moments(ys, settings.n_chains, mean_exact)
        assert np.all(m_se < 0.06 * np.sqrt(var_exact))
        assert np.all(v_se < 0.08 * var_exact)
        np.testing.assert_array_less(np.abs(m - mean_exact), N_SIGMA * m_se)
        np.testing.assert_array_less(np.abs(v - var_exact), N_SIGMA * v_se)

        # Mean force: E_Y[beta grad_X u] = beta X (the coupling term averages to zero).
        forces = np.asarray(mf.force)
        assert mf.y_last.shape == (n_rep, settings.n_chains, 3)
        assert np.all(np.asarray(mf.n_nonfinite) == 0)
        f_mean = forces.mean(axis=0)
        f_se = forces.std(axis=0, ddof=1) / np.sqrt(n_rep)
        assert np.all(f_se < 0.07)
        np.testing.assert_array_less(np.abs(f_mean - beta * np.asarray(X_GAUSS)), N_SIGMA * f_se)

    # Units: the chains are the dynamics of u at k_B T = 1 / beta, so from the mode and with the
    # same key, sqrt(beta) (Y - BX) follows the same path at every beta, with the same acceptance.
    mode = B @ X_GAUSS
    paths = []
    for beta in (1.0, 0.01):
        ys, acc, _ = run(jax.random.key(12), X_GAUSS, beta, mode)
        paths.append((np.sqrt(beta) * (np.asarray(ys) - np.asarray(mode)), float(acc)))
    if kernel != "baoab":  # (BAOAB has no Metropolis test: its acceptance is 1)
        assert paths[0][1] < 0.999  # the steps are not negligible
    np.testing.assert_allclose(paths[1][1], paths[0][1], rtol=1e-9)
    np.testing.assert_allclose(paths[1][0], paths[0][0], rtol=1e-6, atol=1e-9)


# Harmonic with stiff and soft coordinates and non-uniform masses: var(y_i) = 1 / (beta k_i).
K_HARM = jnp.array([100.0, 1.0, 0.04])
M_HARM = jnp.array([25.0, 1.0, 0.04])


def harmonic_energy(X, Y):
    return 0.5 * jnp.sum(K_HARM * Y**2) + 0.0 * jnp.sum(X)


@pytest.mark.parametrize(
    "settings",
    [
        # MALA is exact; the step moves y_i by about h / sqrt(m_i), i.e. h omega_i standard devs.
        ChainSettings(kernel="mala", step_size=0.5, n_chains=128, n_burn=100, n_keep=20, thin=5),
        ChainSettings(
            kernel="hmc",
            step_size=0.3,
            hmc_leapfrog=5,
            n_chains=128,
            n_burn=40,
            n_keep=20,
            thin=4,
        ),
        # BAOAB samples the configurations of a harmonic potential exactly (Leimkuhler and
        # Matthews 2013) while dt omega_i is well inside the stability limit 2 (here <= 0.4 with
        # omega_i = sqrt(beta k_i / m_i) <= 2), so the tolerance is purely statistical. Wrong
        # mass handling in the noise changes the temperature of the stiff and soft coordinates
        # and fails by far more than 5 standard errors.
        ChainSettings(
            kernel="baoab",
            step_size=0.2,
            friction=1.0,
            n_chains=128,
            n_burn=100,
            n_keep=20,
            thin=5,
        ),
    ],
    ids=["mala", "hmc", "baoab"],
)
def test_harmonic_variance_with_masses(settings):
    """Without the masses, the stiff coordinate (omega = 10) would make these steps unstable."""
    run = jax.jit(
        lambda key, beta: sample_conditional(
            key, harmonic_energy, jnp.zeros(1), beta, jnp.zeros(3), settings, mass=M_HARM
        )
    )
    for i, beta in enumerate((1.0, 0.5)):
        ys, acc = run(jax.random.key(20 + i), beta)
        assert 0.5 < float(acc) <= 1.0
        var_exact = 1.0 / (beta * np.asarray(K_HARM))
        _, _, v, v_se = _chain_moments(ys, settings.n_chains, np.zeros(3))
        assert np.all(v_se < 0.1 * var_exact)
        np.testing.assert_array_less(np.abs(v - var_exact), N_SIGMA * v_se)


def coupled_energy(X, Y):
    """n_x = 1, n_y = 2. p(X) ∝ exp(-beta X^2 / 2) / sqrt(beta (1 + X^2)) (the first coupling
    integrates to a constant), so -d/dX log p_beta(X) = beta X + X / (1 + X^2)."""
    x = X[0]
    return 0.5 * x**2 + 0.5 * 4.0 * (Y[0] - jnp.sin(x)) ** 2 + 0.5 * (1.0 + x**2) * Y[1] ** 2


def test_mean_force_nontrivial_coupling_vmapped_and_jitted_once():
    settings = ChainSettings(
        kernel="mala", step_size=0.5, n_chains=128, n_burn=60, n_keep=20, thin=4
    )
    mass = jnp.array([4.0, 1.0])  # precondition the stiffer coupling
    n_rep = 16
    traces = []

    def energy(X, Y):
        traces.append(1)
        return coupled_energy(X, Y)

    @jax.jit
    def batch_force(keys, Xs, beta):
        # keys (n_rep, n_batch), Xs (n_batch, 1): a batch of X as in a training update, replicated.
        per_x = jax.vmap(lambda k, X: mean_force(k, energy, X, beta, jnp.zeros(2), settings, mass))
        return jax.vmap(per_x, in_axes=(0, None))(keys, Xs)

    Xs = jnp.array([[-1.5], [0.3], [2.0]])
    for i, beta in enumerate((1.0, 0.5)):
        keys = jax.random.split(jax.random.key(30 + i), (n_rep, Xs.shape[0]))
        mf = batch_force(keys, Xs + 0.1 * i, beta)
        if i == 0:
            n_traces = len(traces)
            assert n_traces > 0
        x = np.asarray(Xs[:, 0]) + 0.1 * i
        exact = beta * x + x / (1.0 + x**2)
        forces = np.asarray(mf.force[..., 0])  # (n_rep, n_batch)
        assert forces.shape == (n_rep, 3)
        f_mean = forces.mean(axis=0)
        f_se = forces.std(axis=0, ddof=1) / np.sqrt(n_rep)
        assert np.all(f_se < 0.05)
        np.testing.assert_array_less(np.abs(f_mean - exact), N_SIGMA * f_se)
        # Leaving out the variance term (the force beta X of the averaging coupling alone) would
        # fail by more than 1.5 times the tolerance.
        assert np.all(np.abs(exact - beta * x) > 1.5 * N_SIGMA * f_se)
    assert len(traces) == n_traces  # the second call (new X and beta) did not retrace


def test_minimize_y_reaches_minimiser():
    y = jax.jit(lambda X: minimize_y(gaussian_energy, X, 1.0, jnp.zeros(3), 100, 0.01))(X_GAUSS)
    np.testing.assert_allclose(y, B @ X_GAUSS, atol=1e-8)

    # Stiff coordinate and a far too large lr: backtracking keeps the descent stable.
    def stiff(X, Y):
        return 0.5 * (1e4 * Y[0] ** 2 + Y[1] ** 2) + 0.0 * X[0]

    y0 = jnp.array([1.0, 1.0])
    y = minimize_y(stiff, jnp.zeros(1), 1.0, y0, 200, 10.0)
    assert np.all(np.isfinite(y))
    assert float(stiff(jnp.zeros(1), y)) < 1e-2 * float(stiff(jnp.zeros(1), y0))
    assert abs(float(y[0])) < 1e-3
    # Masses matched to the stiffness make it well conditioned: both coordinates converge.
    y = minimize_y(stiff, jnp.zeros(1), 1.0, y0, 60, 0.5, mass=jnp.array([1e4, 1.0]))
    np.testing.assert_allclose(y, 0.0, atol=1e-8)


def test_minimize_y_leaves_nonfinite_start():
    y0 = jnp.array([jnp.nan, 0.0, 0.0])
    y = minimize_y(gaussian_energy, X_GAUSS, 1.0, y0, 10, 0.01)
    assert np.isnan(float(y[0])) and float(y[1]) == 0.0


NAN_EDGE = float((B @ X_GAUSS)[0]) + 5 * S  # u is NaN (value and gradient) for y_0 > this


def nan_energy(X, Y):
    inside = Y[0] > NAN_EDGE
    # Double where: NaN value and gradient inside the region, exact Gaussian energy outside.
    bad = jnp.where(inside, jnp.nan * jnp.where(inside, Y[0], 0.0), 0.0)
    return gaussian_energy(X, Y) + bad


@pytest.mark.parametrize("kernel", ["mala", "hmc", "baoab"])
def test_nonfinite_states_are_counted_and_excluded(kernel):
    settings = _gauss_settings(kernel, n_chains=32, n_burn=40, n_keep=20, thin=2)
    run = jax.jit(lambda key, y0: mean_force(key, nan_energy, X_GAUSS, 1.0, y0, settings))
    good = jnp.broadcast_to(jnp.zeros(3), (settings.n_chains, 3))
    y0 = good.at[0, 0].set(NAN_EDGE + 1.0)  # chain 0 starts (and stays) in the NaN region
    mf = run(jax.random.key(40), y0)
    assert int(mf.n_nonfinite) == settings.n_keep
    assert np.all(np.isfinite(np.asarray(mf.force)))
    # 31 chains x 20 states: the force is still an estimate of beta X (per-state sd about 7).
    np.testing.assert_allclose(mf.force, X_GAUSS, atol=1.5)
    assert np.all(np.isfinite(np.asarray(mf.y_last[1:])))

    mf = run(jax.random.key(41), good.at[:, 0].set(NAN_EDGE + 1.0))
    assert int(mf.n_nonfinite) == settings.n_keep * settings.n_chains
    assert np.all(np.isnan(np.asarray(mf.force)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kernel", "nuts"),
        ("step_size", -1),
        ("step_size", 0.0),
        ("step_size", float("nan")),
        ("step_size", "big"),
        ("n_chains", 0),
        ("n_chains", 2.0),
        ("n_chains", True),
        ("n_burn", -1),
        ("n_keep", 0),
        ("thin", 0),
        ("hmc_leapfrog", 0),
        ("friction", -0.5),
        ("warm_start_steps", -3),
        ("warm_start_lr", 0),
    ],
)
def test_chain_settings_validation(field, value):
    with pytest.raises(ConfigError, match=rf"^\[chains\] {field}: expected .*got {value!r}"):
        ChainSettings(**{field: value})


def test_chain_settings_defaults_and_hashable():
    s = ChainSettings()
    assert (s.kernel, s.n_chains, s.n_steps) == ("mala", 4, 75)
    assert hash(s) == hash(ChainSettings())  # static: usable as a jit static argument
    assert jax.tree.leaves(s) == []


def _baoab_energy_means(k: float, h: float, gamma: float, n_steps: int) -> np.ndarray:
    """Exact E[beta u] per coordinate after 1 ... n_steps BAOAB steps of u = k y^2 / 2 (mass 1,
    beta 1), from y = 0 and p ~ N(0, 1): the (y, p) covariance propagated through each stage."""
    B = np.array([[1.0, 0.0], [-0.5 * h * k, 1.0]])
    A = np.array([[1.0, 0.5 * h], [0.0, 1.0]])
    c1 = np.exp(-gamma * h)
    O = np.diag([1.0, c1])  # noqa: E741
    cov = np.diag([0.0, 1.0])
    out = []
    for _ in range(n_steps):
        cov = A @ B @ cov @ B.T @ A.T
        cov = O @ cov @ O.T + np.diag([0.0, 1.0 - c1**2])
        cov = B @ A @ cov @ A.T @ B.T
        out.append(0.5 * k * cov[0, 0])
    return np.array(out)


@pytest.mark.parametrize("n_burn", [0, 150])
def test_heating_matches_exact_baoab_relaxation(n_burn):
    """From the minimum, E[beta u] rises to n_y / 2 along a curve that is exact for a harmonic
    u; the heating is that curve's mean over the last half of the kept states minus the first."""
    k, n_y, n_keep, thin = 2.0, 64, 20, 2
    settings = ChainSettings(
        kernel="baoab",
        step_size=0.2,
        friction=1.0,
        n_chains=8,
        n_burn=n_burn,
        n_keep=n_keep,
        thin=thin,
        warm_start_steps=0,
    )

    def energy(X, Y):
        return 0.5 * k * jnp.sum(Y**2) + 0.0 * X[0]

    per_step = n_y * _baoab_energy_means(k, 0.2, 1.0, settings.n_steps)
    kept = per_step[n_burn + thin - 1 :: thin]
    exact = kept[n_keep // 2 :].mean() - kept[: n_keep // 2].mean()
    keys = jax.random.split(jax.random.key(40), 64)
    run = jax.jit(
        jax.vmap(
            lambda key: mean_force(key, energy, jnp.zeros(1), 1.0, jnp.zeros(n_y), settings).heating
        )
    )
    heating = np.asarray(run(keys))
    mean, se = heating.mean(), heating.std(ddof=1) / np.sqrt(heating.size)
    assert abs(mean - exact) < N_SIGMA * se
    if n_burn == 0:
        assert exact > 4 * N_SIGMA * se  # still heating: far from zero
    else:
        assert abs(exact) < 0.01 * n_y / 2  # in equilibrium: no heating


def test_heating_is_nan_with_one_kept_state():
    settings = ChainSettings(kernel="baoab", step_size=0.1, n_chains=2, n_burn=5, n_keep=1)
    mf = mean_force(jax.random.key(0), gaussian_energy, X_GAUSS, 1.0, jnp.zeros(3), settings)
    assert np.isnan(mf.heating) and np.all(np.isfinite(mf.force))
