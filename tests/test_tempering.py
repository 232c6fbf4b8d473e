"""Tempering schedules: fixed ladders, the adaptive step on an exactly solvable Gaussian, config."""

import math

import numpy as np
import pytest

from coarseflow.errors import ConfigError
from coarseflow.tempering.adaptive import (
    Adaptive,
    estimate_kl_increase,
    incremental_ess_fraction,
)
from coarseflow.tempering.config import schedule_from_config, schedule_to_config
from coarseflow.tempering.schedules import Explicit, Geometric, Linear


def run_ladder(schedule, energies_fn=None):
    betas = [schedule.first_beta()]
    while True:
        energies = None if energies_fn is None else energies_fn(betas[-1])
        nxt = schedule.next_beta(betas[-1], energies)
        if nxt is None:
            return betas
        betas.append(nxt)
        assert len(betas) < 10_000


# ----------------------------------------------------------------------------- fixed ladders


def test_linear_ladder_exact():
    betas = run_ladder(Linear(beta0=0.01, n_betas=10))
    np.testing.assert_allclose(betas, 0.01 + 0.11 * np.arange(10), rtol=0, atol=1e-15)
    assert betas[-1] == 1.0 and len(betas) == 10


def test_geometric_ladder_exact():
    betas = run_ladder(Geometric(beta0=0.01, n_betas=5))
    np.testing.assert_allclose(betas, [0.01, 10**-1.5, 0.1, 10**-0.5, 1.0], rtol=1e-14)
    assert betas[0] == 0.01 and betas[-1] == 1.0
    ratios = np.diff(np.log(betas))
    np.testing.assert_allclose(ratios, math.log(10) / 2, rtol=1e-12)


def test_two_rung_ladders_and_off_ladder_beta():
    assert run_ladder(Linear(beta0=0.5, n_betas=2)) == [0.5, 1.0]
    sched = Linear(beta0=0.1, n_betas=4)  # 0.1, 0.4, 0.7, 1.0
    assert sched.next_beta(0.25, None) == pytest.approx(0.4, abs=1e-15)
    assert sched.next_beta(0.4 + 1e-14, None) == pytest.approx(0.7, abs=1e-15)  # same rung
    assert sched.next_beta(1.0, None) is None


def test_explicit_ladder_and_list_input():
    sched = Explicit([0.001, 0.1, 0.5, 1])
    assert sched.betas == (0.001, 0.1, 0.5, 1.0)
    assert run_ladder(sched) == [0.001, 0.1, 0.5, 1.0]
    assert run_ladder(Explicit((1.0,))) == [1.0]


@pytest.mark.parametrize(
    "betas, match",
    [
        ((0.1, 0.1, 1.0), r"betas: expected strictly increasing.*betas\[1\] = 0.1"),
        ((0.5, 0.2, 1.0), r"betas: expected strictly increasing"),
        ((0.1, 0.5), r"betas: expected a last value of 1 .*, got 0.5$"),
        ((0.0, 0.5, 1.0), r"betas\[0\]: expected a number in \(0, 1\], got 0.0"),
        ((0.5, 1.5), r"betas\[1\]: expected a number in \(0, 1\], got 1.5"),
        ((-0.1, 1.0), r"betas\[0\]"),
        ((), r"betas: expected a non-empty list"),
        (("0.1", 1.0), r"betas: expected a non-empty list of numbers"),
        ((float("nan"), 1.0), r"betas\[0\]"),
    ],
)
def test_explicit_validation(betas, match):
    with pytest.raises(ConfigError, match=r"^\[tempering\] " + match):
        Explicit(betas)


@pytest.mark.parametrize("cls", [Linear, Geometric, Adaptive])
def test_beta0_validation(cls):
    with pytest.raises(
        ConfigError, match=r"^\[tempering\] beta0: expected a number in \(0, 1\), got 2$"
    ):
        cls(beta0=2)
    with pytest.raises(ConfigError, match=r"beta0: .* got 'x'"):
        cls(beta0="x")
    with pytest.raises(ConfigError, match=r"beta0: .* got True"):
        cls(beta0=True)


def test_n_betas_validation():
    with pytest.raises(ConfigError, match=r"n_betas: expected an integer >= 2, got 1$"):
        Linear(n_betas=1)
    with pytest.raises(ConfigError, match=r"n_betas: expected an integer >= 2, got 10.0$"):
        Geometric(n_betas=10.0)


def test_next_beta_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        Linear().next_beta(1.5, None)
    with pytest.raises(ValueError, match="beta"):
        Adaptive().next_beta(0.0, np.ones(10))


# ----------------------------------------------------------------------------- adaptive


def exact_gaussian_kl(b, b2):
    """KL(N(0, 1/b) || N(0, 1/b2)) = (r - 1 - log r) / 2 with r = b2 / b."""
    r = b2 / b
    return 0.5 * (r - 1.0 - math.log(r))


def gaussian_energies(rng, n):
    """u = x^2/2 at exact samples x ~ N(0, 1/beta) = p_beta."""
    return lambda beta: 0.5 * (rng.standard_normal(n) / math.sqrt(beta)) ** 2


