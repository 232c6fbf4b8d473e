import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import integrate

from coarseflow.errors import ConfigError
from coarseflow.model.flow import (
    FlowSettings,
    TruncatedStandardNormal,
    make_flow,
    sample_with_log_det,
    split_trainable,
)


def perturbed_flow(n_x, seed=0, scale=0.3):
    """A flow whose spline parameters are random (not the identity it starts as)."""
    lower, upper = -np.arange(1, n_x + 1) * 1.5, np.arange(1, n_x + 1) * 2.0
    flow = make_flow(jr.key(seed), lower=lower, upper=upper,
                     settings=FlowSettings(knots=6, layers=3, nn_width=16, nn_depth=1))
    params, static = split_trainable(flow)
    leaves, tree = jax.tree.flatten(params)
    keys = jr.split(jr.key(seed + 1), len(leaves))
    leaves = [p + scale * jr.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves), static, lower, upper


@pytest.mark.parametrize("n_x", [1, 2, 5])
def test_round_trip_and_log_det_equal_autodiff_jacobian(n_x):
    import equinox as eqx
    import paramax

    params, static, lower, upper = perturbed_flow(n_x)
    flow = eqx.combine(params, static)
    bij = paramax.unwrap(flow.bijection)
    z = flow.base_dist.sample(jr.key(3), (16,))
    X, log_det = sample_with_log_det(flow, z)
    assert np.all(X >= lower - 1e-9) and np.all(X <= upper + 1e-9)
    z_back = jax.vmap(bij.inverse)(X)
    np.testing.assert_allclose(z_back, z, atol=1e-8)
    jac = jax.vmap(jax.jacfwd(bij.transform))(z)
    exact = np.linalg.slogdet(np.asarray(jac))[1]
    np.testing.assert_allclose(log_det, exact, atol=1e-8)
    # log q(X) by the inverse path equals log p0(z) - log det by the forward path
    np.testing.assert_allclose(flow.log_prob(X), flow.base_dist.log_prob(z) - log_det, atol=1e-8)


def test_flow_parameters_move_the_flow():
    params, static, *_ = perturbed_flow(2)
    import equinox as eqx

    flow = eqx.combine(params, static)
    flow0 = make_flow(jr.key(0), lower=-np.array([1.5, 3.0]), upper=np.array([2.0, 4.0]),
                      settings=FlowSettings(knots=6, layers=3, nn_width=16, nn_depth=1))
    z = flow.base_dist.sample(jr.key(3), (8,))
    assert np.max(np.abs(sample_with_log_det(flow, z)[0] - sample_with_log_det(flow0, z)[0])) > 1e-3


@pytest.mark.parametrize("bound", [0.5, 2.0, 4.0])
def test_truncated_normal_is_normalised(bound):
    d = TruncatedStandardNormal(1, bound)
    mass, _ = integrate.quad(lambda t: float(jnp.exp(d.log_prob(jnp.array([t])))), -bound, bound)
    assert abs(mass - 1) < 1e-8
    assert d.log_prob(jnp.array([bound + 0.1])) == -jnp.inf
    two = TruncatedStandardNormal(2, bound)
    x = jnp.array([0.3, -0.2])
    np.testing.assert_allclose(two.log_prob(x), d.log_prob(x[:1]) + d.log_prob(x[1:]), atol=1e-12)
    s = two.sample(jr.key(0), (5000,))
    assert np.all(np.abs(s) <= bound)


def test_flow_density_normalised_on_its_box():
    params, static, lower, upper = perturbed_flow(1)
    import equinox as eqx

    flow = eqx.combine(params, static)
    grid = np.linspace(lower[0], upper[0], 20001)
    dens = np.exp(np.asarray(flow.log_prob(grid[:, None])))
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-4


def test_bad_box_and_settings():
    with pytest.raises(ConfigError, match="lower < upper"):
        make_flow(jr.key(0), lower=np.array([1.0]), upper=np.array([0.0]))
    with pytest.raises(ConfigError, match="knots"):
        FlowSettings(knots=1)
