"""Median-based skip / clip around an optax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from coarseflow.errors import ConfigError
from coarseflow.optim import (
    SkipClipState,
    adam_with_skip_clip,
    find_skip_clip_state,
    global_norm,
    history_median,
    skip_clip_stats,
    skip_or_clip,
)

PARAMS = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
DIRECTION = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[0.3, 0.0], [-1.0, 2.0]])}


def grads_with_norm(norm):
    unit = global_norm(DIRECTION)
    return jax.tree.map(lambda g: g * (norm / unit), DIRECTION)


_JITTED = {}


def jit_update(opt):
    """A jitted opt.update, compiled once per optimiser (eager lax.cond recompiles per call)."""
    if id(opt) not in _JITTED:
        _JITTED[id(opt)] = (opt, jax.jit(opt.update))
    return _JITTED[id(opt)][1]


def feed(opt, state, norms, params=PARAMS):
    outs = []
    update = jit_update(opt)
    for n in norms:
        updates, state = update(grads_with_norm(n), state, params)
        outs.append(updates)
    return outs, state


def leaves_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(la, lb, strict=True)
    )


def test_spike_is_skipped_and_adam_state_untouched():
    opt = adam_with_skip_clip(1e-2, window=5, skip_factor=10.0, clip_factor=3.0, min_history=3)
    state = opt.init(PARAMS)
    _, state = feed(opt, state, [1.0, 2.0, 3.0, 2.0])  # median 2
    params = PARAMS
    updates, new_state = jit_update(opt)(grads_with_norm(20.1), state, params)  # > 10 * 2
    assert all(np.all(np.asarray(u) == 0.0) for u in jax.tree.leaves(updates))
    assert leaves_identical(new_state.inner_state, state.inner_state)
    # the skipped (finite) norm still enters the history
    np.testing.assert_allclose(new_state.norms, [1.0, 2.0, 3.0, 2.0, 20.1], rtol=1e-14)
    assert int(new_state.count) == 5 and int(new_state.n_skipped) == 3 + 1  # 3 calibrating
    assert bool(new_state.last_skipped) and float(new_state.last_norm) == pytest.approx(20.1)
    new_params = optax.apply_updates(params, updates)
    assert leaves_identical(new_params, params)
    # just under the skip threshold: accepted (and clipped), Adam's count moves
    _, state2 = jit_update(opt)(grads_with_norm(19.9), state, params)
    assert not bool(state2.last_skipped) and bool(state2.last_clipped)
    assert int(state2.inner_state[0].count) == int(state.inner_state[0].count) + 1


def test_clip_rescales_to_clip_factor_times_median():
    opt = skip_or_clip(
        optax.identity(), window=10, skip_factor=10.0, clip_factor=3.0, min_history=5
    )
    state = opt.init(PARAMS)
    outs, state = feed(opt, state, [1.0, 2.0, 3.0, 4.0, 5.0])  # median 3
    assert all(float(global_norm(out)) == 0.0 for out in outs)  # calibration only
    assert float(history_median(state)) == pytest.approx(3.0, rel=1e-15)
    g = grads_with_norm(12.0)  # 4 x median: clip to 9
    out, state = jit_update(opt)(g, state, PARAMS)
    assert float(global_norm(out)) == pytest.approx(9.0, rel=1e-13)
    for o, gi in zip(jax.tree.leaves(out), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(o, gi * 0.75, rtol=1e-14)  # same direction
    assert bool(state.last_clipped) and not bool(state.last_skipped)
    assert int(state.n_clipped) == 1 and int(state.count) == 6
    assert float(state.norms[5]) == pytest.approx(12.0)  # the raw norm is recorded
    assert float(history_median(state)) == pytest.approx(3.5)  # median of 1,2,3,4,5,12
    # sgd: the parameter step is -lr * clipped gradient
    sgd = skip_or_clip(optax.sgd(0.5), window=10, min_history=5)
    s = sgd.init(PARAMS)
    _, s = feed(sgd, s, [1.0, 2.0, 3.0, 4.0, 5.0])
    out, _ = jit_update(sgd)(g, s, PARAMS)
    assert float(global_norm(out)) == pytest.approx(0.5 * 9.0, rel=1e-13)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_always_skipped(bad):
    opt = adam_with_skip_clip(1e-3, window=4, min_history=2)
    state = opt.init(PARAMS)
    g = grads_with_norm(1.0)
    g = {"a": g["a"].at[1].set(bad), "b": g["b"]}
    updates, new_state = jit_update(opt)(g, state, PARAMS)  # skipped even with no history
    assert all(np.all(np.asarray(u) == 0.0) for u in jax.tree.leaves(updates))
    assert leaves_identical(new_state.inner_state, state.inner_state)
    assert int(new_state.n_skipped) == 1 and int(new_state.count) == 0
    assert bool(new_state.last_skipped) and not np.isfinite(float(new_state.last_norm))
    _, state = feed(opt, new_state, [1.0, 1.0, 1.0])  # 2 calibrate, 1 accepted
    _, state = jit_update(opt)(g, state, PARAMS)
    assert int(state.n_skipped) == 1 + 2 + 1 and int(state.count) == 3


def test_first_min_history_gradients_only_calibrate():
    opt = skip_or_clip(optax.identity(), window=5, skip_factor=4.0, clip_factor=2.0, min_history=3)
    state = opt.init(PARAMS)
    outs, state = feed(opt, state, [1.0, 1000.0, 1e-3])
    for out in outs:  # recorded, but nothing reaches the inner optimiser
        assert float(global_norm(out)) == 0.0
    assert int(state.n_skipped) == 3 and int(state.n_clipped) == 0 and int(state.count) == 3
    # now guarded: median of (1, 1000, 1e-3) is 1 -> 5 is skipped (> 4) and recorded;
    # median of (1, 1000, 1e-3, 5) is 3 -> 7 is clipped to 6, and 5 passes unchanged
    out, state = jit_update(opt)(grads_with_norm(5.0), state, PARAMS)
    assert bool(state.last_skipped)
    out, state = jit_update(opt)(grads_with_norm(7.0), state, PARAMS)
    assert bool(state.last_clipped) and float(global_norm(out)) == pytest.approx(6.0)
    out, state = jit_update(opt)(grads_with_norm(5.0), state, PARAMS)
    assert not bool(state.last_skipped | state.last_clipped)
    assert float(global_norm(out)) == pytest.approx(5.0)


def test_lasting_change_of_scale_is_adopted():
    """A persistent 100x jump is skipped at first, then accepted once it fills the history."""
    opt = skip_or_clip(
        optax.identity(), window=10, skip_factor=10.0, clip_factor=3.0, min_history=5
    )
    state = opt.init(PARAMS)
    _, state = feed(opt, state, [1.0] * 10)
    skipped = []
    for _ in range(12):
        _, state = jit_update(opt)(grads_with_norm(100.0), state, PARAMS)
        skipped.append(bool(state.last_skipped))
    assert skipped[:5] == [True] * 5 and not any(skipped[6:])


def test_nonfinite_norm_is_not_recorded():
    opt = skip_or_clip(optax.identity(), window=4, min_history=1)
    state = opt.init(PARAMS)
    _, state = feed(opt, state, [1.0, float("nan")])
    assert int(state.count) == 1 and bool(state.last_skipped)


def test_ring_buffer_keeps_last_window_and_even_median():
    opt = skip_or_clip(optax.identity(), window=3, skip_factor=1e6, clip_factor=1e5, min_history=1)
    state = opt.init(PARAMS)
    _, state = feed(opt, state, [1.0, 2.0])
    assert float(history_median(state)) == pytest.approx(1.5)  # even count: mean of middle two
    _, state = feed(opt, state, [3.0, 4.0, 5.0])
    assert sorted(np.asarray(state.norms).tolist()) == pytest.approx([3.0, 4.0, 5.0])
    assert int(state.count) == 5 and float(history_median(state)) == pytest.approx(4.0)
    assert np.isnan(float(history_median(opt.init(PARAMS))))


def test_jit_scan_matches_stepwise_loop():
    opt = adam_with_skip_clip(1e-2, window=6, min_history=3)
    norms = jnp.array([1.0, 1.2, 0.9, 30.0, 5.0, 1.1, jnp.nan, 1.0])

    def step(carry, n):
        params, state = carry
        g = grads_with_norm(n)
        g = jax.tree.map(lambda x: x + 0.01 * params["a"].sum(), g)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), state.last_skipped

    (p_scan, s_scan), skipped = jax.jit(lambda c: jax.lax.scan(step, c, norms))(
        (PARAMS, opt.init(PARAMS))
    )
    carry = (PARAMS, opt.init(PARAMS))
    looped_skipped = []
    jitted_step = jax.jit(step)
    for n in norms:
        carry, sk = jitted_step(carry, n)
        looped_skipped.append(bool(sk))
    assert np.asarray(skipped).tolist() == looped_skipped
    # three calibrating, the spike (30 > 10 x median 1), the NaN
    assert looped_skipped == [True, True, True, True, False, False, True, False]
    assert int(s_scan.n_skipped) == 5 and int(s_scan.n_clipped) == 1  # 5.0 > 3 * median 1.1
    for x, y in zip(jax.tree.leaves((p_scan, s_scan)), jax.tree.leaves(carry), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, equal_nan=True)
    _, s = opt.update(grads_with_norm(1.0), opt.init(PARAMS), PARAMS)  # eager works too
    assert int(s.count) == 1 and bool(s.last_skipped)  # calibrating


def test_float32_params_keep_dtypes():
    params = jax.tree.map(lambda x: x.astype(jnp.float32), PARAMS)
    opt = adam_with_skip_clip(1e-3, window=4, min_history=2)
    state = opt.init(params)
    g = jax.tree.map(lambda x: x.astype(jnp.float32), grads_with_norm(1.0))
    updates, new_state = jax.jit(opt.update)(g, state, params)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), (state, new_state))
    assert shapes[0] == shapes[1]


def test_find_state_in_chain_and_stats():
    opt = optax.chain(optax.add_decayed_weights(1e-4), adam_with_skip_clip(1e-3, min_history=1))
    state = opt.init(PARAMS)
    _, state = opt.update(grads_with_norm(2.5), state, PARAMS)  # calibrates
    _, state = opt.update(grads_with_norm(2.0), state, PARAMS)
    found = find_skip_clip_state(state)
    assert isinstance(found, SkipClipState)
    stats = skip_clip_stats(state)
    assert stats["grad_norm"] == pytest.approx(2.0)
    assert stats["skipped"] is False and stats["n_skipped"] == 1 and stats["n_recorded"] == 2
    assert stats["median"] == pytest.approx(2.25)
    static = ("window", "skip_factor", "clip_factor", "min_history")
    inj = optax.inject_hyperparams(adam_with_skip_clip, static_args=static)(
        1e-3, window=5, min_history=2
    )
    assert isinstance(find_skip_clip_state(inj.init(PARAMS)), SkipClipState)
    with pytest.raises(ValueError, match="no SkipClipState"):
        find_skip_clip_state(optax.adam(1e-3).init(PARAMS))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"skip_factor": 3.0, "clip_factor": 3.0}, r"skip_factor: expected a finite number > clip"),
        ({"skip_factor": 10.0, "clip_factor": 1.0}, r"clip_factor: expected a finite number > 1"),
        ({"window": 5, "min_history": 10}, r"window: expected an integer >= min_history = 10"),
        ({"min_history": 0}, r"min_history: expected an integer >= 1, got 0"),
        ({"window": 50.0}, r"window: expected an integer"),
        ({"skip_factor": float("inf")}, r"skip_factor"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        skip_or_clip(optax.identity(), **kwargs)


def test_normalize_by_global_norm_gives_unit_norm_keeps_zero_and_leaves_nan_to_the_guard():
    from coarseflow.optim import global_norm, normalize_by_global_norm

    t = normalize_by_global_norm()
    tree = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    out, _ = t.update(tree, t.init(tree))
    np.testing.assert_allclose(global_norm(out), 1.0)
    np.testing.assert_allclose(out["a"], [0.6, 0.0])
    zero, _ = t.update(jax.tree.map(jnp.zeros_like, tree), None)
    assert float(global_norm(zero)) == 0.0
    bad, _ = t.update({"a": jnp.array([jnp.nan, 1.0]), "b": tree["b"]}, None)
    assert not np.isfinite(float(global_norm(bad)))


def test_the_conditional_learning_rate_gives_q_y_given_x_its_own_adam_and_guard():
    from coarseflow.optim import any_skipped
    from coarseflow.training.settings import TrainingSettings

    training = TrainingSettings(
        learning_rate=1e-2, conditional_learning_rate=1e-4, objective="joint"
    )
    params = (PARAMS, {"c": jnp.zeros(4)})
    opt = training.optimizer()
    state = opt.init(params)

    def step(params, state, flow_norm, conditional_norm):
        grads = (grads_with_norm(flow_norm), {"c": jnp.full(4, conditional_norm / 2.0)})
        updates, state = opt.update(grads, state, params, lr_factor=1.0)
        return optax.apply_updates(params, updates), state

    for _ in range(10):  # each guard's calibration
        params, state = step(params, state, 1.0, 1e6)
    assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in jax.tree.leaves(params))
    params, state = step(params, state, 1.0, 1e6)
    # Adam's first step: each parameter by its group's rate, in the sign of its gradient
    np.testing.assert_allclose(jnp.abs(params[0]["a"]), 1e-2, rtol=1e-4)
    np.testing.assert_allclose(params[1]["c"], -1e-4, rtol=1e-4)
    assert not bool(any_skipped(state))
    # a spike in q(Y|X)'s gradient is judged against its own history, and skips only its step
    before = params
    params, state = step(params, state, 1.0, 1e9)
    assert bool(any_skipped(state))
    np.testing.assert_array_equal(params[1]["c"], before[1]["c"])
    assert float(jnp.max(jnp.abs(params[0]["a"] - before[0]["a"]))) > 1e-3
    # and neither group's scale is the other's: a flow gradient 1e6 times smaller is not skipped
    params, state = step(params, state, 1.0, 1e6)
    assert not bool(any_skipped(state))