def test_kl_estimator_matches_exact_gaussian_kl():
    rng = np.random.default_rng(0)
    beta, delta, n = 0.2, 0.15, 200_000
    u = gaussian_energies(rng, n)(beta)
    exact = exact_gaussian_kl(beta, beta + delta)  # 0.0663
    est = estimate_kl_increase(u, delta)
    assert est == pytest.approx(exact, rel=0.03)
    assert est == pytest.approx(delta * u.mean() + math.log(np.mean(np.exp(-delta * u))), rel=1e-12)
    assert estimate_kl_increase(u, 0.0) == 0.0
    # ESS fraction: (E w)^2 / E w^2 = sqrt(2r - 1) / r for this Gaussian
    r = (beta + delta) / beta
    w = np.exp(-delta * u)
    assert incremental_ess_fraction(u, delta) == pytest.approx(w.sum() ** 2 / (n * (w**2).sum()))
    assert incremental_ess_fraction(u, delta) == pytest.approx(math.sqrt(2 * r - 1) / r, rel=0.01)


def test_adaptive_kl_ladder_on_gaussian_reaches_one():
    rng = np.random.default_rng(1)
    sched = Adaptive(beta0=0.01, max_kl_increase=0.1, max_step=0.5)
    energies = gaussian_energies(rng, 20_000)
    betas = [sched.first_beta()]
    while (b := betas[-1]) < 1.0:
        u = energies(b)
        nxt = sched.next_beta(b, u)
        assert b < nxt <= 1.0
        assert estimate_kl_increase(u, nxt - b) <= 0.1 + 1e-9
        if nxt < 1.0 and nxt - b < 0.5:  # step set by the KL criterion: it binds
            assert estimate_kl_increase(u, nxt - b) == pytest.approx(0.1, rel=1e-6)
            assert exact_gaussian_kl(b, nxt) == pytest.approx(0.1, abs=0.01)
        betas.append(nxt)
    assert betas[-1] == 1.0
    assert np.all(np.diff(betas) > 0)
    assert sched.next_beta(1.0, energies(1.0)) is None
    # Exact KL = 0.1 <=> r = b'/b = 1.771 (r - 1 - log r = 0.2): log(100)/log(1.771) = 8.1 steps
    assert 9 <= len(betas) <= 11, betas
    b = np.array(betas)
    uncapped = (b[1:] - b[:-1] < 0.5) & (b[1:] < 1.0)
    assert uncapped.sum() >= 7
    np.testing.assert_allclose(b[1:][uncapped] / b[:-1][uncapped], 1.771, rtol=0.03)


def test_adaptive_ess_criterion():
    rng = np.random.default_rng(2)
    sched = Adaptive(beta0=0.05, max_kl_increase=None, min_ess_fraction=0.9)
    beta = 0.05
    u = gaussian_energies(rng, 50_000)(beta)
    nxt = sched.next_beta(beta, u)
    # sqrt(2r - 1)/r = 0.9  =>  r = (2 + sqrt(4 - 4 * 0.81)) / (2 * 0.81) = 1.7727
    r_exact = (2 + math.sqrt(4 - 4 * 0.81)) / 1.62
    assert nxt / beta == pytest.approx(r_exact, rel=0.03)
    assert incremental_ess_fraction(u, nxt - beta) == pytest.approx(0.9, abs=1e-7)
    # both criteria: the stricter one binds
    both = Adaptive(beta0=0.05, max_kl_increase=0.01, min_ess_fraction=0.9)
    nxt_both = both.next_beta(beta, u)
    assert nxt_both < nxt
    assert estimate_kl_increase(u, nxt_both - beta) == pytest.approx(0.01, rel=1e-6)


def test_ess_fraction_ignores_a_clash():
    # one clashing sample (u ~ 1e20, weight 0 for any step) only adds a sample of weight zero:
    # the fraction is the clean one times N / (N + 1), not ~1 from rounding against its mean
    rng = np.random.default_rng(5)
    u = 250.0 + 20.0 * rng.standard_normal(511)
    clean = incremental_ess_fraction(u, 0.5)
    assert clean < 0.01
    dirty = incremental_ess_fraction(np.append(u, 1e20), 0.5)
    assert dirty == pytest.approx(clean * 511 / 512, rel=1e-9)
    sched = Adaptive(beta0=0.05, max_kl_increase=None, min_ess_fraction=0.5)
    assert sched.next_beta(0.1, np.append(u, 1e20)) == pytest.approx(
        sched.next_beta(0.1, u), rel=1e-3
    )


def test_adaptive_min_and_max_step():
    rng = np.random.default_rng(3)
    sched = Adaptive(beta0=0.01, max_kl_increase=0.1, min_step=1e-3, max_step=0.2)
    # huge energy spread: any step violates the KL bound -> min_step anyway
    u = 1e8 * rng.standard_normal(1000)
    assert sched.next_beta(0.3, u) == pytest.approx(0.3 + 1e-3, abs=1e-15)
    # constant energies: KL = 0 for every step -> max_step, but never beyond 1
    flat = np.full(1000, 3.0)
    assert sched.next_beta(0.3, flat) == pytest.approx(0.5, abs=1e-15)
    assert sched.next_beta(0.9, flat) == 1.0
    assert sched.next_beta(1 - 5e-4, u) == 1.0  # remaining gap < min_step: land on 1


