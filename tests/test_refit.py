"""The refit of q(Y|X) after the ladder (training.refit): on the Gaussian mixture, whose
p(Y|X) is known, it brings a too-narrow q(Y|X) back to p's width and leaves q(X) alone; its
settings are refused where they cannot work."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from coarseflow.errors import ConfigError
from coarseflow.model.conditional import ConditionalSettings, make_conditional
from coarseflow.model.flow import box_flow
from coarseflow.targets import GaussianMixture
from coarseflow.training.refit import refit_updates
from coarseflow.training.settings import TrainingSettings
from coarseflow.training.step import init


@eqx.filter_jit
def _conditional_ess(conditional, flow, target, key, m: int, k: int):
    """(m,) ESS fraction of k draws of q(Y|X) at each of m draws X of q(X), at beta = 1."""
    X = jnp.repeat(flow.sample(jr.fold_in(key, 0), (m,)), k, axis=0)
    drawn = conditional.sample_batch(jr.fold_in(key, 1), target, X, 1.0)
    log_w = (-jax.vmap(target.energy_xy)(X, drawn.Y) - drawn.log_q).reshape(m, k)
    w = jax.nn.softmax(log_w, axis=1)
    return 1.0 / jnp.sum(w**2, axis=1) / k


def test_the_refit_widens_a_too_narrow_conditional_to_the_exact_one_and_keeps_q_x():
    target = GaussianMixture(n_x=2, seed=0)
    lower, upper = target.x_bounds()
    flow = box_flow(jr.key(0), lower=lower, upper=upper)
    cond = make_conditional(jr.key(0), target, ConditionalSettings(kind="gaussian", nn_width=8))
    # the mixture's q(Y|X) has p's mean from the start: 0.6 times p's width is the only misfit
    log_width = jnp.full(target.n_y, np.log(0.6 * target.cond_width), cond.log_diag.dtype)
    narrow = eqx.tree_at(lambda c: c.log_diag, cond, log_width)
    training = TrainingSettings(
        objective="joint",
        batch_size=64,
        refit_updates=300,
        refit_draws=16,
        refit_learning_rate=3e-2,
    )
    state, static = init((flow, narrow), training)
    assert np.mean(_conditional_ess(narrow, flow, target, jr.key(2), 64, 16)) < 0.7
    done = list(refit_updates(state.params, static, target, training))
    infos = [info for _, info in done]
    refitted_flow, refitted = eqx.combine(done[-1][0], static)
    assert len(infos) == 300
    assert all(int(i.n_used) == 64 and int(i.energy_evals) == 64 for i in infos)
    assert np.mean(_conditional_ess(refitted, flow, target, jr.key(2), 64, 16)) > 0.97
    X = jnp.repeat(flow.sample(jr.key(4), (1,)), 4096, axis=0)
    Y = refitted.sample_batch(jr.key(5), target, X, 1.0).Y
    np.testing.assert_allclose(np.std(Y, axis=0), target.cond_width, rtol=0.05)
    for a, b in zip(jax.tree.leaves(refitted_flow), jax.tree.leaves(flow), strict=True):
        if eqx.is_array(a):
            np.testing.assert_array_equal(a, b)
    # the loss is minus the bound: it rises toward log p(X) - log Z as q widens
    assert float(np.mean([i.loss for i in infos[-10:]])) < float(infos[10].loss)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"refit_updates": 10}, "refits a learned q\\(Y\\|X\\); objective is 'mean_force'"),
        (
            {"objective": "joint", "refit_updates": 10, "batch_size": 100},
            "refit_draws: expected a divisor of batch_size = 100, got 64",
        ),
        ({"objective": "joint", "refit_draws": 1}, "refit_draws: expected an integer >= 2"),
        ({"objective": "joint", "refit_updates": -1}, "refit_updates: expected an integer"),
        ({"objective": "joint", "refit_learning_rate": 0.0}, "refit_learning_rate: expected"),
        (
            {"conditional_learning_rate": 1e-4},
            "conditional_learning_rate: the rate of a learned q.Y.X.; objective is 'mean_force'",
        ),
        ({"objective": "fab", "conditional_learning_rate": 0.0}, "conditional_learning_rate: exp"),
    ],
)
def test_refit_settings_that_cannot_work_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainingSettings(**settings)
