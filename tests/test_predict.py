import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from coarseflow.errors import ConfigError
from coarseflow.model.flow import make_flow
from coarseflow.partition import Partition
from coarseflow.predict import (
    PredictionSettings,
    conditional_exact,
    conditional_laplace,
    draw_samples,
    log_partition_estimate,
)
from coarseflow.targets import DoubleWell, EnergyTarget, GaussianMixture


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_log_partition_estimate_matches_quadrature(beta):
    target = DoubleWell()
    lower, upper = target.x_bounds()
    flow = make_flow(jr.key(0), lower=lower, upper=upper)
    s = draw_samples(jr.key(1), flow, target, beta, PredictionSettings(n_samples=40000))
    w = np.exp(s.log_weights - s.log_weights.max())
    # relative standard error of the mean weight -> error of log Z
    stderr = np.std(w) / np.mean(w) / np.sqrt(len(w))
    est = log_partition_estimate(s.log_weights)
    assert abs(est - target.log_partition(beta)) < 5 * stderr + 1e-3
    assert s.x.shape == (40000, 2) and s.log_weights.shape == (40000,)
    np.testing.assert_allclose(s.x[:, 0], s.X[:, 0])


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_laplace_fit_is_exact_for_a_gaussian_conditional(beta):
    target = GaussianMixture(n_x=2, seed=1)
    X = jnp.array([0.3, -0.2])
    settings = PredictionSettings(minimize_steps=20, newton_steps=3)
    Y, log_q = conditional_laplace(target, X, beta, jr.key(0), settings)
    mean, std = target.conditional_gaussian(X, beta)
    exact = np.sum(stats.norm.logpdf(np.asarray(Y), np.asarray(mean), np.asarray(std)))
    np.testing.assert_allclose(log_q, exact, rtol=1e-8)
    Y2, log_q2 = conditional_exact(target, X, beta, jr.key(0))
    exact2 = np.sum(stats.norm.logpdf(np.asarray(Y2), np.asarray(mean), np.asarray(std)))
    np.testing.assert_allclose(log_q2, exact2, rtol=1e-10)


def test_laplace_weights_on_a_target_without_exact_conditional():
    # u = x0^2/2 + (x1 - x0)^2 / (2 * 0.1^2): Y|X Gaussian, but not declared: Laplace must find it
    def u(x):
        return 0.5 * x[0] ** 2 + 0.5 * (x[1] - x[0]) ** 2 / 0.01

    target = EnergyTarget(u, Partition.from_x(2, [0]), lower=-6.0, upper=6.0)
    flow = make_flow(jr.key(0), lower=np.array([-6.0]), upper=np.array([6.0]))
    s = draw_samples(jr.key(2), flow, target, 1.0, PredictionSettings(n_samples=20000))
    # Z = 2 pi * 0.1 exactly; q(Y|X) is exact, so the weights only correct q(X)
    assert abs(log_partition_estimate(s.log_weights) - np.log(2 * np.pi * 0.1)) < 0.02
    with pytest.raises(ConfigError, match="no exact conditional"):
        draw_samples(jr.key(2), flow, target, 1.0, PredictionSettings(conditional="exact"))