def test_adaptive_drops_nonfinite_energies():
    rng = np.random.default_rng(4)
    sched = Adaptive(beta0=0.01, max_kl_increase=0.1, min_step=1e-4)
    u = gaussian_energies(rng, 5000)(0.1)
    dirty = np.concatenate([u, [np.nan, np.inf, -np.inf, np.nan]])
    rng.shuffle(dirty)
    clean_next = sched.next_beta(0.1, u)
    assert sched.next_beta(0.1, dirty) == clean_next
    assert clean_next > 0.15  # a real step, not min_step
    assert sched.next_beta(0.1, np.full(50, np.nan)) == pytest.approx(0.1 + 1e-4, abs=1e-15)
    assert sched.next_beta(0.1, np.array([1.0, np.nan])) == pytest.approx(0.1 + 1e-4, abs=1e-15)
    with pytest.raises(ValueError, match="energies"):
        sched.next_beta(0.1, None)


def test_adaptive_validation():
    with pytest.raises(ConfigError, match="expected at least one to be set"):
        Adaptive(max_kl_increase=None, min_ess_fraction=None)
    with pytest.raises(ConfigError, match=r"max_kl_increase: expected a finite number > 0"):
        Adaptive(max_kl_increase=0.0)
    with pytest.raises(ConfigError, match=r"min_ess_fraction: expected a number in \(0, 1\)"):
        Adaptive(min_ess_fraction=1.0)
    with pytest.raises(ConfigError, match=r"min_step: expected a number in \(0, max_step = 0.1\]"):
        Adaptive(min_step=0.2, max_step=0.1)
    with pytest.raises(ConfigError, match=r"max_step: expected a number in \(0, 1\], got 0"):
        Adaptive(max_step=0)


# ----------------------------------------------------------------------------- config


def test_schedule_from_config_round_trip():
    sched = schedule_from_config({"kind": "adaptive", "beta0": 0.01, "max_kl_increase": 0.2})
    assert sched == Adaptive(beta0=0.01, max_kl_increase=0.2)
    assert schedule_from_config(schedule_to_config(sched)) == sched
    ess = schedule_from_config(
        {"kind": "adaptive", "max_kl_increase": False, "min_ess_fraction": 0.5}
    )
    assert ess.max_kl_increase is None and ess.min_ess_fraction == 0.5
    assert schedule_to_config(ess)["max_kl_increase"] is False
    assert schedule_from_config({"kind": "geometric", "n_betas": 4}) == Geometric(n_betas=4)
    lin = schedule_from_config({"kind": "linear", "beta0": 0.1, "n_betas": 4})
    assert run_ladder(lin) == pytest.approx([0.1, 0.4, 0.7, 1.0], abs=1e-15)
    exp = schedule_from_config({"kind": "explicit", "betas": [0.1, 1]})
    assert exp.betas == (0.1, 1.0)
    assert schedule_from_config(schedule_to_config(exp)) == exp


@pytest.mark.parametrize(
    "table, match",
    [
        (
            {"kind": "adaptive", "beta_0": 0.01},
            r"^\[tempering\] unknown key 'beta_0' for kind = 'adaptive'; expected one of: "
            r"kind, beta0, max_kl_increase, min_ess_fraction, min_step, max_step$",
        ),
        ({"kind": "linear", "betas": [1.0]}, r"unknown key 'betas'.*kind, beta0, n_betas$"),
        ({"beta0": 0.1}, r"^\[tempering\] kind: missing; expected one of: linear, geometric"),
        ({"kind": "cosine"}, r"^\[tempering\] kind: expected one of: .*, got 'cosine'$"),
        ({"kind": "linear", "n_betas": "ten"}, r"^\[tempering\] n_betas: .* got 'ten'$"),
        ({"kind": "linear", "n_betas": 2.5}, r"n_betas: expected an integer >= 2, got 2.5$"),
        (
            {"kind": "adaptive", "beta0": "0.01"},
            r"^\[tempering\] beta0: expected a number, got '0.01'",
        ),
        ({"kind": "adaptive", "min_step": True}, r"min_step: expected a number, got True"),
        (
            {"kind": "adaptive", "max_kl_increase": "no"},
            r"max_kl_increase: expected a number or false",
        ),
        ({"kind": "explicit", "betas": 1.0}, r"^\[tempering\] betas: expected a list of numbers"),
        ({"kind": "explicit", "betas": [0.5, "1"]}, r"betas: expected a list of numbers"),
        ({"kind": "explicit", "betas": [0.5, 0.9]}, r"betas: expected a last value of 1"),
        ({"kind": "geometric", "beta0": 1.5}, r"beta0: expected a number in \(0, 1\), got 1.5"),
    ],
)
def test_schedule_from_config_errors(table, match):
    with pytest.raises(ConfigError, match=match):
        schedule_from_config(table)
