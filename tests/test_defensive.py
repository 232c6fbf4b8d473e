"""The defensive mixture q_a(X) = (1 - a) q(X) + a q_low(X) of prediction, on the Gaussian
mixture at beta = 0.1 (log Z exact): its density is normalised and is the density of its
draws, and the one-shot weights over it stay unbiased for Z."""

import jax.random as jr
import numpy as np
import pytest
from test_conditional import _perturbed
from test_fab import _setup

from coarseflow.predict.defensive import Defensive, mixture_log_prob, sample_mixture
from coarseflow.predict.draw import draw_samples, log_partition_estimate
from coarseflow.predict.settings import PredictionSettings
from coarseflow.workflow import defensive_checkpoint

BETA = 0.1
A = 0.3


@pytest.fixture(scope="module")
def model():
    target, flow, cond = _setup()
    # q_low: q perturbed further, so that the mixture differs from q everywhere
    return target, flow, cond, Defensive(_perturbed(flow, jr.key(11), 0.3), A)


def _grid(lower, upper, n=301):
    axes = [np.linspace(lo, hi, n) for lo, hi in zip(lower, upper, strict=True)]
    cell = np.prod([a[1] - a[0] for a in axes])
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes)), cell


def test_mixture_density_is_normalised_and_is_the_density_of_its_draws(model):
    target, flow, _, defensive = model
    grid, cell = _grid(*target.x_bounds())
    log_q = mixture_log_prob(defensive, grid, flow.log_prob(grid))
    low = defensive.flow.log_prob(grid)
    expected = np.logaddexp(np.log(1 - A) + flow.log_prob(grid), np.log(A) + low)
    np.testing.assert_allclose(log_q, expected, rtol=1e-12)
    density = np.exp(np.asarray(log_q))
    assert abs(density.sum() * cell - 1.0) < 2e-3
    # the draws' mean and the share of them in the half-plane X_0 > 0, against quadrature
    X = np.asarray(sample_mixture(jr.key(3), flow, defensive, 20000))
    exact_mean = density @ grid * cell
    stderr = X.std(0) / np.sqrt(len(X))
    assert np.all(np.abs(X.mean(0) - exact_mean) < 4 * stderr)
    share = density[grid[:, 0] > 0].sum() * cell
    assert abs(np.mean(X[:, 0] > 0) - share) < 4 * np.sqrt(share * (1 - share) / len(X))


def test_one_shot_weights_over_the_mixture_are_unbiased_for_z(model):
    target, flow, cond, defensive = model
    settings = PredictionSettings(n_samples=4000, batch_size=2000)
    z = float(np.exp(target.log_partition(BETA)))
    one_shot = draw_samples(
        jr.key(2), target, flow, BETA, settings, conditional=cond, defensive=defensive
    )
    w = np.exp(one_shot.log_weights)
    assert abs(w.mean() - z) < 4 * w.std() / np.sqrt(w.size)
    assert abs(log_partition_estimate(one_shot.log_weights) - np.log(z)) < 0.05
    # the one-shot weights use the mixture's density
    np.testing.assert_allclose(
        one_shot.log_qX,
        mixture_log_prob(defensive, one_shot.X, flow.log_prob(one_shot.X)),
        rtol=1e-10,
    )


def test_the_component_is_the_checkpoint_below_the_sampled_beta_nearest_defensive_beta():
    betas = [0.05, 0.2, 0.45, 0.6, 1.0]
    on = PredictionSettings(defensive_fraction=0.1, defensive_beta=0.5)
    assert defensive_checkpoint(betas, 1.0, on) == 2
    assert defensive_checkpoint(betas, 0.4, on) == 1  # below the sampled beta only
    assert defensive_checkpoint(betas, 0.05, on) is None
    assert defensive_checkpoint(betas, 1.0, PredictionSettings()) is None
