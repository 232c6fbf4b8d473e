"""The fab objective (AIS toward p^2 / q, alpha = 2 divergence) against exact quadrature on the
Gaussian mixture, whose p_beta(X) is known in closed form."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from test_conditional import _exact_conditional, _perturbed

from coarseflow.fab import (
    FabBatch,
    alpha2_loss,
    empty_buffer,
    latent_ais,
    replay_add,
    replay_draw,
    replay_loss,
    replay_update,
)
from coarseflow.model.flow import FlowSettings, box_flow, split_trainable
from coarseflow.targets import GaussianMixture
from coarseflow.training.step import adapt_fab_step


@functools.cache
def _setup():
    """(target, flow, conditional): the same objects for every test of the file, so that each
    compiled program below serves all the tests that call it with the same shapes."""
    target = GaussianMixture(n_x=2, seed=0, weights=[0.2, 0.3, 0.5])
    lower, upper = target.x_bounds()
    flow = box_flow(
        jr.key(1), lower=lower, upper=upper, settings=FlowSettings(knots=4, layers=2, nn_width=8)
    )
    # its log_diag is weakly typed (jnp.full of a scalar), which an optimiser's update is not:
    # training would compile every program twice
    cond = jax.tree.map(
        lambda a: a.astype(a.dtype) if eqx.is_array(a) else a, _exact_conditional(target)
    )
    return target, _perturbed(flow, jr.key(5), 0.05), cond


@eqx.filter_jit
def _latent_ais(flow, cond, key, target, beta, n: int, n_steps: int, step_size):
    """latent_ais toward p^2 / q as one program (beta and the step size traced)."""
    return latent_ais(flow, cond, key, target, beta, n, n_steps, step_size, "p2/q")


@functools.cache
def _fab_batch(seed: int, beta: float, n: int, n_steps: int, step_size: float) -> FabBatch:
    """An AIS batch from _setup's q (the same arguments, the same batch: computed once)."""
    target, flow, cond = _setup()
    return _latent_ais(
        flow, cond, jr.key(seed), target, jnp.asarray(beta), n, n_steps, jnp.asarray(step_size)
    )


@eqx.filter_jit
def _alpha2_gradient(params, static, target, beta, batch):
    def loss(p):
        f, c = eqx.combine(p, static)
        return alpha2_loss(f, c, target, beta, batch)

    return jax.grad(loss)(params)[0]


@eqx.filter_jit
def _log_d2_gradient(params, static_cond, grid, log_p):
    def log_d2(p):
        f, _ = eqx.combine(p, static_cond)
        return jax.nn.logsumexp(2 * log_p - f.log_prob(grid))

    return jax.grad(log_d2)(params)[0]


def _exact_d2_gradient(flow, static_cond, params, target, beta, n_grid=300):
    """grad log ∫ p_beta(X)^2 / q(X) dX by quadrature on a grid over the box. With q(Y|X) =
    p_beta(Y|X) exactly, D_2 of the joint is that of the marginal, and p_beta(X) ∝ p(X)^beta
    (the mixture's Y|X has the same width at every X)."""
    lower, upper = target.x_bounds()
    axes = [
        np.linspace(lo, hi, n_grid + 1)[:-1] + (hi - lo) / n_grid / 2
        for lo, hi in zip(lower, upper, strict=True)
    ]
    grid = jnp.asarray(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2))
    return _log_d2_gradient(params, static_cond, grid, beta * target.log_marginal(grid))


@functools.cache
def _exact_d2_gradient_at_setup(beta: float):
    """_exact_d2_gradient for _setup's q (the tests of both step counts share it)."""
    target, flow, cond = _setup()
    params, static = split_trainable((flow, cond))
    return _exact_d2_gradient(flow, static, params, target, beta)


