"""Targets: energies match their formulas, exact references match independent computations."""

import doctest
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import coarseflow.targets.energy as energy_module
from coarseflow.errors import ConfigError
from coarseflow.partition import Partition
from coarseflow.targets import AbstractTarget, DoubleWell, EnergyTarget, GaussianMixture

# ---- DoubleWell ----


def _v(x):
    return 0.25 * x**4 - 3.0 * x**2 + x


def test_double_well_energy_matches_formula():
    t = DoubleWell()
    assert isinstance(t, AbstractTarget)
    rng = np.random.default_rng(1)
    xs = rng.normal(scale=2.0, size=(20, 2))
    got = np.asarray(jax.vmap(t.energy)(jnp.asarray(xs)))
    want = 0.25 * xs[:, 0] ** 4 - 3 * xs[:, 0] ** 2 + xs[:, 0] + 0.5 * xs[:, 1] ** 2
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert t.partition.x_indices == (0,) and t.partition.y_indices == (1,)
    lo, hi = t.x_bounds()
    assert lo.shape == (1,) and hi.shape == (1,) and lo[0] == -9.0 and hi[0] == 9.0


def test_double_well_marginal_and_well_mass_against_grid_quadrature():
    t = DoubleWell()
    grid = np.linspace(-12.0, 12.0, 240_001)
    dens = t.marginal_density(grid, 1.0)
    assert integrate.simpson(dens, x=grid) == pytest.approx(1.0, abs=1e-10)
    assert t.well_mass(1.0) == pytest.approx(0.00835, abs=1e-5)
    # independent: Simpson on fine grids either side of x1 = 0 of the unnormalised density
    left_grid, right_grid = np.linspace(-12.0, 0.0, 120_001), np.linspace(0.0, 12.0, 120_001)
    for beta in (1.0, 0.1):
        left = integrate.simpson(np.exp(-beta * _v(left_grid)), x=left_grid)
        right = integrate.simpson(np.exp(-beta * _v(right_grid)), x=right_grid)
        assert t.well_mass(beta) == pytest.approx(right / (left + right), rel=1e-9)
    assert integrate.simpson(t.marginal_density(grid, 0.05), x=grid) == pytest.approx(1.0, abs=1e-8)


def test_double_well_log_partition_against_2d_grid():
    t = DoubleWell()
    for beta in (1.0, 0.2):
        x1 = np.linspace(-10.0, 10.0, 4001)
        x2 = np.linspace(-40.0, 40.0, 1601)
        u = _v(x1)[:, None] + 0.5 * x2[None, :] ** 2
        z = integrate.simpson(integrate.simpson(np.exp(-beta * u), x=x2, axis=1), x=x1)
        assert t.log_partition(beta) == pytest.approx(math.log(z), abs=1e-7)


def test_double_well_box_holds_mass_above_documented_beta():
    t = DoubleWell()
    lo, hi = t.x_bounds()
    grid = np.linspace(-30.0, 30.0, 600_001)
    for beta, ok in ((0.0076, True), (1e-2, True), (1e-3, False)):
        d = t.marginal_density(grid, beta)
        inside = integrate.simpson(np.where((grid >= lo[0]) & (grid <= hi[0]), d, 0.0), x=grid)
        assert bool(1.0 - inside < 1e-6) == ok, (beta, 1.0 - inside)


def test_double_well_conditional_and_score():
    t = DoubleWell()
    X = jnp.array([0.7])
    for beta in (1.0, 0.3):
        mean, std = jax.jit(t.conditional_gaussian)(X, beta)
        assert float(mean[0]) == 0.0 and float(std[0]) == pytest.approx(1 / math.sqrt(beta))
        g = jax.jit(jax.grad(lambda x, b: -b * t.energy(jnp.array([x[0], 0.3]))))(X, beta)
        np.testing.assert_allclose(t.score(X, beta), g, rtol=1e-12)


def test_double_well_validation():
    with pytest.raises(ConfigError, match="bound"):
        DoubleWell(bound=-1.0)
    with pytest.raises(ConfigError, match="bound"):
        DoubleWell(bound="nine")
    with pytest.raises(ValueError, match="beta"):
        DoubleWell().well_mass(0.0)


# ---- GaussianMixture ----


@pytest.fixture(scope="module")
def gmm2():
    return GaussianMixture(n_x=2)


def test_gmm_parameters_drawn_from_seed(gmm2):
    rng = np.random.default_rng(0)
    means = rng.uniform(-1, 1, size=(3, 2))
    B = rng.normal(size=(2, 2))
    np.testing.assert_array_equal(np.asarray(gmm2.means), means)
    np.testing.assert_array_equal(np.asarray(gmm2.B), B)
    np.testing.assert_allclose(gmm2.component_weights, np.full(3, 1 / 3))
    assert gmm2.partition.x_indices == (0, 1) and gmm2.partition.y_indices == (2, 3)
    g10 = GaussianMixture(n_x=10)
    assert g10.n_y == 10 and g10.means.shape == (3, 10) and g10.B.shape == (10, 10)


