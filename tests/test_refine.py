"""Prediction's refinement: AIS in q's latent space from q(X) q(Y|X) toward p_beta, on the
Gaussian mixture at beta = 0.1 (log Z exact, the mean of X by quadrature)."""

import jax.random as jr
import numpy as np
import pytest
from test_fab import _setup

from coarseflow.analysis.metrics import ess_fraction, normalized_weights
from coarseflow.errors import ConfigError
from coarseflow.predict.draw import draw_samples, log_partition_estimate
from coarseflow.predict.refine import pilot_step, refine
from coarseflow.predict.settings import PredictionSettings

BETA = 0.1


@pytest.fixture(scope="module")
def refined():
    # q(X) a perturbed flow (one-shot ESS 0.17), q(Y|X) exact
    target, flow, cond = _setup()
    settings = PredictionSettings(
        n_samples=4000, batch_size=2000, refine_steps=10, refine_step_size=0.2
    )
    one_shot = draw_samples(jr.key(2), target, flow, BETA, settings, conditional=cond)
    samples, info = refine(jr.key(2), target, flow, cond, BETA, settings)
    return target, one_shot, samples, info


def test_refined_weights_are_unbiased_for_z(refined):
    target, _, samples, _ = refined
    z = np.exp(float(target.log_partition(BETA)))
    w = np.exp(samples.log_weights)
    assert abs(w.mean() - z) < 4 * w.std() / np.sqrt(w.size)
    # measured: 0.010 from the exact log Z (one-shot: 0.016)
    assert abs(log_partition_estimate(samples.log_weights) - np.log(z)) < 0.03


def test_refinement_raises_the_ess_and_reweights_to_the_exact_mean(refined):
    target, one_shot, samples, info = refined
    # measured: 0.17 one-shot, 0.38 refined (10 steps; 0.55 with 30)
    assert ess_fraction(samples.log_weights) > ess_fraction(one_shot.log_weights) + 0.1
    # E_beta[X] by quadrature: p_beta(X) ∝ p(X)^beta for the mixture (same Y|X width everywhere)
    lower, upper = target.x_bounds()
    axes = [np.linspace(lo, hi, 301) for lo, hi in zip(lower, upper, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(BETA * np.asarray(target.log_marginal(grid)))
    exact = density @ grid / density.sum()
    w = np.asarray(normalized_weights(samples.log_weights))
    estimate = w @ samples.X
    stderr = np.sqrt(w**2 @ (samples.X - estimate) ** 2)
    assert np.all(np.abs(estimate - exact) < 4 * stderr)
    # the pilot's step gives about 60 % acceptance; evaluations counted
    assert 0.5 < info["refine_acceptance"] < 0.7
    assert 0.2 / 8 <= info["refine_step_size"] <= 0.2 * 4
    assert info["refine_energy_evals"] == (6 * 256 + 4000) * 12
    # log q is the density the AIS weight implies
    np.testing.assert_allclose(samples.log_q, -BETA * samples.energy - samples.log_weights)


def test_refinement_needs_a_learned_conditional():
    target, flow, _ = _setup()
    with pytest.raises(ConfigError, match="refine_steps"):
        refine(jr.key(0), target, flow, None, 1.0, PredictionSettings(refine_steps=2))
    with pytest.raises(ConfigError, match="refine_steps"):
        PredictionSettings(refine_steps=-1)
    with pytest.raises(ConfigError, match="refine_target_acceptance"):
        PredictionSettings(refine_target_acceptance=1.0)


def test_the_pilot_interpolates_the_step_between_the_candidates_that_bracket_the_target():
    candidates = 0.2 * 2.0 ** np.arange(-3, 3)
    # acceptance linear in log h, crossing 0.6 a third of the way (in log h) from 0.1 to 0.2
    acceptances = np.array([0.95, 0.9, 0.7, 0.4, 0.2, 0.1])
    step = pilot_step(candidates, acceptances, 0.6)
    np.testing.assert_allclose(step, 0.1 * 2.0 ** (1 / 3), rtol=1e-12)
    # a higher target: halfway (in log h) from 0.05 (0.9) to 0.1 (0.7)
    np.testing.assert_allclose(pilot_step(candidates, acceptances, 0.8), 0.05 * 2**0.5, rtol=1e-12)
    # no bracket (every step accepted too often, or a noisy, non-monotone pilot): the nearest
    np.testing.assert_allclose(
        pilot_step(candidates, np.full(6, 0.9) - 0.01 * np.arange(6), 0.6), 0.8
    )
    np.testing.assert_allclose(
        pilot_step(candidates, np.array([0.9, 0.5, 0.7, 0.58, 0.3, 0.1]), 0.6), 0.2
    )
