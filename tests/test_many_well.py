"""ManyWell (FAB's ManyWell-32): energy, exact references, support box, validation."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import coarseflow
from coarseflow.errors import ConfigError
from coarseflow.targets import ManyWell


def _log_p_pair(x1, x2):
    """FAB's 2D double well with a = -0.5, b = -6, c = 1, written out independently."""
    a, b, c = -0.5, -6.0, 1.0
    return -(a * x1 + b * x1**2 + c * x1**4) - 0.5 * x2**2


def _trapezoid_log_z1(beta, h=1e-3):
    """log ∫ exp(beta (-x^4 + 6 x^2 + 0.5 x)) dx by the trapezoid rule on [-12, 12]."""
    x = np.arange(-12.0, 12.0 + h / 2, h)
    f = beta * (-(x**4) + 6 * x**2 + 0.5 * x)
    fmax = f.max()
    return fmax + math.log(np.trapezoid(np.exp(f - fmax), dx=h))


def test_energy_is_fab_formula_and_partition_interleaved():
    mw = ManyWell(n_wells=3)
    assert mw.n == 6 and mw.partition.x_indices == (0, 2, 4)
    assert mw.partition.y_indices == (1, 3, 5)
    x = np.random.default_rng(0).normal(scale=2.0, size=(5, 6))
    u = np.asarray(jax.vmap(mw.energy)(jnp.asarray(x)))
    expected = -sum(_log_p_pair(x[:, 2 * i], x[:, 2 * i + 1]) for i in range(3))
    np.testing.assert_allclose(u, expected, rtol=1e-13)
    # score = -beta d(u)/dX exactly
    X = jnp.asarray(x[0, 0::2])
    grad = jax.grad(lambda X: mw.energy_xy(X, jnp.zeros(3)))(X)
    np.testing.assert_allclose(mw.score(X, 0.3), -0.3 * grad, rtol=1e-13)


@pytest.mark.parametrize("beta", [0.01, 0.2, 1.0])
def test_log_partition_against_independent_integrals(beta):
    mw = ManyWell()
    z1 = integrate.quad(
        lambda x: math.exp(beta * _log_p_pair(x, 0.0) - 10 * beta),
        -np.inf,
        np.inf,
        epsabs=0,
        epsrel=1e-12,
        limit=200,
    )[0]
    ref = 16 * (math.log(z1) + 10 * beta + 0.5 * math.log(2 * math.pi / beta))
    assert mw.log_partition(beta) == pytest.approx(ref, rel=1e-11)
    assert mw.log_partition_x1(beta) == pytest.approx(_trapezoid_log_z1(beta), abs=1e-9)


def test_log_partition_m1_by_2d_trapezoid():
    mw, beta, h = ManyWell(n_wells=1), 0.7, 0.01
    g1, g2 = np.arange(-5, 5 + h / 2, h), np.arange(-12, 12 + h / 2, h)
    x = np.stack(np.meshgrid(g1, g2, indexing="ij"), axis=-1).reshape(-1, 2)
    u = np.asarray(jax.vmap(mw.energy)(jnp.asarray(x)))
    m = (-beta * u).max()
    log_z = m + math.log(np.sum(np.exp(-beta * u - m)) * h * h)
    assert mw.log_partition(beta) == pytest.approx(log_z, abs=1e-9)


def test_manywell32_log_z_matches_fab():
    # FAB's 2D double well normaliser: Z_x1 ≈ 11784.50927, Z_x2 = sqrt(2 pi)
    assert ManyWell().log_partition() == pytest.approx(
        16 * (math.log(11784.50927) + 0.5 * math.log(2 * math.pi)), abs=1e-8
    )


def test_conditional_gaussian_is_exact():
    mw, beta = ManyWell(n_wells=4), 0.37
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=4))
    mean, std = mw.conditional_gaussian(X, beta)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_allclose(std, 1 / math.sqrt(beta), rtol=1e-14)
    np.testing.assert_array_equal(mw.y_init(X), 0.0)
    # beta u(X, Y) - beta u(X, 0) = 0.5 |Y - mean|^2 / std^2, for any Y
    for Y in rng.normal(scale=3.0, size=(3, 4)):
        Y = jnp.asarray(Y)
        du = beta * (mw.energy_xy(X, Y) - mw.energy_xy(X, jnp.zeros(4)))
        assert float(du) == pytest.approx(float(0.5 * jnp.sum(((Y - mean) / std) ** 2)), rel=1e-12)


