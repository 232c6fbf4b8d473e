"""The fab objective (AIS toward p^2 / q, alpha = 2 divergence) against exact quadrature on the
Gaussian mixture, whose p_beta(X) is known in closed form."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from test_conditional import _exact_conditional, _perturbed

from coarseflow.fab import alpha2_loss, latent_ais
from coarseflow.model.flow import FlowSettings, box_flow, split_trainable
from coarseflow.targets import GaussianMixture
from coarseflow.training import adapt_fab_step


def _setup():
    target = GaussianMixture(n_x=2, seed=0, weights=[0.2, 0.3, 0.5])
    lower, upper = target.x_bounds()
    flow = box_flow(jr.key(1), lower=lower, upper=upper,
                     settings=FlowSettings(knots=4, layers=2, nn_width=8))
    return target, _perturbed(flow, jr.key(5), 0.05), _exact_conditional(target)


def _exact_d2_gradient(flow, static_cond, params, target, beta, n_grid=300):
    """grad log ∫ p_beta(X)^2 / q(X) dX by quadrature on a grid over the box. With q(Y|X) =
    p_beta(Y|X) exactly, D_2 of the joint is that of the marginal, and p_beta(X) ∝ p(X)^beta
    (the mixture's Y|X has the same width at every X)."""
    lower, upper = target.x_bounds()
    axes = [np.linspace(lo, hi, n_grid + 1)[:-1] + (hi - lo) / n_grid / 2
            for lo, hi in zip(lower, upper, strict=True)]
    grid = jnp.asarray(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2))
    log_p = beta * target.log_marginal(grid)

    def log_d2(p):
        f, _ = eqx.combine(p, static_cond)
        return jax.nn.logsumexp(2 * log_p - f.log_prob(grid))

    return jax.grad(log_d2)(params)[0]


@pytest.mark.parametrize("n_steps", [0, 8])
def test_alpha2_gradient_matches_quadrature(n_steps):
    # plain importance sampling (0 steps) and AIS alike; the forward-KL (alpha = 1) gradient
    # differs from this one by 0.33 of its norm (after the best rescaling), so 0.1 tells them
    # apart; measured errors: 0.05-0.07 (0 steps), 0.03-0.05 (8 steps) over three keys
    target, flow, cond = _setup()
    beta = 0.1
    params, static = split_trainable((flow, cond))
    exact = _exact_d2_gradient(flow, static, params, target, beta)

    batch = latent_ais(flow, cond, jr.key(3), target, beta, 40_000, n_steps, 0.1, "p2/q")

    def loss(p):
        f, c = eqx.combine(p, static)
        return alpha2_loss(f, c, target, beta, batch)

    estimate = jax.grad(loss)(params)[0]
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(estimate)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(exact)])
    # self-normalised: consistent, O(1/S) bias; the weights (p / q)^2 leave a few % of noise
    assert np.linalg.norm(a - b) < 0.1 * np.linalg.norm(b)
    assert batch.n_evals == 40_000 * (n_steps + 1)
    assert 0.5 < float(jnp.mean(batch.acceptance)) <= 1.0


def test_start_weights_are_those_of_q():
    # the paths' starts are plain draws of q: their log-weights estimate log Z_beta
    target, flow, cond = _setup()
    beta = 1.0
    batch = latent_ais(flow, cond, jr.key(4), target, beta, 20_000, 2, 0.3, "p2/q")
    w = np.exp(np.asarray(batch.start_log_weights))
    # ∫ exp(-beta u) over (X, Y) at beta = 1 is 1 (the mixture's energy is -log p)
    assert abs(w.mean() - 1.0) < 5 * w.std() / np.sqrt(w.size)


def test_step_size_is_steered_toward_the_target_acceptance():
    assert adapt_fab_step(0.3, 0.9) > 0.3 > adapt_fab_step(0.3, 0.1)
    assert adapt_fab_step(0.3, float("nan")) == 0.3
