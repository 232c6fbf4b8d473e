"""A run trained from Python objects (cf.train_into_run) is a run of the command line:
`coarseflow sample` / `evaluate` open it, `train --resume` continues it, cf.load_run loads the
trained parameters bit for bit; its config.toml parses back to the same settings; a target no
[target] table describes is refused in one line."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import coarseflow as cf
from coarseflow.cli import main
from coarseflow.config import load_config, to_toml
from coarseflow.python_runs import check_model
from coarseflow.run_folder import MARKER, config_hash
from coarseflow.runs import RunDir

FLOW = cf.FlowSettings(knots=4, layers=1, nn_width=8)
TRAINING = cf.TrainingSettings(
    batch_size=16, first_beta_updates=3, updates_per_beta=2, tempering_samples=32
)
CHAINS = cf.ChainSettings(n_chains=1, n_burn=2, n_keep=2, warm_start_steps=1)
LADDER = cf.Explicit([0.2, 1.0])
PREDICTION = cf.PredictionSettings(n_samples=40, ladder_samples=40, batch_size=40)


def trainable(model):
    return jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))


def assert_bit_equal(a, b):
    leaves_a, leaves_b = trainable(a), trainable(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def model():
    """The user's objects: a DoubleWell and its flow, made as in the README."""
    target = cf.DoubleWell()
    return target, cf.make_flow(jr.key(0), target, FLOW)