def test_marginal_normalised_and_well_mass():
    mw, beta, h = ManyWell(), 0.5, 1e-3
    x = np.arange(-8, 8 + h / 2, h)
    p = np.exp(mw.log_marginal_1d(x, beta))
    assert np.trapezoid(p, dx=h) == pytest.approx(1.0, abs=1e-10)
    assert mw.well_mass(beta) == pytest.approx(np.trapezoid(p[x >= 0], dx=h), abs=1e-6)
    assert mw.well_mass(1.0) == pytest.approx(0.8443070962, abs=1e-9)
    X = np.random.default_rng(2).normal(size=(3, 16))
    np.testing.assert_allclose(mw.log_marginal(X, beta), mw.log_marginal_1d(X, beta).sum(-1))


@pytest.mark.parametrize("support_beta", [0.01, 0.1])
def test_box_holds_the_mass(support_beta):
    mw = ManyWell(support_beta=support_beta)
    lo, hi = mw.x_bounds()
    assert lo.shape == hi.shape == (16,) and np.all(lo < -1.8) and np.all(hi > 1.8)
    h = 1e-4
    for beta in (support_beta, 0.3, 1.0):
        x = np.arange(-20, 20 + h / 2, h)
        p = np.exp(mw.log_marginal_1d(x, beta))
        out = np.trapezoid(np.where((x < lo[0]) | (x > hi[0]), p, 0.0), dx=h)
        assert out <= 1.05e-8  # per coordinate, independently of box_mass_lost
        assert mw.box_mass_lost(beta) <= 16 * 1e-8 * (1 + 1e-6)
    # tight at support_beta: the per-coordinate tail is 1e-8 there
    assert mw.box_mass_lost(support_beta) == pytest.approx(1.6e-7, rel=1e-4)
    assert hi[0] < ManyWell(support_beta=support_beta / 2).x_bounds()[1][0]


def test_exact_samples():
    mw = ManyWell(n_wells=4)
    x = np.asarray(mw.sample(jax.random.key(0), 40_000))
    assert x.shape == (40_000, 8)
    frac = (x[:, 0::2] > 0).mean()
    assert frac == pytest.approx(mw.well_mass(1.0), abs=4 * math.sqrt(0.25 / 160_000))
    assert x[:, 1::2].std() == pytest.approx(1.0, abs=0.01)
    x_hot = np.asarray(mw.sample(jax.random.key(1), 40_000, beta=0.1))
    assert x_hot[:, 1::2].std() == pytest.approx(math.sqrt(10), rel=0.01)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_wells": 0}, "n_wells"),
        ({"n_wells": 2.0}, "n_wells"),
        ({"n_wells": True}, "n_wells"),
        ({"support_beta": 0.0}, "support_beta"),
        ({"support_beta": 1.5}, "support_beta"),
        ({"support_beta": "0.1"}, "support_beta"),
        ({"support_beta": math.nan}, "support_beta"),
    ],
)
def test_validation(kwargs, key):
    with pytest.raises(ConfigError, match=f"^many_well {key}: expected") as err:
        ManyWell(**kwargs)
    assert "\n" not in str(err.value)


def test_shipped_config_builds_the_target(monkeypatch):
    import tomllib

    from coarseflow import config as config_module
    from coarseflow.config import load_config, target_classes

    path = Path(coarseflow.__file__).parent / "configs" / "many_well_32.toml"
    table = dict(tomllib.loads(path.read_text())["target"])
    assert table.pop("kind") == "many_well"
    assert ManyWell(**table).n == 32
    # the whole config parses once config.py registers the kind (patched in until then)
    kinds = target_classes()
    monkeypatch.setattr(config_module, "target_classes", lambda: kinds | {"many_well": ManyWell})
    config = load_config(path)
    assert config.tempering.first_beta() == 0.01


def test_reference_metrics_with_exact_samples():
    from coarseflow.analysis.evaluation import reference_metrics
    from coarseflow.predict.draw import Samples

    mw, n = ManyWell(n_wells=4), 20_000
    x = np.asarray(mw.sample(jax.random.key(3), n))
    X = x[:, 0::2]
    u = np.asarray(jax.vmap(mw.energy)(jnp.asarray(x)))
    log_q = (
        np.asarray(mw.log_marginal(X))
        - 0.5 * np.sum(x[:, 1::2] ** 2, 1)
        - 2 * math.log(2 * math.pi)
    )
    s = Samples(
        x=x,
        X=X,
        log_qX=np.asarray(mw.log_marginal(X)),
        log_q=log_q,
        energy=u,
        log_weights=-u - log_q,
        ais_acceptance=np.full(n, np.nan),
    )
    out = reference_metrics(mw, s, 1.0)
    # q = p exactly: every weight is Z, so log Z is exact and raw = reweighted
    assert out["log_Z_exact"] == pytest.approx(mw.log_partition(1.0), abs=1e-12)
    assert abs(out["log_Z_error"]) < 1e-9
    assert out["max_right_well_error_raw"] == pytest.approx(
        out["max_right_well_error_reweighted"], abs=1e-9
    )
    assert out["max_right_well_error_raw"] < 0.02