@pytest.mark.parametrize("n_steps", [0, 8])
def test_alpha2_gradient_matches_quadrature(n_steps):
    # plain importance sampling (0 steps) and AIS alike; the forward-KL (alpha = 1) gradient
    # differs from this one by 0.33 of its norm (after the best rescaling), so 0.1 tells them
    # apart; measured errors: 0.05-0.07 (0 steps), 0.03-0.05 (8 steps) over three keys
    target, flow, cond = _setup()
    beta = 0.1
    params, static = split_trainable((flow, cond))
    exact = _exact_d2_gradient_at_setup(beta)
    batch = _fab_batch(3, beta, 40_000, n_steps, 0.1)
    estimate = _alpha2_gradient(params, static, target, jnp.asarray(beta), batch)
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(estimate)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(exact)])
    # self-normalised: consistent, O(1/S) bias; the weights (p / q)^2 leave a few % of noise
    assert np.linalg.norm(a - b) < 0.1 * np.linalg.norm(b)
    assert batch.n_evals == 40_000 * (n_steps + 1)
    assert 0.5 < float(jnp.mean(batch.acceptance)) <= 1.0


def test_start_weights_are_those_of_q():
    # the paths' starts are plain draws of q: their log-weights estimate log Z_beta (the
    # 40000 paths of 8 steps of test_alpha2_gradient_matches_quadrature[8]: one program)
    batch = _fab_batch(4, 1.0, 40_000, 8, 0.3)
    w = np.exp(np.asarray(batch.start_log_weights))
    # ∫ exp(-beta u) over (X, Y) at beta = 1 is 1 (the mixture's energy is -log p)
    assert abs(w.mean() - 1.0) < 5 * w.std() / np.sqrt(w.size)


def test_step_size_is_steered_toward_the_target_acceptance():
    assert adapt_fab_step(0.3, 0.9) > 0.3 > adapt_fab_step(0.3, 0.1)
    assert adapt_fab_step(0.3, float("nan")) == 0.3


def test_replay_buffer_gradient_matches_quadrature_after_q_has_moved():
    # the buffer's end points come from AIS under q_old; the loss is taken at another q. The
    # correction q_old / q makes the gradient that of D_2(p || q) at the new q; without it the
    # estimate is that of the old target p^2 / q_old. Measured errors (relative to the exact
    # gradient's norm): corrected 0.017, uncorrected 0.44
    target, flow_old, cond = _setup()
    beta = 0.1
    flow_new = _moved(flow_old)
    params, static = split_trainable((flow_new, cond))
    exact = _exact_d2_gradient(flow_new, static, params, target, beta)

    n = 40_000
    batch = _fab_batch(3, beta, n, 0, 0.1)  # from flow_old = _setup's flow
    buffer = replay_add(empty_buffer(n, 2, target.n_y, batch.X.dtype), batch)
    drawn = replay_draw(jr.key(7), buffer, n)

    b = _flat(exact)
    gradients = _replay_gradients(params, static, target, jnp.asarray(beta), buffer, drawn)
    error, naive = (np.linalg.norm(_flat(g) - b) / np.linalg.norm(b) for g in gradients)
    assert error < 0.1 < naive


@eqx.filter_jit
def _replay_gradients(params, static, target, beta, buffer, drawn):
    """The gradients of replay_loss (corrected by q_old / q) and of the same draws each
    weighted 1 / n (uncorrected), as one program."""

    def corrected(p):
        f, c = eqx.combine(p, static)
        return replay_loss(f, c, target, beta, buffer, drawn)[0]

    def uncorrected(p):
        f, c = eqx.combine(p, static)
        log_q = f.log_prob(buffer.X[drawn]) + jax.vmap(lambda x, y: c.log_prob(target, x, beta, y))(
            buffer.X[drawn], buffer.Y[drawn]
        )
        return -jnp.mean(log_q)

    return jax.grad(corrected)(params)[0], jax.grad(uncorrected)(params)[0]


