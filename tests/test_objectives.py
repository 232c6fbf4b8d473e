"""The surrogate's gradient is the reverse-KL gradient (METHOD.md section 4)."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from coarseflow.model.flow import FlowSettings, box_flow, sample_with_log_det, split_trainable
from coarseflow.objectives import clip_forces, surrogate_loss
from coarseflow.samplers.conditional import ChainSettings
from coarseflow.targets import GaussianMixture
from coarseflow.training.losses import chain_states


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])


def perturbed(flow, scale, seed):
    params, static = split_trainable(flow)
    leaves, tree = jax.tree.flatten(params)
    keys = jr.split(jr.key(seed), len(leaves))
    leaves = [p + scale * jr.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves), static


@functools.cache
def _perturbed_flow():
    """(target, params, static, z): one flow for both betas below, so that their programs are
    compiled once (beta is traced in them)."""
    target = GaussianMixture(n_x=2, seed=0)
    lower, upper = target.x_bounds()
    flow = box_flow(
        jr.key(0),
        lower=lower,
        upper=upper,
        settings=FlowSettings(knots=6, layers=2, nn_width=16, nn_depth=1),
    )
    params, static = perturbed(flow, 0.2, 1)
    z = eqx.combine(params, static).base_dist.sample(jr.key(2), (128,))
    return target, params, static, z


@eqx.filter_jit
def _exact_kl_gradient(params, static, z, target, beta):
    def exact_kl(p):
        # E_z[log q(f(z)) - log p_beta(f(z))] up to constants, differentiated through X = f(z)
        X, log_det = sample_with_log_det(eqx.combine(p, static), z)
        return jnp.mean(-log_det - beta * target.log_marginal(X))

    return jax.grad(exact_kl)(params)


@eqx.filter_jit
def _surrogate_gradient(params, static, z, force):
    return jax.grad(lambda p: surrogate_loss(p, static, z, force)[0])(params)


_chain_states = eqx.filter_jit(chain_states)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_surrogate_gradient_matches_exact_reverse_kl_gradient(beta):
    target, params, static, z = _perturbed_flow()
    g_exact = flat(_exact_kl_gradient(params, static, z, target, jnp.asarray(beta)))
    X = sample_with_log_det(eqx.combine(params, static), z)[0]
    chains = ChainSettings(
        kernel="mala", step_size=0.05, n_chains=8, n_burn=20, n_keep=40, warm_start_steps=5
    )
    mf = _chain_states(jr.key(3), target, X, jnp.asarray(beta), chains)
    g_mcmc = flat(_surrogate_gradient(params, static, z, mf.force))
    cosine = g_exact @ g_mcmc / np.linalg.norm(g_exact) / np.linalg.norm(g_mcmc)
    print(f"beta={beta}: cosine {cosine:.5f}")
    assert cosine >= 0.99
    assert abs(np.linalg.norm(g_mcmc) / np.linalg.norm(g_exact) - 1) < 0.1

    # with the exact mean force the two gradients are the same numbers
    exact_force = -jax.vmap(lambda x: target.score(x, beta))(X)
    g_same = flat(_surrogate_gradient(params, static, z, exact_force))
    np.testing.assert_allclose(g_same, g_exact, rtol=1e-6, atol=1e-9)


def test_nonfinite_forces_are_left_out():
    # the flow and the 128 base draws of the test above (its gradient's program, compiled once)
    _, params, static, z = _perturbed_flow()
    force = jnp.ones_like(z).at[3].set(jnp.nan)
    value, n_used = eqx.filter_jit(surrogate_loss)(params, static, z, force)
    assert int(n_used) == len(z) - 1 and np.isfinite(value)
    grads = _surrogate_gradient(params, static, z, force)
    assert np.all(np.isfinite(flat(grads)))
    # the same as using only the finite samples
    keep = np.arange(len(z)) != 3
    ref = _surrogate_gradient(params, static, z[keep], force[keep])
    np.testing.assert_allclose(flat(grads), flat(ref), rtol=1e-10, atol=1e-12)


def test_clip_forces_caps_outliers_at_a_multiple_of_the_median_norm():
    rng = np.random.default_rng(0)
    force = rng.standard_normal((9, 3))
    np.testing.assert_array_equal(clip_forces(jnp.asarray(force), 1e3), force)  # none beyond
    clash = force.copy()
    clash[4] *= 1e12
    clash[7] = np.nan
    out = np.asarray(clip_forces(jnp.asarray(clash), 10.0))
    median = np.median(np.linalg.norm(np.delete(clash, 7, axis=0), axis=1))
    assert np.linalg.norm(out[4]) == pytest.approx(10 * median, rel=1e-12)
    np.testing.assert_allclose(
        out[4] / np.linalg.norm(out[4]), force[4] / np.linalg.norm(force[4]), rtol=1e-12
    )  # direction kept
    assert np.all(np.isnan(out[7]))  # left for surrogate_loss to drop
    keep = np.array([i not in (4, 7) for i in range(9)])
    np.testing.assert_array_equal(out[keep], clash[keep])


def test_forward_kl_term_vanishes_for_uniform_weights_and_follows_the_weights():
    from coarseflow.objectives import forward_kl_loss

    flow = box_flow(
        jr.key(0),
        lower=np.array([-3.0]),
        upper=np.array([3.0]),
        settings=FlowSettings(knots=4, layers=1, nn_width=8, nn_depth=1),
    )
    params, static = split_trainable(flow)
    X = flow.sample(jr.key(1), (200,))
    uniform = jnp.full(200, 1 / 200)
    value_and_grad = eqx.filter_jit(jax.value_and_grad(forward_kl_loss))  # one program
    # centred weights: with w = 1/S the term and its gradient are zero (q's own score removed)
    value, g = value_and_grad(params, static, X, uniform)
    assert float(value) == 0.0
    assert np.max(np.abs(flat(g))) == 0.0
    # weights on the right half: a small step down the gradient raises log q there
    w = jnp.where(X[:, 0] > 0, 1.0, 0.0)
    w = w / w.sum()
    g = value_and_grad(params, static, X, w)[1]
    stepped = jax.tree.map(lambda p, d: p - 1e-2 * d, params, g)

    @eqx.filter_jit
    def weighted_log_q(p):
        return jnp.sum(w * eqx.combine(p, static).log_prob(X))

    def right_mass(p):
        return float(weighted_log_q(p))

    assert right_mass(stepped) > right_mass(params) + 1e-6
