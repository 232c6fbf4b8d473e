"""Metrics: ESS, TV, mode masses, KL and JS against values known in closed form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from coarseflow.analysis.metrics import (
    ess,
    ess_fraction,
    histogram_kl_js,
    histogram_tv,
    kl_from_log_densities,
    log_mean_exp,
    mode_masses,
    normalized_weights,
    pareto_k,
    weighted_mean_stderr,
    weighted_proportion_stderr,
)


def test_ess_uniform_one_hot_and_two_level():
    n = 1000
    assert float(ess(jnp.full(n, -3.7))) == pytest.approx(n, rel=1e-12)
    assert float(ess_fraction(jnp.zeros(n))) == pytest.approx(1.0, rel=1e-12)
    one_hot = jnp.full(n, -jnp.inf).at[17].set(5.0)
    assert float(ess(one_hot)) == pytest.approx(1.0, rel=1e-12)
    # half the samples with weight 1, half with weight 3: ESS = (sum w)^2 / sum w^2 = n * 16/20
    log_w = jnp.log(jnp.concatenate([jnp.ones(n // 2), 3 * jnp.ones(n // 2)]))
    assert float(ess(log_w + 800.0)) == pytest.approx(n * 16 / 20, rel=1e-10)  # no overflow
    w = normalized_weights(log_w)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(w[-1] / w[0]) == pytest.approx(3.0, rel=1e-12)
    # jit-able with traced input
    assert float(jax.jit(ess_fraction)(log_w)) == pytest.approx(0.8, rel=1e-10)


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_pareto_k_recovers_the_tail_shape(k):
    # w = U^(-k), U uniform, is Pareto distributed with tail shape exactly k
    rng = np.random.default_rng(1)
    estimates = [pareto_k(-k * np.log(rng.random(10_000))) for _ in range(20)]
    assert np.mean(estimates) == pytest.approx(k, abs=0.06)  # measured 0.206 / 0.486 / 0.892


def test_pareto_k_invariances_and_edge_cases():
    rng = np.random.default_rng(2)
    log_w = 0.7 * -np.log(rng.random(5000))
    k = pareto_k(log_w)
    assert pareto_k(log_w + 900.0) == pytest.approx(k, abs=1e-9)  # scale of the weights
    with_zero = np.concatenate([log_w, np.full(100, -np.inf)])  # zero weights are not the tail
    assert pareto_k(with_zero) == pytest.approx(k, abs=1e-12)
    assert np.isnan(pareto_k(np.zeros(24)))
    assert pareto_k(np.zeros(1000)) == 0.0  # equal weights have no tail
    # a standard normal proposal for a target twice as wide has weights with infinite variance
    # (k = 3/4 asymptotically; measured 0.69); nearly equal weights give k near 0 (-0.06)
    x = rng.normal(size=20_000)
    assert pareto_k(stats.norm.logpdf(x, scale=2) - stats.norm.logpdf(x)) > 0.6
    assert pareto_k(np.zeros(20_000) + 1e-3 * rng.normal(size=20_000)) < 0.3


def test_weighted_mean_stderr_equal_weights_and_repeated_importance_sampling():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(500, 2))
    np.testing.assert_allclose(
        weighted_mean_stderr(f, np.ones(500)), f.std(axis=0) / np.sqrt(500), rtol=1e-12
    )
    # proposal N(0, 1), target N(0.5, 1): P(x > 0.5) = 1/2. The spread of 400 independent
    # self-normalised estimates matches the mean predicted error.
    estimates, predicted = [], []
    for _ in range(400):
        x = rng.normal(size=2000)
        w = np.exp(stats.norm.logpdf(x, 0.5) - stats.norm.logpdf(x))
        estimates.append(np.sum(w * (x > 0.5)) / w.sum())
        predicted.append(weighted_mean_stderr((x > 0.5).astype(float), w))
    assert np.mean(estimates) == pytest.approx(0.5, abs=3 * np.std(estimates) / 20)
    assert np.std(estimates) / np.mean(predicted) == pytest.approx(1.0, abs=0.1)  # 0.94


def test_proportion_stderr_covers_a_state_that_no_sample_reached():
    # a state of population 1e-3 seen by 500 equal-weight samples: no sample in it 61 % of the
    # time. The delta method then says 0 +- 0 (z infinite); the floor keeps |z| < 2 in
    # (nearly) every draw, and leaves the error of a sampled state as it was.
    rng = np.random.default_rng(4)
    z_delta, z_floor = [], []
    for _ in range(400):
        inside = (rng.random(500) < 1e-3).astype(float)
        w = np.ones(500)
        estimate = inside.mean()
        with np.errstate(divide="ignore", invalid="ignore"):
            z_delta.append(abs(estimate - 1e-3) / weighted_mean_stderr(inside, w))
        z_floor.append(abs(estimate - 1e-3) / weighted_proportion_stderr(inside, w))
    assert np.mean(np.isinf(z_delta)) > 0.5
    assert np.mean(np.asarray(z_floor) < 2.0) > 0.97
    half = (np.arange(500) < 250).astype(float)
    assert weighted_proportion_stderr(half, np.ones(500)) == weighted_mean_stderr(
        half, np.ones(500)
    )
    # the floor follows the weights' n_eff: four equal weights among zeros are n_eff = 4
    w = np.r_[np.ones(4), np.zeros(96)]
    p0 = 0.5 / 4
    assert weighted_proportion_stderr(np.zeros(100), w) == pytest.approx(
        math.sqrt(p0 * (1 - p0) / 4)
    )


def test_log_mean_exp():
    a = jnp.log(jnp.array([1.0, 2.0, 3.0, 6.0])) - 1000.0
    assert float(log_mean_exp(a)) == pytest.approx(math.log(3.0) - 1000.0, rel=1e-12)


def test_kl_from_log_densities_gaussians():
    # q = N(0, 1), p = N(0.5, 0.8^2) (bounded p/q, so the log Z estimate is well behaved):
    # KL(q||p) = log(0.8) + (1 + 0.5^2) / (2 * 0.8^2) - 1/2
    exact = math.log(0.8) + 1.25 / 1.28 - 0.5
    x = np.random.default_rng(0).normal(size=200_000)
    log_q = stats.norm.logpdf(x)
    log_p = stats.norm.logpdf(x, loc=0.5, scale=0.8)
    assert float(kl_from_log_densities(log_q, log_p)) == pytest.approx(exact, abs=3e-3)
    # unnormalised p: an additive constant is removed by normalize=True
    est = float(kl_from_log_densities(log_q, log_p + 12.3, normalize=True))
    assert est == pytest.approx(exact, abs=5e-3)
    assert float(kl_from_log_densities(log_q, log_q + 4.0, normalize=True)) == pytest.approx(
        0.0, abs=1e-9
    )


def test_histogram_tv_identical_disjoint_and_density():
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    assert histogram_tv(a, a, bins=40, range=(-4, 4)) == 0.0
    assert histogram_tv(a, a + 100.0, bins=40) == pytest.approx(1.0)
    # two-bin example: p = (0.25, 0.75), r = (0.5, 0.5) -> TV = 0.25
    s = np.array([0.1, 0.6, 0.7, 0.8])
    r = np.array([0.2, 0.3, 0.6, 0.9])
    assert histogram_tv(s, r, bins=2, range=(0.0, 1.0)) == pytest.approx(0.25)
    # weights: move mass so p = (0.5, 0.5) -> TV = 0
    assert histogram_tv(s, r, bins=2, range=(0, 1), weights=[3, 1, 1, 1]) == pytest.approx(0.0)
    # exact density callable: uniform on [0, 1] (1/4 per bin) vs all samples in the first bin
    assert histogram_tv(
        np.full(10, 0.2), lambda g: np.ones_like(g), 4, (0.0, 1.0)
    ) == pytest.approx(0.75)
    # a large normal sample against the normal pdf: small but positive
    big = rng.normal(size=200_000)
    tv = histogram_tv(big, stats.norm.pdf, bins=30, range=(-5, 5))
    assert 0.0 < tv < 0.01
    with pytest.raises(ValueError, match="range"):
        histogram_tv(a, stats.norm.pdf, bins=10)


def test_mode_masses():
    labels = np.array([0, 0, 1, 2, 2, 2])
    np.testing.assert_allclose(mode_masses(labels, 4), [2 / 6, 1 / 6, 3 / 6, 0.0])
    np.testing.assert_allclose(
        mode_masses(labels, 3, weights=[1, 1, 4, 0, 0, 2]), [0.25, 0.5, 0.25]
    )
    with pytest.raises(ValueError, match="labels"):
        mode_masses(labels, 2)


def test_histogram_kl_js_known_values():
    # a: all mass in bin (0, 0); b: half in (0, 0), half in (1, 1) (2x2 bins on the unit square)
    a = np.array([[0.25, 0.25]] * 4)
    b = np.array([[0.25, 0.25], [0.25, 0.25], [0.75, 0.75], [0.75, 0.75]])
    rng = ((0.0, 1.0), (0.0, 1.0))
    kl, js = histogram_kl_js(a, b, bins=2, range=rng, smoothing=0.0)
    assert kl == pytest.approx(math.log(2.0))
    # m = (3/4, 1/4): JS = 1/2 log(4/3) + 1/2 (1/2 log(2/3) + 1/2 log 2)
    want_js = 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2.0))
    assert js == pytest.approx(want_js)
    kl_ba, _ = histogram_kl_js(b, a, bins=2, range=rng, smoothing=0.0)
    assert kl_ba == math.inf
    # with one pseudo-count per bin: a -> (5, 1, 1, 1)/8, b -> (3, 1, 1, 3)/8
    kl_s, _ = histogram_kl_js(b, a, bins=2, range=rng, smoothing=1.0)
    p, q = np.array([3, 1, 1, 3]) / 8, np.array([5, 1, 1, 1]) / 8
    assert kl_s == pytest.approx(float(np.sum(p * np.log(p / q))))
    # identical sets: zero; disjoint: JS = log 2
    assert histogram_kl_js(b, b, bins=2, range=rng) == (0.0, 0.0)
    _, js_dis = histogram_kl_js(a, a + 0.5, bins=2, range=rng, smoothing=0.0)
    assert js_dis == pytest.approx(math.log(2.0))
    # weights act as counts: weighting b's second half to zero makes it equal to a
    kl_w, js_w = histogram_kl_js(a, b, bins=2, range=rng, smoothing=0.0, weights_b=[1, 1, 0, 0])
    assert kl_w == pytest.approx(0.0, abs=1e-15) and js_w == pytest.approx(0.0, abs=1e-15)


def test_log_partition_stderr_matches_the_spread_over_independent_sample_sets():
    """Log-normal weights (sigma 0.5 and 1): the bootstrap error of log Z-hat from one set of
    2,000 agrees with its standard deviation over 300 independent sets, within a quarter."""
    from coarseflow.analysis.metrics import log_partition_stderr

    for sigma in (0.5, 1.0):
        sets = np.random.default_rng(0).normal(0.0, sigma, (300, 2000))
        spread = np.std([np.log(np.mean(np.exp(s))) for s in sets], ddof=1)
        for s in sets[:3]:
            assert log_partition_stderr(s) == pytest.approx(spread, rel=0.25), sigma
    assert log_partition_stderr(sets[0]) == log_partition_stderr(sets[0])  # fixed seed
    assert log_partition_stderr(np.zeros(50)) == 0.0
    assert log_partition_stderr(np.full(50, -np.inf)) == float("inf")
