"""The tempering loop: resume reproduces an uninterrupted run; NaN energies are skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.checkpointing import train_into
from coarseflow.config import parse_config
from coarseflow.errors import ConfigError
from coarseflow.model.flow import FlowSettings, box_flow, split_trainable
from coarseflow.partition import Partition
from coarseflow.run_training import train_from_config
from coarseflow.samplers.conditional import ChainSettings
from coarseflow.targets import EnergyTarget
from coarseflow.tempering.schedules import Explicit
from coarseflow.training.health import heating_warning
from coarseflow.training.ladder import train
from coarseflow.training.settings import TrainingSettings
from coarseflow.workflow import load_run

# conftest: runs of one config share one built target and flow, so they compile once
pytestmark = pytest.mark.usefixtures("one_model_per_config")

TINY = {
    "target": {"kind": "double_well"},
    "model": {"knots": 4, "layers": 1, "nn_width": 8, "nn_depth": 1},
    "chains": {"n_chains": 1, "n_burn": 2, "n_keep": 2, "warm_start_steps": 1},
    "training": {
        "batch_size": 16,
        "first_beta_updates": 6,
        "updates_per_beta": 4,
        "tempering_samples": 32,
        "learning_rate": 1e-2,
    },
    "tempering": {"kind": "explicit", "betas": [0.1, 0.4, 1.0]},
    "prediction": {"n_samples": 64},
}


def leaves(flow):
    return [np.asarray(a) for a in jax.tree.leaves(split_trainable(flow)[0])]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    config = parse_config(TINY)
    full = train_from_config(config, tmp_path / "full", progress=False)
    assert full.betas == [0.1, 0.4, 1.0]

    part = train_from_config(config, tmp_path / "part", progress=False, max_betas=2)
    assert part.betas == [0.1, 0.4]
    resumed = train_from_config(config, tmp_path / "part", progress=False, resume=True)
    assert resumed.betas == [0.1, 0.4, 1.0]
    for a, b in zip(leaves(full.flow), leaves(resumed.flow), strict=True):
        np.testing.assert_array_equal(a, b)

    from coarseflow.runs import RunDir

    m_full = RunDir(tmp_path / "full").read_metrics()
    m_part = RunDir(tmp_path / "part").read_metrics()
    assert [r["step"] for r in m_part] == list(range(6 + 4 + 4))
    for a, b in zip(m_full, m_part, strict=True):
        assert a["loss"] == b["loss"] and a["beta"] == b["beta"]
    # the clock goes on across the resume: wall_time is the training time of both processes
    times = [r["wall_time"] for r in m_part]
    assert times == sorted(times)

    # every update logs its chains' heating; each checkpoint the mean over its beta's updates
    assert all(np.isfinite(r["chain_heating"]) for r in m_full)
    for meta in RunDir(tmp_path / "full").checkpoints():
        mine = [r["chain_heating"] for r in m_full if r["beta"] == meta["beta"]]
        assert meta["chain_heating"] == pytest.approx(np.mean(mine))

    # the loaded last checkpoint is the trained flow
    _, _, flow, _, meta = load_run(tmp_path / "full")
    assert meta["beta"] == 1.0
    for a, b in zip(leaves(full.flow), leaves(flow), strict=True):
        np.testing.assert_array_equal(a, b)

    # resuming a finished run changes nothing; a fresh train into it is refused
    again = train_from_config(config, tmp_path / "full", progress=False, resume=True)
    assert again.betas == [0.1, 0.4, 1.0]
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train_from_config(config, tmp_path / "full", progress=False)


def test_final_beta_updates_set_the_updates_at_beta_one_only(tmp_path):
    from coarseflow.runs import RunDir

    raw = {**TINY, "training": {**TINY["training"], "final_beta_updates": 9}}
    train_from_config(parse_config(raw), tmp_path, progress=False)
    per_beta = [
        sum(r["beta"] == b for r in RunDir(tmp_path).read_metrics()) for b in (0.1, 0.4, 1.0)
    ]
    assert per_beta == [6, 4, 9]
    # a one-beta ladder is its first beta
    assert TrainingSettings(first_beta_updates=7, final_beta_updates=9).updates_at(0, 1.0) == 7
    with pytest.raises(ConfigError, match=r"final_beta_updates: expected an integer > 0"):
        TrainingSettings(final_beta_updates=0)


def test_resume_with_a_different_config_is_refused(tmp_path):
    train_from_config(parse_config(TINY), tmp_path, progress=False, max_betas=1)
    other = {**TINY, "training": {**TINY["training"], "learning_rate": 0.5}}
    with pytest.raises(ConfigError, match="config differs"):
        train_from_config(parse_config(other), tmp_path, progress=False, resume=True)


def _nan_target(where):
    def u(x):
        e = 0.5 * x[0] ** 2 + 0.5 * x[1] ** 2
        return jnp.where(where(x), jnp.nan, e)

    return EnergyTarget(u, Partition.from_x(2, [0]), lower=-4.0, upper=4.0)


def _train(target, updates=20, run=None):
    flow = box_flow(
        jax.random.key(0),
        lower=np.array([-4.0]),
        upper=np.array([4.0]),
        settings=FlowSettings(knots=4, layers=1, nn_width=8),
    )
    settings = TrainingSettings(
        batch_size=64, first_beta_updates=updates, tempering_samples=32, learning_rate=1e-2
    )
    chains = ChainSettings(n_chains=1, n_burn=2, n_keep=2, warm_start_steps=0)
    if run is None:
        return train(target, flow, Explicit((1.0,)), settings, chains, progress=False)
    return train_into(run, target, flow, Explicit((1.0,)), settings, chains, progress=False)


def test_nan_energies_are_dropped_not_learned(tmp_path):
    from coarseflow.runs import RunDir

    # NaN for x1 > 1: about a fifth of the initial samples
    run = RunDir(tmp_path)
    result = _train(_nan_target(lambda x: x[0] > 1.0), run=run)
    assert all(np.all(np.isfinite(a)) for a in leaves(result.flow))
    used = [r["n_used"] for r in run.read_metrics()]
    assert min(used) < 64 and max(used) > 0
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in run.read_metrics())


def test_energy_nan_everywhere_is_refused():
    with pytest.raises(ConfigError, match="not finite"):
        _train(_nan_target(lambda x: True))


def test_heating_warning_only_for_clear_heating():
    rng = np.random.default_rng(0)
    warning = heating_warning(0.5, list(1.0 + 0.3 * rng.standard_normal(100)))
    assert warning is not None and "n_burn" in warning and "beta = 0.5" in warning
    assert heating_warning(0.5, list(0.05 + 0.3 * rng.standard_normal(100))) is None  # small
    assert heating_warning(0.5, [3.0, -2.0, 1.0]) is None  # not significant
    assert heating_warning(0.5, [float("nan")] * 10) is None


def test_a_beta_ends_with_the_moving_average_of_its_parameters():
    """average_decay = d: the model a beta hands on (and train returns) is the average
    a <- d a + (1 - d) params over that beta's updates, started at its first parameters,
    replayed here update by update with the same keys (not the last iterate)."""
    import jax.random as jr

    from coarseflow.targets import DoubleWell
    from coarseflow.training.step import UpdateSettings, init, start_beta, update_step

    target = DoubleWell()
    lower, upper = target.x_bounds()
    settings = FlowSettings(knots=4, layers=1, nn_width=8)
    flow = box_flow(jax.random.key(0), lower=lower, upper=upper, settings=settings)
    chains = ChainSettings(n_chains=1, n_burn=2, n_keep=2, warm_start_steps=1)
    n, d = 14, 0.7  # the gradient guard skips the first 10 (calibration)
    training = TrainingSettings(
        batch_size=16, first_beta_updates=n, learning_rate=1e-2, average_decay=d, seed=3
    )
    state, static = init((flow, None), training)
    state = start_beta(state, target, training)
    average = state.params
    beta_key = jr.fold_in(jr.key(training.seed), 0)
    for i in range(n):
        state, _ = update_step(
            state,
            static,
            jr.fold_in(beta_key, i),
            jnp.asarray(1.0),
            jnp.asarray(training.lr_factor(i, n)),
            jnp.asarray(training.fab_step_size),
            target,
            UpdateSettings(training, chains),
        )
        average = jax.tree.map(lambda a, p: d * a + (1 - d) * p, average, state.params)
    by_hand = [np.asarray(a) for a in jax.tree.leaves(average[0])]
    last = [np.asarray(a) for a in jax.tree.leaves(state.params[0])]

    averaged = train(target, flow, Explicit([1.0]), training, chains, progress=False)
    for a, b in zip(leaves(averaged.flow), by_hand, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert (
        max(np.max(np.abs(a - b), initial=0.0) for a, b in zip(by_hand, last, strict=True)) > 1e-4
    )
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"\[training\] average_decay: expected a number"):
            TrainingSettings(average_decay=bad)
