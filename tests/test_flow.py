import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from flowjax.bijections import Exp, Identity, Stack
from scipy import integrate, stats

from coarseflow.errors import ConfigError
from coarseflow.model.flow import (
    BoxBase,
    FlowSettings,
    box_flow,
    make_flow,
    sample_with_log_det,
    split_trainable,
)


def perturbed_flow(n_x, seed=0, scale=0.3):
    """A flow whose spline parameters are random (not the identity it starts as)."""
    lower, upper = -np.arange(1, n_x + 1) * 1.5, np.arange(1, n_x + 1) * 2.0
    flow = box_flow(
        jr.key(seed),
        lower=lower,
        upper=upper,
        settings=FlowSettings(knots=6, layers=3, nn_width=16, nn_depth=1),
    )
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
    flow0 = box_flow(
        jr.key(0),
        lower=-np.array([1.5, 3.0]),
        upper=np.array([2.0, 4.0]),
        settings=FlowSettings(knots=6, layers=3, nn_width=16, nn_depth=1),
    )
    z = flow.base_dist.sample(jr.key(3), (8,))
    assert np.max(np.abs(sample_with_log_det(flow, z)[0] - sample_with_log_det(flow0, z)[0])) > 1e-3


@pytest.mark.parametrize("bound", [0.5, 2.0, 4.0])
def test_box_base_is_normalised(bound):
    d = BoxBase(1, bound)
    mass, _ = integrate.quad(lambda t: float(jnp.exp(d.log_prob(jnp.array([t])))), -bound, bound)
    assert abs(mass - 1) < 1e-8
    assert d.log_prob(jnp.array([bound + 0.1])) == -jnp.inf
    flat = BoxBase(1, bound, [True])
    np.testing.assert_allclose(flat.log_prob(jnp.array([0.1 * bound])), -np.log(2 * bound))
    mixed = BoxBase(2, bound, [False, True])
    x = jnp.array([0.3, -0.2]) * bound
    np.testing.assert_allclose(
        mixed.log_prob(x), d.log_prob(x[:1]) + flat.log_prob(x[1:]), atol=1e-12
    )
    s = np.asarray(mixed.sample(jr.key(0), (20000,)))
    assert np.all(np.abs(s) <= bound)
    # the uniform coordinate: mean 0, variance B^2 / 3 (standard errors ~ 0.004 B, 0.003 B^2)
    assert abs(s[:, 1].mean()) < 0.03 * bound
    assert abs(s[:, 1].var() - bound**2 / 3) < 0.02 * bound**2
    # the truncated normal: variance 1 - 2 B phi(B) / (2 Phi(B) - 1)
    want = 1 - 2 * bound * stats.norm.pdf(bound) / (2 * stats.norm.cdf(bound) - 1)
    assert abs(s[:, 0].var() - want) < 0.05 * want


def test_box_base_checks_its_flags():
    with pytest.raises(ConfigError, match="uniform must have shape"):
        BoxBase(2, 4.0, [True])


def test_untrained_flow_is_its_base_on_the_box():
    lower, upper = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 3.0, 2.5])
    flow = box_flow(jr.key(0), lower=lower, upper=upper, settings=FlowSettings(layers=3))
    z = flow.base_dist.sample(jr.key(1), (64,))
    X, log_det = sample_with_log_det(flow, z)
    scale = (upper - lower) / (2 * flow.base_dist.bound)
    # the splines are the identity: the flow only permutes the base's coordinates
    Xz = (X - (upper + lower) / 2) / scale
    source = np.argmin(np.abs(Xz[:, :, None] - z[:, None, :]).sum(0), axis=1)
    assert sorted(source) == [0, 1, 2]
    np.testing.assert_allclose(Xz, z[:, source], atol=1e-12)
    np.testing.assert_allclose(log_det, np.sum(np.log(scale)), atol=1e-12)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_uniform_angles_start_flat(layers):
    lower, upper = np.array([0.0, -np.pi, 0.0]), np.array([1.0, np.pi, 1.0])
    periodic = np.array([False, True, False])
    settings = FlowSettings(layers=layers)
    flow = box_flow(jr.key(0), lower=lower, upper=upper, periodic=periodic, settings=settings)
    X = np.asarray(flow.sample(jr.key(1), (20000,)))
    counts, _ = np.histogram(X[:, 1], bins=8, range=(-np.pi, np.pi))
    assert np.all(np.abs(counts / 2500 - 1) < 0.1)  # flat over the circle (sd of each ~ 0.02)
    for k in (0, 2):  # the others stay peaked (68 % within one sd)
        assert np.mean(np.abs(X[:, k] - 0.5) < 0.125) > 0.6
    normal = box_flow(
        jr.key(0),
        lower=lower,
        upper=upper,
        periodic=periodic,
        settings=FlowSettings(layers=layers, uniform_angles=False),
    )
    Xn = np.asarray(normal.sample(jr.key(1), (20000,)))
    assert np.mean(np.abs(Xn[:, 1]) > 0.75 * np.pi) < 0.01  # a normal base: far side ~ empty