@eqx.filter_jit
def _rebased(flow_new, cond, target, beta, buffer, drawn):
    """(log q_new at the drawn entries, the buffer re-based on q_new, the gradient of
    replay_loss on it, that of -mean log q_new at the drawn X), as one program."""
    _, log_q = replay_loss(flow_new, cond, target, beta, buffer, drawn)
    updated = replay_update(buffer, drawn, log_q)
    f_params, f_static = eqx.partition(flow_new, eqx.is_inexact_array)

    def loss(p):
        return replay_loss(eqx.combine(p, f_static), cond, target, beta, updated, drawn)[0]

    x = updated.X[drawn]
    mean_log_q = jax.grad(lambda p: -jnp.mean(eqx.combine(p, f_static).log_prob(x)))(f_params)
    return log_q, updated, jax.grad(loss)(f_params), mean_log_q


def test_replay_update_rebases_the_drawn_entries_on_the_current_q():
    target, flow_old, cond = _setup()
    beta = 0.1
    batch = _first(_fab_batch(3, beta, 40_000, 0, 0.1), 64)  # 64 paths from flow_old
    buffer = replay_add(empty_buffer(128, 2, target.n_y, batch.X.dtype), batch)
    flow_new = _moved(flow_old)
    drawn = replay_draw(jr.key(7), buffer, 32)
    assert bool(jnp.all(drawn < 64))  # the empty half is never drawn
    log_q, updated, gradient, mean_log_q = _rebased(
        flow_new, cond, target, jnp.asarray(beta), buffer, drawn
    )
    np.testing.assert_allclose(
        updated.log_weights[drawn],
        buffer.log_weights[drawn] + buffer.log_q[drawn] - log_q,
        rtol=1e-10,
    )
    # re-based on q_new, the entries need no further correction there: uniform c
    np.testing.assert_allclose(_flat(gradient), _flat(mean_log_q), atol=1e-10)
    y = updated.Y[drawn]
    assert y.shape == (32, target.n_y)


def test_replay_add_overwrites_the_oldest_batch():
    batches = [
        FabBatch(
            jnp.full((2, 1), float(i)),
            jnp.zeros((2, 1)),
            jnp.zeros(2),
            jnp.zeros(2),
            jnp.ones(2),
            jnp.zeros(2),
            jnp.zeros(2),
            jnp.asarray(2),
        )
        for i in range(3)
    ]
    buffer = empty_buffer(4, 1, 1, jnp.float64)
    for b in batches:
        buffer = replay_add(buffer, b)
    np.testing.assert_array_equal(buffer.X[:, 0], [2.0, 2.0, 1.0, 1.0])
    assert int(buffer.head) == 2


def _moved(flow, scale=0.1):
    """``flow`` with its trainable parameters (not its fixed box) moved randomly."""
    params, static = split_trainable(flow)
    return eqx.combine(_perturbed(params, jr.key(6), scale), static)


