"""The learnable linear map behind the partition (model/linear_map.py): right-stochastic rows,
equivariance under rigid motion, its log-determinant (in R^{3N} and on a molecule's gauge
slice), the identity at init, and the joint objective training it with q(X) and q(Y|X)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from coarseflow.errors import ConfigError
from coarseflow.model.conditional import ConditionalSettings, make_conditional
from coarseflow.model.flow import FlowSettings, box_flow, split_trainable
from coarseflow.model.linear_map import (
    LinearMap,
    check_linear_map,
    physical,
    physical_samples,
    sample_energies,
)
from coarseflow.model.linear_map import energy as mapped_energy
from coarseflow.objectives import (
    conditional_terms,
    joint_forward_kl_loss,
    joint_terms,
    masked_mean,
)
from coarseflow.targets import GaussianMixture


def _random_map(key, n, scale=0.2):
    return LinearMap(n, scale * jr.normal(key, (n, n)))


def _rotation(key):
    q, r = jnp.linalg.qr(jr.normal(key, (3, 3)))
    q = q * jnp.sign(jnp.diag(r))
    return q * jnp.linalg.det(q)  # det +1


# ---- the map on positions ---------------------------------------------------------------------


def test_rows_sum_to_one_and_the_start_is_the_identity():
    m = _random_map(jr.key(0), 7, scale=1.5)
    np.testing.assert_allclose(jnp.sum(m.matrix, axis=1), np.ones(7), rtol=0, atol=1e-13)
    assert np.ptp(np.asarray(m.matrix)) > 1.0  # a real mixing, entries of both signs
    assert np.any(np.asarray(m.matrix) < 0)
    # every right-stochastic W is reached: E = W - I gives W back
    np.testing.assert_allclose(LinearMap(7, m.matrix - jnp.eye(7)).matrix, m.matrix, atol=1e-14)
    start = LinearMap(7)
    assert np.array_equal(start.matrix, np.eye(7))
    R = jr.normal(jr.key(1), (4, 7, 3))
    assert np.array_equal(start(R), R)
    assert float(start.log_det()) == 0.0


def test_translation_and_rotation_equivariance():
    m = _random_map(jr.key(2), 9, scale=0.5)
    R = jr.normal(jr.key(3), (5, 9, 3))
    Q, t = _rotation(jr.key(4)), jr.normal(jr.key(5), (3,))
    moved = R @ Q.T + t
    np.testing.assert_allclose(m(moved), m(R) @ Q.T + t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.inverse(moved), m.inverse(R) @ Q.T + t, rtol=0, atol=1e-11)
    # a matrix whose rows do not sum to 1 would move the configuration's centre: not one of ours
    bad = jnp.eye(9) + 0.1 * jr.normal(jr.key(6), (9, 9))
    assert np.max(np.abs(bad @ (R[0] + t) - (bad @ R[0] + t))) > 1e-3


def test_log_det_and_inverse_against_the_explicit_3n_matrix_and_autodiff():
    n = 6
    m = _random_map(jr.key(7), n, scale=0.4)
    full = np.kron(np.asarray(m.matrix), np.eye(3))  # acting on flat (x1, y1, z1, x2, ...)
    sign, expected = np.linalg.slogdet(full)
    assert sign != 0 and abs(expected) > 0.1  # not the identity's 0
    np.testing.assert_allclose(m.log_det(), expected, rtol=1e-12)
    R = jr.normal(jr.key(8), (n, 3))
    np.testing.assert_allclose(m(R).reshape(-1), full @ np.asarray(R).reshape(-1), atol=1e-13)
    jac = jax.jacfwd(lambda v: m(v.reshape(n, 3)).reshape(-1))(R.reshape(-1))
    np.testing.assert_allclose(jnp.linalg.slogdet(jac)[1], m.log_det(), rtol=1e-12)
    np.testing.assert_allclose(m.inverse(m(R)), R, atol=1e-12)


# ---- the joint objective, on two "atoms" (fast) ---------------------------------------------


class _Atoms(GaussianMixture):
    """The mixture's x (6,) read as two atoms: X = atom 0's x, y, z and Y = atom 1's. A test of
    the objectives' plumbing only (its energy is not invariant under rigid motion)."""

    @property
    def n_atoms(self) -> int:
        return 2

    def full_positions(self, x):
        return x.reshape(2, 3)

    def positions_energy(self, positions):
        return self.energy(positions.reshape(-1))

    def mapped_coordinates(self, linear_map, x):
        return linear_map(x.reshape(2, 3)).reshape(-1), linear_map.log_det()

    def unmapped_coordinates(self, linear_map, x):
        return linear_map.inverse(x.reshape(2, 3)).reshape(-1)