def test_flow_density_normalised_on_its_box():
    params, static, lower, upper = perturbed_flow(1)
    import equinox as eqx

    flow = eqx.combine(params, static)
    grid = np.linspace(lower[0], upper[0], 20001)
    dens = np.exp(np.asarray(flow.log_prob(grid[:, None])))
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-4


def test_bad_box_and_settings():
    with pytest.raises(ConfigError, match="lower < upper"):
        box_flow(jr.key(0), lower=np.array([1.0]), upper=np.array([0.0]))
    with pytest.raises(ConfigError, match="knots"):
        FlowSettings(knots=1)


def _untouched_outputs(n_x, layers, seed, permutation):
    """Output coordinates that no trainable parameter moves (no layer transforms them)."""
    import equinox as eqx

    flow = box_flow(
        jr.key(seed),
        lower=-np.ones(n_x),
        upper=np.ones(n_x),
        settings=FlowSettings(
            knots=4, layers=layers, nn_width=8, nn_depth=1, permutation=permutation
        ),
    )
    params, static = split_trainable(flow)
    leaves, tree = jax.tree.flatten(params)
    keys = jr.split(jr.key(7), len(leaves))
    moved = jax.tree.unflatten(
        tree, [p + 0.3 * jr.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    )
    z = flow.base_dist.sample(jr.key(3), (64,))
    a = sample_with_log_det(flow, z)[0]
    b = sample_with_log_det(eqx.combine(moved, static), z)[0]
    return np.flatnonzero(np.all(np.abs(a - b) < 1e-12, axis=0))


@pytest.mark.parametrize(("n_x", "layers"), [(3, 2), (16, 6), (17, 5)])
def test_alternating_permutations_transform_every_coordinate(n_x, layers):
    for seed in range(3):
        assert _untouched_outputs(n_x, layers, seed, "alternating").size == 0


def test_random_permutations_can_leave_a_coordinate_untransformed():
    # the bug the alternating ones fix: ManyWell-32's model seed 0 (16 X, 6 layers)
    assert _untouched_outputs(16, 6, 0, "random").size >= 1


def test_alternating_permutations_alternate():
    from coarseflow.model.flow import alternating_permutations

    for dim in (2, 5, 16):
        k = dim // 2
        perms = alternating_permutations(jr.key(0), dim, 6, k)
        order = np.arange(dim)  # the coordinate at each position
        for perm in perms:
            assert sorted(perm) == list(range(dim))
            kept = set(order[:k])
            order = order[perm]
            assert kept <= set(order[k:])  # kept now: transformed next


def test_make_flow_reads_the_target():
    """make_flow(key, target, settings) is box_flow on what the target declares: its box, its
    fixed bijection (here exp on the first coordinate) and its angles (uniform at the start)."""

    class Declared:
        def x_bounds(self):
            return np.array([-1.0, -np.pi]), np.array([1.0, np.pi])

        def x_bijection(self):
            return Stack([Exp(), Identity()])

        def x_periodic(self):
            return np.array([False, True])

    settings = FlowSettings(layers=2, nn_width=8)
    flow = make_flow(jr.key(3), Declared(), settings)
    lower, upper = Declared().x_bounds()
    same = box_flow(
        jr.key(3),
        lower=lower,
        upper=upper,
        settings=settings,
        output=Declared().x_bijection(),
        periodic=Declared().x_periodic(),
    )
    X = np.asarray(flow.sample(jr.key(4), (4000,)))
    np.testing.assert_array_equal(X, np.asarray(same.sample(jr.key(4), (4000,))))
    assert np.all((X[:, 0] >= np.exp(-1.0)) & (X[:, 0] <= np.exp(1.0)))  # exp of the box
    counts, _ = np.histogram(X[:, 1], bins=4, range=(-np.pi, np.pi))
    assert np.all(np.abs(counts / 1000 - 1) < 0.15)  # the angle starts flat