def train(out, model, **kwargs):
    target, flow = model
    return cf.train_into_run(
        out,
        target,
        flow,
        LADDER,
        TRAINING,
        CHAINS,
        flow_settings=FLOW,
        prediction=PREDICTION,
        progress=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def python_run(tmp_path_factory, model, one_model_per_config):  # conftest: the CLI builds once
    out = tmp_path_factory.mktemp("python") / "run"
    return out, train(out, model)


def test_run_directory_as_the_cli_writes_it(python_run):
    out, result = python_run
    assert result.betas == [0.2, 1.0]
    run = RunDir(out)
    assert [m["beta"] for m in run.checkpoints()] == [0.2, 1.0]
    assert [r["step"] for r in run.read_metrics()] == list(range(5))  # 3 + 2 updates
    config = load_config(run.config_path)
    marker = json.loads((out / MARKER).read_text())
    assert marker["config_hash"] == config_hash(config.raw)  # the CLI's --resume accepts it
    assert json.loads((out / "model.json").read_text()) == {"flow_permutation": "alternating"}
    assert config.model == FLOW and config.training == TRAINING and config.chains == CHAINS
    assert config.tempering == LADDER and config.prediction == PREDICTION
    assert config.target == {"kind": "double_well", "bound": 9.0}
    loaded = cf.load_run(out)
    assert loaded.meta["beta"] == 1.0 and loaded.conditional is None
    assert_bit_equal(loaded.flow, result.flow)


def test_cli_samples_and_evaluates_it(python_run, tmp_path, capsys):
    out, _ = python_run
    npz = tmp_path / "s.npz"
    assert main(["sample", str(out), "-n", "40", "--quiet", "-o", str(npz)]) == 0
    assert "wrote 40 samples at beta = 1" in capsys.readouterr().out
    with np.load(npz) as f:
        assert f["x"].shape == (40, 2) and np.isfinite(f["log_weights"]).all()
    assert main(["evaluate", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [b["beta"] for b in summary["per_beta"]] == [0.2, 1.0]
    assert [b["n_samples"] for b in summary["per_beta"]] == [40, 40]


def test_cli_resumes_it_to_the_uninterrupted_result(python_run, model, tmp_path):
    """One beta from Python, the rest by `coarseflow train --resume`: the model of the run
    trained in one go, bit for bit (the keys of beta k derive from the seed and k)."""
    out = tmp_path / "half"
    assert train(out, model, max_betas=1).betas == [0.2]
    config = str(out / "config.toml")
    args = ["train", config, "--out", str(out), "--resume", "--quiet", "--no-evaluate"]
    assert main(args) == 0
    assert_bit_equal(cf.load_run(out).flow, python_run[1].flow)
    assert [r["step"] for r in RunDir(out).read_metrics()] == list(range(5))


def test_its_checkpoints_and_another_config_are_refused(python_run, model):
    out, _ = python_run
    with pytest.raises(cf.ConfigError, match="already has checkpoints; pass --resume"):
        train(out, model)
    target, flow = model
    with pytest.raises(cf.ConfigError, match="the config differs from the one it was made with"):
        cf.train_into_run(out, target, flow, cf.Explicit([0.5, 1.0]), TRAINING, CHAINS,
                          flow_settings=FLOW, prediction=PREDICTION)  # fmt: skip


def test_energy_target_is_refused_in_one_line(tmp_path):
    target = cf.EnergyTarget(lambda x: jnp.sum(x**2), cf.Partition.from_x(2, [0]), -2.0, 2.0)
    flow = cf.make_flow(jr.key(0), target, FLOW)
    with pytest.raises(cf.ConfigError) as err:
        cf.train_into_run(tmp_path / "r", target, flow, LADDER, TRAINING, CHAINS)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("EnergyTarget: no run directory for it: its energy is a Python")
    assert "cf.train" in message and "cf.draw_samples" in message
    assert not (tmp_path / "r").exists()


def test_a_flow_the_run_would_not_rebuild_is_refused(model, tmp_path):
    """Its checkpoints would load into another flow, so nothing is written: a flow made for
    another box, or with other settings than those passed."""
    target, flow = model
    other_box = cf.make_flow(jr.key(0), cf.DoubleWell(bound=8.0), FLOW)
    wider = dataclasses.replace(FLOW, interval=3.0)  # same shapes, another base and box map
    for flow_, passed in ((other_box, FLOW), (flow, wider)):
        with pytest.raises(cf.ConfigError, match="other fixed parts") as err:
            cf.train_into_run(tmp_path / "r", target, flow_, LADDER, TRAINING, CHAINS,
                              flow_settings=passed)  # fmt: skip
        message = str(err.value)
        assert (
            message.startswith("flow: not the one its run directory rebuilds")
            and "\n" not in message
        )
        assert "make_flow(jax.random.key(flow_settings.seed), target, flow_settings)" in message
        assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_flow_of_another_key_is_refused():
    """Three X: the flow's alternating permutations depend on make_flow's key."""
    target = cf.ManyWell(n_wells=3)
    settings = cf.FlowSettings(knots=4, layers=3, nn_width=8)
    config = cf.run_config(target, LADDER, TRAINING, CHAINS, flow_settings=settings)
    check_model(config, target, cf.make_flow(jr.key(0), target, settings), None)  # passes
    with pytest.raises(cf.ConfigError, match="another key's permutations"):
        check_model(config, target, cf.make_flow(jr.key(1), target, settings), None)


def test_a_learned_conditional_is_checked_too(model, tmp_path):
    """Against [conditional]: the settings passed, by default those of its kind."""
    target, flow = model
    settings = cf.ConditionalSettings(kind="gaussian", nn_width=8)
    joint = dataclasses.replace(TRAINING, objective="joint")
    config = cf.run_config(
        target, LADDER, joint, CHAINS, flow_settings=FLOW, conditional_settings=settings
    )
    conditional = cf.make_conditional(jr.key(0), target, settings)
    check_model(config, target, flow, conditional)  # passes
    with pytest.raises(cf.ConfigError, match="conditional: not the one"):
        check_model(config, target, flow, None)
    with pytest.raises(cf.ConfigError, match="other layers or sizes.*kind='gaussian'"):
        cf.train_into_run(tmp_path / "r", target, flow, LADDER, joint, CHAINS,
                          conditional=conditional, flow_settings=FLOW)  # fmt: skip
    assert not (tmp_path / "r").exists()


ROUND_TRIPS = [
    (cf.DoubleWell(bound=7.5), cf.Explicit([0.2, 1.0]), cf.TrainingSettings(), {}),
    (
        cf.GaussianMixture(n_x=2, n_y=3, n_components=3, weights=[1.0, 2.0, 3.0], seed=4),
        cf.Adaptive(beta0=0.05, max_kl_increase=None, min_ess_fraction=0.4),
        cf.TrainingSettings(final_beta_updates=7, objective="joint", learning_rate=3e-4),
        {
            "conditional_settings": cf.ConditionalSettings(kind="flow", layers=1, seed=2),
            "flow_settings": cf.FlowSettings(permutation="random", uniform_angles=False),
        },
    ),
    (
        cf.ManyWell(n_wells=2, support_beta=0.05),
        cf.Geometric(beta0=0.01, n_betas=4),
        cf.TrainingSettings(seed=3),
        {"prediction": cf.PredictionSettings(ladder_samples=9, refine_steps=0)},
    ),
    (cf.DoubleWell(), cf.Linear(beta0=0.1, n_betas=3), cf.TrainingSettings(), {}),
]


@pytest.mark.parametrize("target, schedule, training, kwargs", ROUND_TRIPS)
def test_config_round_trips_through_its_file(tmp_path, target, schedule, training, kwargs):
    """Every key of every section written; the file parses back (config.parse_config, through
    load_config) to equal settings, the same raw table and hash, and the same target."""
    config = cf.run_config(target, schedule, training, CHAINS, **kwargs)
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config.raw))
    parsed = load_config(path)
    assert parsed.raw == config.raw and config_hash(parsed.raw) == config_hash(config.raw)
    given = {
        "model": kwargs.get("flow_settings", cf.FlowSettings()),
        "conditional": kwargs.get("conditional_settings", cf.ConditionalSettings()),
        "chains": CHAINS,
        "training": training,
        "tempering": schedule,
        "prediction": kwargs.get("prediction", cf.PredictionSettings()),
    }
    for section, settings in given.items():
        assert getattr(parsed, section) == settings, section
        if section != "tempering":  # its keys depend on the kind (tempering/config.py)
            fields = {f.name for f in dataclasses.fields(settings) if f.init}
            unset = {f for f in fields if getattr(settings, f) is None}  # TOML has no null
            assert set(parsed.raw[section]) == fields - unset, section
    assert list(parsed.raw) == ["target", *given]
    from coarseflow.config import build_target

    rebuilt = build_target(parsed.target)
    assert type(rebuilt) is type(target)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(target)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(target), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-15)


@pytest.mark.slow
def test_molecule_maps_to_its_target_table():
    """A built-in molecule by name, its selection and gauge atoms written out (OpenMM: slow)."""
    molecule = cf.Molecule(pdb="alanine_dipeptide")
    config = cf.run_config(molecule, LADDER, TRAINING, CHAINS)
    assert config.target["pdb"] == "alanine_dipeptide"
    assert config.target["fixed_atoms"] == list(molecule.fixed_atoms)
    assert config.target["temperature"] == molecule.temperature