def _first(batch: FabBatch, n: int) -> FabBatch:
    """The batch's first ``n`` paths."""
    return FabBatch(*(a[:n] for a in batch[:-1]), batch.n_evals)


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_training_with_the_replay_buffer_makes_an_ais_batch_every_fab_reuse_updates():
    from coarseflow.samplers.conditional import ChainSettings
    from coarseflow.tempering.schedules import Explicit
    from coarseflow.training.ladder import Callbacks, train
    from coarseflow.training.settings import TrainingSettings

    class Records(Callbacks):
        def __init__(self):
            self.records = []

        def on_updates(self, records):
            self.records += records

    target, flow, cond = _setup()
    settings = TrainingSettings(
        batch_size=16,
        first_beta_updates=6,
        updates_per_beta=6,
        tempering_samples=32,
        objective="fab",
        fab_steps=1,
        fab_buffer_size=64,
        fab_reuse=3,
    )
    seen = Records()
    result = train(
        target,
        flow,
        Explicit((0.5, 1.0)),
        settings,
        ChainSettings(),
        conditional=cond,
        callbacks=seen,
        progress=False,
    )
    assert result.betas == [0.5, 1.0]
    evals = np.diff([0] + [r["energy_evals"] for r in seen.records])
    # AIS batches (16 paths x 2 evaluations) at updates 0 and 3 of each beta; the ladder's 32
    # samples after the first beta show up in the first update of the second
    np.testing.assert_array_equal(evals, [32, 0, 0, 32, 0, 0, 32 + 32, 0, 0, 32, 0, 0])
    assert all(r["n_used"] == 16 and np.isfinite(r["loss"]) for r in seen.records)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fab_buffer_size": 24}, "fab_buffer_size: expected a multiple of batch_size = 16"),
        ({"fab_reuse": 2}, "fab_reuse: reusing AIS batches needs the replay buffer"),
        ({"fab_buffer_size": 32, "objective": "joint"}, "the replay buffer is fab's"),
    ],
)
def test_replay_buffer_settings_are_checked(settings, message):
    from coarseflow.errors import ConfigError
    from coarseflow.training.settings import TrainingSettings

    with pytest.raises(ConfigError, match=message):
        TrainingSettings(**{"batch_size": 16, "objective": "fab", **settings})


