"""Pareto k against arviz's PSIS on tails of known shape, and the verdict's words.

arviz (a test-only dependency) is the maintained reference implementation of PSIS; our
``metrics.pareto_k`` is written independently and must give the same k on the same weights.
"""

import warnings

import numpy as np
import pytest

from coarseflow.analysis.metrics import ess, max_weight_ratio, pareto_k
from coarseflow.analysis.trust import k_threshold, log_weight_verdict, weight_verdict


def arviz_k(log_w: np.ndarray) -> float:
    with warnings.catch_warnings():  # arviz warns on k > 0.7 and on its own deprecations
        warnings.simplefilter("ignore")
        az = pytest.importorskip("arviz")
        _, k = az.psislw(np.array(log_w, dtype=np.float64))
    return float(k)


def tails(n: int = 2000, seed: int = 0) -> dict[str, tuple[np.ndarray, float | None]]:
    """name -> (log-weights, their asymptotic tail shape k, None where not a clean number)."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    return {
        # nearly equal weights, as an exact target's nearly exact model gives
        "near-uniform": (rng.normal(0.0, 0.05, n), None),
        # bounded weights: w uniform on [0.5, 1.5] (largest 1.5x the mean); k = -1
        "bounded": (np.log(rng.uniform(0.5, 1.5, n)), -1.0),
        # p / q of a Gaussian q for a narrower p: bounded, k < 0
        "narrower target": (-0.3 * rng.normal(size=n) ** 2, None),
        "log-normal s=1": (rng.normal(0.0, 1.0, n), None),
        # w = U^(-k) is Pareto with shape k exactly
        "pareto k=0.3": (-0.3 * np.log(u), 0.3),
        "pareto k=0.6": (-0.6 * np.log(rng.random(n)), 0.6),
        "pareto k=0.9": (-0.9 * np.log(rng.random(n)), 0.9),
    }


@pytest.mark.parametrize("name", list(tails()))
def test_pareto_k_equals_arviz_psis(name):
    log_w, _ = tails()[name]
    # measured: equal to 1e-14 on every tail here (the same estimator: Zhang-Stephens with
    # PSIS's prior, tail length ceil(min(N / 5, 3 sqrt(N))))
    assert pareto_k(log_w) == pytest.approx(arviz_k(log_w), abs=1e-6)


@pytest.mark.parametrize("name", ["bounded", "pareto k=0.3", "pareto k=0.6", "pareto k=0.9"])
def test_pareto_k_near_the_known_shape(name):
    log_w, k = tails(n=20_000, seed=3)[name]
    # a bounded tail's k = -1 is pulled toward 1/2 by PSIS's prior (10 pseudo-points over
    # M = 425): measured -0.92; the Pareto tails: 0.30 / 0.59 / 0.98
    assert pareto_k(log_w) == pytest.approx(k, abs=0.1)


def test_near_uniform_weights_get_a_small_k_and_a_good_verdict():
    log_w, _ = tails()["near-uniform"]
    k = pareto_k(log_w)
    assert k < 0.2
    v = weight_verdict(log_w.size, float(ess(log_w)), k, max_weight_ratio(log_w))
    assert v.level == "good" and "can be trusted" in v.sentence


def test_two_level_weights_heavy_to_psis_but_bounded():
    """A bulk of equal weights with 1 % doubled: PSIS (ours and arviz's alike) fits a heavy tail
    to the largest 135, yet no weight is more than 2x the mean: the verdict says both."""
    rng = np.random.default_rng(2)
    log_w = rng.normal(0.0, 0.02, 2000)
    log_w[rng.random(2000) < 0.01] += np.log(2.0)
    k = pareto_k(log_w)
    assert k == pytest.approx(arviz_k(log_w), abs=1e-6)
    assert k > 0.7  # measured 1.46
    v = weight_verdict(log_w.size, float(ess(log_w)), k, max_weight_ratio(log_w))
    assert v.level == "tail" and "none dominates" in v.sentence


def test_heavy_tail_with_a_dominant_weight_is_bad():
    log_w = -1.2 * np.log(np.random.default_rng(4).random(1000))  # k = 1.2: infinite mean
    ratio = max_weight_ratio(log_w)
    assert ratio > 10
    v = weight_verdict(1000, float(ess(log_w)), pareto_k(log_w), ratio)
    assert v.level == "bad" and "not reliable" in v.sentence


def test_max_weight_ratio_and_nonfinite_counts_in_words():
    assert max_weight_ratio(np.zeros(10)) == pytest.approx(1.0)
    assert max_weight_ratio(np.array([0.0, -np.inf, -np.inf, -np.inf])) == pytest.approx(4.0)
    v = weight_verdict(1000, 990.0, 0.1, 1.1, n_nonfinite=15)
    assert v.level == "good" and "15 of 1000 log-weights were not finite" in v.sentence
    assert weight_verdict(1000, 50.0, 0.1, 3.0).level == "noisy"
    assert weight_verdict(20, 20.0, float("nan"), 1.0).level == "bad"
    assert k_threshold(1000) == pytest.approx(2 / 3) and k_threshold(10**6) == 0.7


def test_a_few_weights_over_a_flat_bulk_have_no_tail_to_fit():
    """A quarter of the tail tied at its threshold: k is inf (no division by zero), and the
    verdict then reads the largest weight: one weight with everything is bad, a few at twice
    the mean are a 'tail' that cannot dominate."""
    one = np.zeros(200)
    one[0] = 50.0
    few = np.zeros(200)
    few[:5] = np.log(2.0)
    assert pareto_k(one) == np.inf and pareto_k(few) == np.inf
    assert log_weight_verdict(one).level == "bad"
    assert log_weight_verdict(few).level == "tail"