def test_gmm_log_marginal_normalised_and_matches_formula(gmm2):
    h = 0.01
    ax = np.arange(-2.0, 2.0 + h / 2, h)
    pts = np.stack(np.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    p = np.exp(np.asarray(gmm2.log_marginal(jnp.asarray(pts))))
    assert p.sum() * h * h == pytest.approx(1.0, abs=1e-8)
    # formula at one point, by hand
    X = np.array([0.2, -0.4])
    m = np.asarray(gmm2.means)
    dens = sum(np.exp(-0.5 * np.sum((X - mk) ** 2) / 0.01) / (2 * np.pi * 0.01) for mk in m) / 3
    assert float(gmm2.log_marginal(jnp.asarray(X))) == pytest.approx(np.log(dens), rel=1e-12)
    # single and batched calls agree
    assert float(jax.vmap(gmm2.log_marginal)(jnp.asarray(X)[None])[0]) == pytest.approx(
        np.log(dens), rel=1e-12
    )


def test_gmm_score_is_beta_times_grad_log_marginal(gmm2):
    rng = np.random.default_rng(3)
    Xs = jnp.asarray(rng.uniform(-1.2, 1.2, size=(8, 2)))
    g = jax.jit(jax.vmap(jax.grad(lambda X: gmm2.log_marginal(X))))(Xs)
    score = jax.jit(jax.vmap(lambda X, b: gmm2.score(X, b), in_axes=(0, None)))  # traced beta
    for beta in (1.0, 0.37, 2.0):
        np.testing.assert_allclose(score(Xs, beta), beta * g, rtol=1e-9, atol=1e-9)
    # and equals the conditional mean force -beta E_{Y|X}[grad_X u]: since grad_X u(X, BX) is
    # exactly -grad log p(X) at the conditional mean for this model
    X = Xs[0]
    fx = jax.jit(jax.grad(lambda X_: gmm2.energy_xy(X_, gmm2.B @ X)))(X)
    np.testing.assert_allclose(score(X[None], 0.5)[0], -0.5 * fx, rtol=1e-9)


def test_gmm_conditional_gaussian_is_exact(gmm2):
    rng = np.random.default_rng(4)
    X = jnp.asarray(rng.uniform(-1, 1, size=2))
    exy = jax.jit(lambda X_, Y_: gmm2.energy_xy(X_, Y_))
    for beta in (1.0, 0.05):
        mean, std = jax.jit(lambda X_, b: gmm2.conditional_gaussian(X_, b))(X, beta)
        np.testing.assert_allclose(mean, gmm2.B @ X, rtol=1e-12)
        np.testing.assert_allclose(std, np.full(2, 0.1 / math.sqrt(beta)), rtol=1e-12)
        # beta * (u(X, Y) - min_Y u(X, Y)) is exactly the Gaussian quadratic form
        u_min = exy(X, mean)
        for _ in range(5):
            Y = mean + jnp.asarray(rng.normal(size=2))
            quad = 0.5 * jnp.sum(((Y - mean) / std) ** 2)
            assert float(beta * (exy(X, Y) - u_min)) == pytest.approx(float(quad), rel=1e-9)
    np.testing.assert_allclose(gmm2.y_init(X), mean)


def test_gmm_sample_moments_and_component_assignment(gmm2):
    x, comp = gmm2.sample(jax.random.key(0), 60_000, return_components=True)
    assert x.shape == (60_000, 4)
    x, comp = np.asarray(x), np.asarray(comp)
    X, Y = x[:, :2], x[:, 2:]
    frac = np.bincount(comp, minlength=3) / comp.shape[0]
    np.testing.assert_allclose(frac, np.full(3, 1 / 3), atol=0.01)
    for k in range(3):
        Xk = X[comp == k]
        np.testing.assert_allclose(Xk.mean(0), np.asarray(gmm2.means[k]), atol=0.004)
        np.testing.assert_allclose(Xk.std(0), np.full(2, 0.1), rtol=0.03)
    resid = Y - X @ np.asarray(gmm2.B).T
    np.testing.assert_allclose(resid.std(0), np.full(2, 0.1), rtol=0.02)
    # component_of recovers the generating component (the means of seed 0 are well separated)
    assert np.mean(np.asarray(gmm2.component_of(X)) == comp) > 0.999
    np.testing.assert_array_equal(gmm2.component_of(gmm2.means), np.arange(3))


def test_gmm_energy_is_minus_log_density_and_log_partition(gmm2):
    x = gmm2.sample(jax.random.key(1), 3)

    @jax.jit
    def both(x):
        X, Y = gmm2.partition.split(x)
        want = -gmm2.log_marginal(X) - jax.vmap(gmm2.log_conditional)(X, Y)
        return jax.vmap(gmm2.energy)(x), want

    np.testing.assert_allclose(*both(x), rtol=1e-12)
    assert gmm2.log_partition(1.0) == 0.0
    # the quadrature path, checked where the answer is known (beta -> 1) ...
    assert gmm2._log_x_integral(1.0) == pytest.approx(0.0, abs=1e-10)
    # ... and against scipy quad in 1D at a tempered beta
    g1 = GaussianMixture(n_x=1, n_components=2, weights=[1.0, 3.0], seed=5)
    beta = 0.3
    m = np.asarray(g1.means)[:, 0]

    def pbeta(X):
        p = 0.25 * np.exp(-0.5 * (X - m[0]) ** 2 / 0.01) + 0.75 * np.exp(
            -0.5 * (X - m[1]) ** 2 / 0.01
        )
        return (p / np.sqrt(2 * np.pi * 0.01)) ** beta

    zx = integrate.quad(pbeta, -10, 10, points=list(m), epsabs=0, epsrel=1e-12, limit=200)[0]
    zy = np.sqrt(2 * np.pi * 0.01) ** (1 - beta) / np.sqrt(beta)
    assert g1.log_partition(beta) == pytest.approx(np.log(zx * zy), abs=1e-9)
    with pytest.raises(ValueError, match="n_x > 2"):
        GaussianMixture(n_x=10).log_partition(0.5)


def test_gmm_box_holds_tempered_mass(gmm2):
    lo, hi = gmm2.x_bounds()
    assert np.all(lo < -5.0) and np.all(hi > 5.0) and np.all(hi - lo < 13.0)
    beta = 1e-2
    assert gmm2.box_mass_lost_bound(beta) <= 1e-6
    # direct check on a grid at beta = 1e-2 (p^beta has width 1): mass outside the box is tiny
    h = 0.02
    ax = np.arange(-12.0, 12.0, h)
    pts = np.stack(np.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    w = np.exp(beta * np.asarray(gmm2.log_marginal(jnp.asarray(pts))))
    inside = np.all((pts >= lo) & (pts <= hi), axis=1)
    lost = w[~inside].sum() / w.sum()
    assert lost < gmm2.box_mass_lost_bound(beta)
    assert lost > 1e-9  # the box is not absurdly large either


def test_gmm_validation():
    with pytest.raises(ConfigError, match="n_x"):
        GaussianMixture(n_x=0)
    with pytest.raises(ConfigError, match="weights"):
        GaussianMixture(weights=[0.5, 0.5])
    with pytest.raises(ConfigError, match="weights"):
        GaussianMixture(weights=[1.0, -1.0, 1.0])
    with pytest.raises(ConfigError, match="cond_width"):
        GaussianMixture(cond_width=0.0)
    with pytest.raises(ConfigError, match="support_beta"):
        GaussianMixture(support_beta=2.0)


def test_gmm_is_jittable_as_a_pytree(gmm2):
    x = gmm2.sample(jax.random.key(2), 4)
    e1 = jax.jit(lambda t, xs: jax.vmap(t.energy)(xs))(gmm2, x)
    e2 = eqx.filter_jit(lambda t, xs: jax.vmap(t.energy)(xs))(gmm2, x)
    np.testing.assert_allclose(e1, e2, rtol=1e-12)


# ---- EnergyTarget ----


def _u(x):
    return jnp.sum(x**2)


def test_energy_target_wraps_function_and_bounds():
    part = Partition.from_x(3, [2])
    t = EnergyTarget(_u, part, lower=-2.0, upper=[3.0])
    assert float(t.energy(jnp.array([1.0, 2.0, 3.0]))) == 14.0
    lo, hi = t.x_bounds()
    np.testing.assert_array_equal(lo, [-2.0])
    np.testing.assert_array_equal(hi, [3.0])
    assert float(t.energy_xy(jnp.array([3.0]), jnp.array([1.0, 2.0]))) == 14.0


def test_energy_target_validation():
    part = Partition.from_x(3, [0, 1])
    with pytest.raises(ConfigError, match="lower"):
        EnergyTarget(_u, part, lower=[0.0, 0.0, 0.0], upper=1.0)
    with pytest.raises(ConfigError, match="upper"):
        EnergyTarget(_u, part, lower=0.0, upper=[[1.0, 1.0]])
    with pytest.raises(ConfigError, match="lower < upper"):
        EnergyTarget(_u, part, lower=[0.0, 2.0], upper=[1.0, 1.0])
    with pytest.raises(ConfigError, match="finite"):
        EnergyTarget(_u, part, lower=-np.inf, upper=1.0)
    with pytest.raises(ConfigError, match="scalar"):
        EnergyTarget(lambda x: x**2, part, lower=-1.0, upper=1.0)
    with pytest.raises(ConfigError, match="energy_fn: failed"):
        EnergyTarget(lambda x: x @ jnp.ones(5), part, lower=-1.0, upper=1.0)
    with pytest.raises(ConfigError, match="callable"):
        EnergyTarget("u", part, lower=-1.0, upper=1.0)
    with pytest.raises(ConfigError, match="partition"):
        EnergyTarget(_u, [0, 1], lower=-1.0, upper=1.0)


def test_energy_target_docstring_example_runs():
    tests = doctest.DocTestFinder().find(energy_module.EnergyTarget, "EnergyTarget", globs={})
    runner = doctest.DocTestRunner()
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0
    assert sum(len(t.examples) for t in tests) >= 5