@pytest.mark.parametrize("buffer", [False, True])
def test_reverse_kl_conditional_keeps_fabs_flow_gradient_and_trains_q_y_by_its_reverse_kl(buffer):
    """fab_conditional = "reverse_kl": the flow's gradient is fab's alpha = 2 gradient (from
    the AIS batch or the buffer's drawn entries), the conditional's that of its reverse KL at
    the same X; "alpha2" gives the conditional another gradient."""
    from coarseflow.objectives import conditional_terms, masked_mean
    from coarseflow.training.losses import _Fixed, _loss
    from coarseflow.training.settings import TrainingSettings

    target, flow, cond = _setup()
    beta, S, key = 0.1, 64, jr.key(9)
    # paths of 8 steps from q with the exact conditional, which is then perturbed: the AIS
    # batch is only data here, fixed in the loss
    batch = _first(_fab_batch(3, beta, 40_000, 8, 0.1), S)
    cond = _perturbed(cond, jr.key(8), 0.05)
    params, static = split_trainable((flow, cond))
    if buffer:
        store = replay_add(
            empty_buffer(2 * S, target.partition.n_x, target.partition.n_y, batch.X.dtype), batch
        )
        drawn = replay_draw(jr.key(4), store, S)
        fixed, X = _Fixed(None, None, None, None, store, drawn), store.X[drawn]
    else:
        fixed, X = _Fixed(None, None, None, batch), batch.X

    @eqx.filter_jit  # the three gradients as one program
    def gradients(params, key, beta, fixed, X):
        def gradient(fab_conditional):
            training = TrainingSettings(
                batch_size=S,
                objective="fab",
                fab_conditional=fab_conditional,
                fab_buffer_size=2 * S if buffer else 0,
            )
            loss = lambda p: _loss(p, static, key, beta, fixed, target, training)  # noqa: E731
            (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
            return grads, aux

        def reverse_kl(p):
            c = eqx.combine(p, static[1])
            terms = conditional_terms(c, key, target, X, beta, 10.0)
            return masked_mean(terms.surrogate, terms.ok)

        return gradient("reverse_kl"), gradient("alpha2")[0], jax.grad(reverse_kl)(params[1])

    ((flow_split, cond_split), aux), (flow_fab, cond_fab), cond_rkl = gradients(
        params, key, jnp.asarray(beta), fixed, X
    )
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
    np.testing.assert_allclose(flat(flow_split), flat(flow_fab), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(flat(cond_split), flat(cond_rkl), rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(flat(cond_fab) - flat(cond_rkl)) > 0.1 * np.linalg.norm(flat(cond_rkl))
    assert int(aux.evals) == S  # one energy + gradient per entry for the conditional's KL


@pytest.mark.parametrize("objective", ["fab", "hybrid"])
def test_a_conditional_without_a_usable_draw_starves_the_update(objective):
    """Where q(Y|X) learns by its own reverse KL (fab's "reverse_kl", hybrid), n_used counts
    its usable draws too: a conditional whose every draw is NaN reports
    0 (so the ladder's starvation guard stops the run), although fab's AIS batch or hybrid's
    mean forces are all finite. fab's "alpha2" has no draws of its own and keeps the batch's
    count."""
    from coarseflow.training.losses import _Fixed, _loss
    from coarseflow.training.settings import TrainingSettings

    target, flow, cond = _setup()
    S = 16
    broken = eqx.tree_at(lambda c: c.loc, cond, jnp.full_like(cond.loc, jnp.nan))
    if objective == "fab":
        fixed = _Fixed(None, None, None, _first(_fab_batch(3, 0.1, 40_000, 8, 0.1), S))
        modes = ("reverse_kl", "alpha2")
    else:
        z = jr.uniform(jr.key(2), (S, target.partition.n_x))
        fixed, modes = _Fixed(z, jnp.zeros_like(z), jnp.ones(S)), ("alpha2",)  # hybrid's default

    @eqx.filter_jit
    def n_used(conditional, fab_conditional):
        params, static = split_trainable((flow, conditional))
        training = TrainingSettings(
            batch_size=S, objective=objective, fab_conditional=fab_conditional
        )
        return _loss(params, static, jr.key(0), jnp.asarray(0.1), fixed, target, training)[1].n_used

    assert int(n_used(cond, modes[0])) == S
    assert int(n_used(broken, modes[0])) == 0
    if objective == "fab":
        assert int(n_used(broken, "alpha2")) == S


def test_importance_weighted_conditional_gradient_is_zero_per_draw_where_q_is_exact():
    """The importance-weighted bound's doubly reparameterised gradient vanishes for every set
    of draws where q(Y|X) = p_beta(Y|X) (each draw's log w is constant in its path), where the
    reverse KL's reparameterised gradient is 0 only on average; away from it, it is not 0."""
    from coarseflow.objectives import conditional_importance_weighted, conditional_terms

    target, flow, cond = _setup()
    beta = jnp.asarray(1.0)
    X = flow.sample(jr.key(2), (32,))

    @eqx.filter_jit
    def gradients(c):
        params, static = split_trainable(c)

        def iw(p):
            model = eqx.combine(p, static)
            return conditional_importance_weighted(model, jr.key(3), target, X, beta, 8, 1e6)[0]

        def rkl(p):
            terms = conditional_terms(eqx.combine(p, static), jr.key(3), target, X, beta, 1e6)
            return jnp.mean(terms.surrogate)

        return jax.grad(iw)(params), jax.grad(rkl)(params)

    iw, rkl = (_flat(g) for g in gradients(cond))
    np.testing.assert_allclose(iw, 0.0, atol=1e-9)
    # its value is minus the bound, here log w of any one draw (constant in Y where q = p)
    value = conditional_importance_weighted(cond, jr.key(3), target, X, beta, 8, 1e6)[0]
    one_draw = conditional_terms(cond, jr.key(4), target, X[::8], beta, 1e6).log_weights
    np.testing.assert_allclose(value, -np.mean(one_draw), rtol=1e-9)
    assert np.linalg.norm(rkl) > 1e-3
    assert np.linalg.norm(_flat(gradients(_perturbed(cond, jr.key(8), 0.05))[0])) > 1e-3


def test_fab_conditional_is_fabs_setting():
    from coarseflow.errors import ConfigError
    from coarseflow.training.settings import TrainingSettings

    with pytest.raises(ConfigError, match="fab_conditional: expected one of"):
        TrainingSettings(objective="fab", fab_conditional="forward")
    with pytest.raises(ConfigError, match="says how fab trains q"):
        TrainingSettings(objective="joint", fab_conditional="reverse_kl")