def _perturbed(tree, key, scale):
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(key, len(leaves))
    leaves = [x + scale * jr.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _toy_model(linear_map=True):
    target = _Atoms(n_x=3, seed=0)
    lower, upper = target.x_bounds()
    flow = box_flow(
        jr.key(1), lower=lower, upper=upper, settings=FlowSettings(knots=4, layers=2, nn_width=8)
    )
    settings = ConditionalSettings(kind="gaussian", nn_width=8, linear_map=linear_map)
    cond = make_conditional(jr.key(0), target, settings)
    cond = eqx.tree_at(lambda c: c.log_diag, cond, jnp.full(3, jnp.log(target.cond_width)))
    return target, _perturbed(flow, jr.key(5), 0.05), cond


def test_joint_gradient_reaches_the_map_and_is_the_reverse_kl_gradient():
    target, flow, cond = _toy_model()
    cond = eqx.tree_at(lambda c: c.linear_map, cond, _random_map(jr.key(9), 2, scale=0.3))
    beta, key = 0.6, jr.key(3)
    z = flow.base_dist.sample(jr.key(2), (64,))
    params, static = split_trainable((flow, cond))

    def joint(p):
        f, c = eqx.combine(p, static)
        t = joint_terms(f, c, key, target, z, beta, force_clip=1e6)
        return masked_mean(t.surrogate, t.ok), jnp.all(t.ok)

    def direct(p):
        # E_q[log q(X) + log q(Y|X) - log|det dPhi| + beta u(Phi(X, Y))], all by autodiff
        f, c = eqx.combine(p, static)
        X, log_det = jax.vmap(f.bijection.transform_and_log_det)(z)
        draws = c.sample_batch(key, target, X, beta)
        x, log_det_map = jax.vmap(lambda a, b: physical(c.linear_map, target, a, b))(X, draws.Y)
        log_q = f.base_dist.log_prob(z) - log_det + draws.log_q - log_det_map
        return jnp.mean(log_q + beta * jax.vmap(target.energy)(x))

    (g_joint, all_ok), g_direct = eqx.filter_jit(
        lambda p: (jax.grad(joint, has_aux=True)(p), jax.grad(direct)(p))
    )(params)
    assert bool(all_ok)  # every sample enters both
    g_map = g_joint[1].linear_map.mixing
    assert float(jnp.max(jnp.abs(g_map))) > 1e-2  # the map is trained, not a bystander
    for a, b in zip(jax.tree.leaves(g_joint), jax.tree.leaves(g_direct), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_forward_kl_on_the_joint_sees_the_physical_density():
    target, flow, cond = _toy_model()
    cond = eqx.tree_at(lambda c: c.linear_map, cond, _random_map(jr.key(10), 2, scale=0.3))
    beta = 0.8
    z = flow.base_dist.sample(jr.key(2), (32,))
    t = eqx.filter_jit(joint_terms)(flow, cond, jr.key(3), target, z, beta, 1e6)
    log_q = -(t.log_weights + beta * t.u)  # the forward route's log q of each physical sample
    w = jax.nn.softmax(t.log_weights)
    params, static = split_trainable((flow, cond))

    def loss(p):
        f, c = eqx.combine(p, static)
        return joint_forward_kl_loss(f, c, target, t.X, t.Y, beta, w)

    value, grads = eqx.filter_jit(jax.value_and_grad(loss))(params)
    # the inverse route (x held fixed, latent = Phi^-1(x)) gives the same densities
    np.testing.assert_allclose(value, -jnp.sum((w - 1 / 32) * log_q), rtol=1e-9)
    g_map = grads[1].linear_map.mixing
    assert bool(jnp.all(jnp.isfinite(g_map))) and float(jnp.max(jnp.abs(g_map))) > 1e-3


def test_weights_with_the_map_estimate_the_known_partition_function():
    # the mixture is normalised, Z(1) = 1, whatever map and q sample it: log mean w -> 0 when
    # the weights are prediction's, -u(x) - log q(X) - log q(Y|X) + log|det| at x = Phi(X, Y)
    target = _Atoms(n_x=3, seed=0, width=1.0, cond_width=1.0, support_beta=1.0)
    lower, upper = target.x_bounds()
    flow = box_flow(
        jr.key(1), lower=lower, upper=upper, settings=FlowSettings(knots=4, layers=2, nn_width=8)
    )
    settings = ConditionalSettings(kind="gaussian", nn_width=8, linear_map=True)
    cond = make_conditional(jr.key(0), target, settings)
    W = jnp.array([[1.1, -0.1], [-0.1, 1.1]])  # |det W|^3 = 1.2^3: log-det 0.547
    cond = eqx.tree_at(lambda c: c.linear_map, cond, LinearMap(2, W - jnp.eye(2)))

    @eqx.filter_jit
    def log_weights(key, flow, cond):
        X, log_qX = flow.sample_and_log_prob(jr.fold_in(key, 0), (20000,))
        draws = cond.sample_batch(jr.fold_in(key, 1), target, X, 1.0)
        x, log_det = physical_samples(cond, target, X, draws.Y)
        return -jax.vmap(target.energy)(x) - (log_qX + draws.log_q - log_det), log_det

    log_w, log_det = log_weights(jr.key(2), flow, cond)
    np.testing.assert_allclose(log_det, 3 * np.log(1.2), rtol=1e-12)
    log_z = float(jax.nn.logsumexp(log_w) - np.log(log_w.size))
    ess = float(jnp.exp(2 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2 * log_w))) / log_w.size
    assert ess > 0.1  # so that the estimate below is sharp (std ~ 0.01)
    assert abs(log_z) < 0.05  # without the log-det it would be -0.547


def test_the_identity_map_changes_nothing_in_the_joint_objective():
    target, flow, with_map = _toy_model(linear_map=True)
    _, _, without = _toy_model(linear_map=False)
    z = flow.base_dist.sample(jr.key(2), (32,))
    a = eqx.filter_jit(joint_terms)(flow, with_map, jr.key(3), target, z, 0.7, 10.0)
    b = eqx.filter_jit(joint_terms)(flow, without, jr.key(3), target, z, 0.7, 10.0)
    for name in ("X", "Y", "surrogate", "log_weights", "u"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    x, log_det = physical_samples(with_map, target, a.X, a.Y)
    assert np.array_equal(x, target.partition.merge(a.X, a.Y)) and not np.any(log_det)


def test_the_map_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match=r"\[conditional\] linear_map = true: needs a learned"):
        ConditionalSettings(linear_map=True)
    with pytest.raises(ConfigError, match=r"\[conditional\] linear_map"):
        ConditionalSettings(kind="gaussian", linear_map="yes")
    on = ConditionalSettings(kind="gaussian", nn_width=8, linear_map=True)
    with pytest.raises(ConfigError, match="GaussianMixture has no atoms"):
        make_conditional(jr.key(0), GaussianMixture(), on)
    atoms = _Atoms(n_x=3)
    check_linear_map(True, "joint", atoms)  # accepted
    check_linear_map(False, "hybrid", GaussianMixture(), 5)  # the map off: nothing to check
    with pytest.raises(ConfigError, match="GaussianMixture has no atoms"):
        check_linear_map(True, "joint", GaussianMixture())
    for objective in ("hybrid", "fab", "mean_force"):
        with pytest.raises(ConfigError, match=f"objective = 'joint'.*got '{objective}'"):
            check_linear_map(True, objective, atoms)
    with pytest.raises(ConfigError, match="refine_steps must be 0"):
        check_linear_map(True, "joint", atoms, refine_steps=4)
    # the refit after the ladder trains q(Y|X) alone, against the unmapped configuration
    from coarseflow.samplers.conditional import ChainSettings
    from coarseflow.tempering.schedules import Explicit
    from coarseflow.training.ladder import train
    from coarseflow.training.settings import TrainingSettings

    target, flow, mapped = _toy_model()
    refit = TrainingSettings(objective="joint", batch_size=64, refit_updates=10)
    with pytest.raises(ConfigError, match="refit_updates: the refit of q.Y.X. does not train"):
        train(target, flow, Explicit([1.0]), refit, ChainSettings(), conditional=mapped)
    # the hybrid's conditional reverse KL would train against the unmapped configuration
    cond = make_conditional(jr.key(0), atoms, on)
    with pytest.raises(ConfigError, match="objective = 'joint'"):
        conditional_terms(cond, jr.key(1), atoms, jnp.zeros((4, 3)), 1.0, 10.0)


# ---- a molecule: the gauge slice, and a short joint training -----------------------------------

pytest.importorskip("openmm")
pytest.importorskip("mdtraj")


@pytest.fixture(scope="module")
def ala2():
    from coarseflow.targets.molecule import Molecule

    return Molecule()


def test_molecule_log_det_is_the_gauge_slice_jacobian(ala2):
    # x and x' live on the slice of 3N - 6 free coordinates: 3 log|det W| alone is not the
    # Jacobian there; the gauge frame's volume factor of R and W R completes it
    n = ala2.n_atoms
    m = _random_map(jr.key(11), n, scale=0.05)
    x = ala2.reference_x + 0.01 * jr.normal(jr.key(12), ala2.reference_x.shape)
    x_mapped, log_det = ala2.mapped_coordinates(m, x)
    jac = eqx.filter_jit(jax.jacfwd(lambda v, m: ala2.mapped_coordinates(m, v)[0]))(x, m)
    sign, expected = jnp.linalg.slogdet(jac)
    assert float(sign) != 0.0
    np.testing.assert_allclose(log_det, expected, rtol=1e-10)
    assert abs(float(expected - m.log_det())) > 0.05  # the gauge term is not negligible here
    np.testing.assert_allclose(ala2.unmapped_coordinates(m, x_mapped), x, atol=1e-12)
    # the energy of W R is that of its gauge-frame coordinates (rigid invariance)
    u = mapped_energy(m, ala2, *ala2.partition.split(x))
    np.testing.assert_allclose(u, ala2.energy(x_mapped), rtol=1e-10)


def test_molecule_identity_map_gives_exactly_todays_energies(ala2):
    start = LinearMap(ala2.n_atoms)
    xs = ala2.reference_x + 0.02 * jr.normal(jr.key(13), (3, ala2.n))
    for x in xs:
        assert float(mapped_energy(start, ala2, *ala2.partition.split(x))) == float(ala2.energy(x))
        x_mapped, log_det = ala2.mapped_coordinates(start, x)
        assert np.array_equal(x_mapped, x) and float(log_det) == 0.0


@pytest.mark.slow  # 13 joint updates of alanine: about a minute, mostly compiling
def test_a_short_joint_training_on_a_molecule_trains_the_map(ala2):
    import coarseflow as cf

    target = ala2
    flow = cf.make_flow(jr.key(0), target, FlowSettings(knots=4, layers=1, nn_width=8))
    settings = ConditionalSettings(kind="gaussian", nn_width=8, linear_map=True)
    cond = make_conditional(jr.key(1), target, settings)
    # a narrow start instead of the Laplace fits (a unit width in nm and rad breaks bonds);
    # NumPy's, not a weakly typed jnp.full, which would compile the update twice
    n_y = target.partition.n_y
    cond = eqx.tree_at(lambda c: c.log_diag, cond, jnp.asarray(np.full(n_y, np.log(0.01))))
    training = cf.TrainingSettings(
        objective="joint",
        batch_size=16,
        first_beta_updates=10,  # the gradient guard's first 10 only calibrate it (optim.py)
        updates_per_beta=3,
        tempering_samples=16,
    )
    records = []

    class Keep:  # train()'s Callbacks: the per-update records
        def on_beta(self, *args):
            pass

        def on_updates(self, new):
            records.extend(new)

    result = cf.train(
        target,
        flow,
        cf.Explicit(betas=(0.5, 1.0)),
        training,
        cf.ChainSettings(),
        conditional=cond,
        callbacks=Keep(),
        progress=False,
    )
    trained = result.conditional.linear_map
    assert result.betas == [0.5, 1.0] and len(records) == 13
    assert sum(not r["skipped"] for r in records) >= 3
    assert bool(jnp.all(jnp.isfinite(trained.mixing)))
    assert float(jnp.max(jnp.abs(trained.mixing))) > 1e-4  # Adam moved W away from I
    np.testing.assert_allclose(jnp.sum(trained.matrix, 1), np.ones(target.n_atoms), atol=1e-12)
    # every update's weights (with the map's log-det) gave a finite ESS, and no update failed
    assert all(r["batch_ess"] is not None and 0 < r["batch_ess"] <= 1 for r in records)
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in records)
    assert all(r["n_used"] > 0 for r in records)
    # what prediction does with a sample: x = Phi(X, Y) and log q less the log-det; the
    # energy of x is the mapped configuration's, as in training
    X, Y = target.partition.split(target.reference_x + 0.01 * jr.normal(jr.key(7), (4, target.n)))
    x, log_det = physical_samples(result.conditional, target, X, Y)
    u = jax.vmap(target.energy)(x)
    np.testing.assert_allclose(u, sample_energies(result.conditional, target, X, Y), rtol=1e-9)
    assert np.all(np.abs(np.asarray(log_det)) > 1e-8)


def test_config_refuses_the_map_on_a_target_without_atoms():
    """parse_config checks [conditional] linear_map against the target before any training."""
    from coarseflow.config import parse_config
    from coarseflow.errors import ConfigError

    raw = {
        "target": {"kind": "gaussian_mixture"},
        "conditional": {"kind": "gaussian", "linear_map": True},
        "training": {"objective": "joint"},
    }
    with pytest.raises(ConfigError, match="has no atoms"):
        parse_config(raw)
