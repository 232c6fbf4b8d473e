"""Data parallelism (coarseflow.parallel): training on 1 and 4 simulated CPU devices gives the
same model, the batch is really split, and a ladder resumes on another device count.

XLA fixes the number of host devices when JAX starts, so the checks run in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4; the parent only reads its verdicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coarseflow.errors import ConfigError
from coarseflow.parallel import check_divisible, data_mesh, device_count, shard_batch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import dataclasses, json, sys
import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, numpy as np
from coarseflow.config import build_target, load_config, parse_config
from coarseflow.errors import ConfigError
from coarseflow.parallel import data_mesh, replicate
from coarseflow.predict.draw import draw_samples
from coarseflow.predict.refine import refine
from coarseflow.training.ladder import Callbacks, train
from coarseflow.training.refit import refit_updates
from coarseflow.training.step import UpdateSettings, _gradients, init
from coarseflow.workflow import initial_model

def config_of(objective):
    raw = load_config(sys.argv[1]).raw
    # a small flow: what is compared is the batch's split, not what the flow can learn (the
    # compilations, one per objective and device count, are this script's run time)
    raw["model"].update(knots=4, layers=2, nn_width=8, nn_depth=1)
    raw["training"].update(objective=objective, batch_size=64, first_beta_updates=12,
                           updates_per_beta=6, tempering_samples=128, fab_steps=2,
                           refit_updates=12, refit_draws=8)
    if objective == "fab":
        raw["training"]["forward_kl_weight"] = 0.0
    raw["conditional"] = {"kind": "gaussian"}
    return parse_config(raw)

def model_of_config(config):
    # one target and one model skeleton per config: every run on the same device count then
    # reuses the compiled programs (a new flow's static part is a fresh closure)
    target = build_target(config.target)
    return target, initial_model(config, target)

def leaves(model):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]

def largest_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b), strict=True))

class Keep(Callbacks):
    def __init__(self):
        self.ladders = []

    def on_beta(self, beta, ladder, summary):
        self.ladders.append(ladder)

def run(config, built, n, max_betas, start=None, callbacks=None):
    target, (flow, conditional) = built
    result = train(target, flow, config.tempering, config.training, config.chains,
                   conditional=conditional, prediction=config.prediction, progress=False,
                   max_betas=max_betas, mesh=data_mesh(n), start=start, callbacks=callbacks)
    return (result.flow, result.conditional), result.betas

def model_of(ladder, config, built):
    static = init(built[1], config.training)[1]
    return eqx.combine(ladder.state.params, static)

out = {"devices": len(jax.devices())}
# joint: two betas on one device; the first of them on 4 devices, and the second resumed on 4
# devices from the one device's checkpoint (the programs of each device count compile once)
config = config_of("joint")
built = model_of_config(config)
keep1 = Keep()
whole, betas = run(config, built, 1, 2, callbacks=keep1)
first = model_of(keep1.ladders[0], config, built)
four, _ = run(config, built, 4, 1)
out["joint"] = {"4": largest_difference(first, four)}
resumed, resumed_betas = run(config, built, 4, 2, start=keep1.ladders[0])
out["resume"] = largest_difference(whole, resumed)
out["betas"] = [betas, resumed_betas]
# prediction: the same draws on 1 and 4 devices
target = built[0]
draws = [draw_samples(jr.key(3), target, whole[0], 1.0, config.prediction, n=64,
                      conditional=whole[1], mesh=data_mesh(n)) for n in (1, 4)]
out["samples"] = max(float(np.max(np.abs(a - b))) for a, b in
                     ((draws[0].x, draws[1].x), (draws[0].log_weights, draws[1].log_weights)))
# the refinement's AIS paths: the same on 1 and 4 devices
refined = [refine(jr.key(4), target, whole[0], whole[1], 1.0,
                  dataclasses.replace(config.prediction, refine_steps=2), n=64,
                  mesh=data_mesh(n))[0] for n in (1, 4)]
out["refined"] = max(float(np.max(np.abs(a - b))) for a, b in
                     ((refined[0].x, refined[1].x),
                      (refined[0].log_weights, refined[1].log_weights)))
try:
    draw_samples(jr.key(3), target, whole[0], 1.0, config.prediction, n=30,
                 conditional=whole[1], mesh=data_mesh(4))
    out["rows_indivisible"] = None
except ConfigError as err:
    out["rows_indivisible"] = str(err)

# what is split and what is copied: the first update's draws on 4 devices
mesh = data_mesh(4)
state, static = init(built[1], config.training)
state = replicate(state, mesh)
settings = UpdateSettings(config.training, config.chains, config.prediction, mesh)
grads, *_, samples, log_w = _gradients(state, static, jr.key(0), jnp.asarray(0.5), None,
                                       target, settings)
out["params_devices"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)
out["params_spec"] = list(jax.tree.leaves(state.params)[0].sharding.spec)
out["samples_spec"] = list(samples[0].sharding.spec)
out["samples_devices"] = len(samples[0].sharding.device_set)
try:
    run(parse_config({**config.raw, "training": {**config.raw["training"], "batch_size": 62,
                                                 "refit_updates": 0}}), built, 4, 1)
    out["indivisible"] = None
except ConfigError as err:
    out["indivisible"] = str(err)

# the refit of q(Y|X) after the ladder: the same on 1 and 4 devices (12 updates from whole)
refitted = []
for n in (1, 4):
    start, static = init(whole, config.training)
    params = replicate(start.params, data_mesh(n))
    for params, _ in refit_updates(params, static, target, config.training, data_mesh(n)):
        pass
    refitted.append(eqx.combine(params, static))
out["refit"] = largest_difference(*refitted)

config = config_of("fab")  # the same model as joint's: only [training] differs
one = run(config, built, 1, 1)[0]
out["fab"] = {"4": largest_difference(one, run(config, built, 4, 1)[0])}
print("RESULT " + json.dumps(out))
"""


# The training checks compile every objective on 1 and 4 devices in a subprocess (about 1.5
# min): on demand, -m slow. evaluate and the replica exchange on 4 devices stay in the default run.
@pytest.fixture(scope="module")
def verdicts():
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "configs" / "gmm_2d.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.slow
def test_four_simulated_devices(verdicts):
    assert verdicts["devices"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["joint", "fab"])
def test_same_model_on_one_and_four_devices(verdicts, objective):
    # 12 updates in float32; only the order of the batch's sums differs (measured: <= 3e-8)
    for n, difference in verdicts[objective].items():
        assert difference < 1e-5, (objective, n, difference)


@pytest.mark.slow
def test_resumes_on_another_device_count(verdicts):
    whole, resumed = verdicts["betas"]  # the ladder's next beta is computed from the model
    assert len(whole) == len(resumed) == 2
    assert resumed == pytest.approx(whole, rel=1e-5)
    assert verdicts["resume"] < 1e-5


@pytest.mark.slow
def test_batch_split_parameters_copied(verdicts):
    assert verdicts["params_devices"] == 4 and verdicts["params_spec"] == []
    assert verdicts["samples_devices"] == 4
    assert verdicts["samples_spec"] == ["batch"]


@pytest.mark.slow
def test_batch_that_does_not_split_is_refused(verdicts):
    assert "batch_size = 62 does not split over 4 devices" in verdicts["indivisible"]
    assert "rows per batch" in verdicts["rows_indivisible"]
    assert "= 30 does not split over 4 devices" in verdicts["rows_indivisible"]


@pytest.mark.slow
def test_same_refit_on_one_and_four_devices(verdicts):
    assert verdicts["refit"] < 1e-5  # 12 updates of q(Y|X), float32


@pytest.mark.slow
def test_same_samples_on_one_and_four_devices(verdicts):
    assert verdicts["samples"] < 1e-4  # coordinates and log-weights, float32


@pytest.mark.slow
def test_same_refined_samples_on_one_and_four_devices(verdicts):
    assert verdicts["refined"] < 1e-4  # the AIS paths' end points and weights, float32


def test_one_device_is_the_plain_path():
    assert data_mesh(1) is None and device_count(None) == 1
    x = object()
    assert shard_batch(x, None) is x
    check_divisible(7, None, "n")
    with pytest.raises(ConfigError, match="devices: expected an integer from 1"):
        data_mesh(10**6)


# evaluate and reference on 4 simulated devices against 1 (another process: the same XLA flag)
MORE = r"""
import json, shutil, sys
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
from coarseflow.cli import main
from coarseflow.errors import ConfigError
from coarseflow.parallel import data_mesh
from coarseflow.samplers.replica_exchange import run_replica_exchange, temperature_ladder
from coarseflow.units import MOLAR_GAS_CONSTANT

root = Path(sys.argv[1])
out = {"devices": len(jax.devices())}
config, run = root / "tiny.toml", root / "run"
config.write_text(
    '[target]\nkind = "double_well"\n'
    "[model]\nknots = 4\nlayers = 1\nnn_width = 8\n"
    "[chains]\nn_chains = 1\nn_burn = 2\nn_keep = 2\nwarm_start_steps = 1\n"
    "[training]\nbatch_size = 16\nfirst_beta_updates = 5\nupdates_per_beta = 3\n"
    "tempering_samples = 32\n"
    '[tempering]\nkind = "explicit"\nbetas = [0.2, 1.0]\n'
    "[prediction]\nn_samples = 200\nladder_samples = 60\n"
)
flags = ["--quiet"]
train = ["train", str(config), "--out", str(run), "--devices", "1", "--no-evaluate", "--quiet"]
assert main(train) == 0
evaluated = {}
for n in ("1", "4"):
    out[f"evaluate_{n}"] = main(["evaluate", str(run), "--devices", n, *flags])
    with np.load(run / "samples" / "evaluation.npz") as f:
        arrays = {k: f[k] for k in ("x", "log_weights")}
    evaluated[n] = (arrays, json.loads((run / "summary.json").read_text()))
out["evaluation_samples"] = max(float(np.max(np.abs(evaluated["1"][0][k] - evaluated["4"][0][k])))
                                for k in ("x", "log_weights"))
out["evaluation_summary"] = {
    n: [[b["n_samples"], b["ess"], b["log_Z_estimate"]] for b in evaluated[n][1]["per_beta"]]
    for n in evaluated
}
out["evaluate_indivisible"] = main(["evaluate", str(run), "-n", "30", "--devices", "4", *flags])

# the replica exchange's chains: a double well (kJ/mol), 4 rungs x 8 chains
def double_well(x):
    return MOLAR_GAS_CONSTANT * 300.0 * (8.0 * (x[0] ** 2 - 1.0) ** 2 + 0.5 * x[0])

def exchange(n_devices, n_chains=8):
    return run_replica_exchange(
        double_well, lambda x: {"x": x[0]}, jnp.array([-1.0]), jnp.ones(1),
        temperature_ladder(300.0, 3000.0, 4), n_chains=n_chains, time_step=0.01, friction=1.0,
        n_steps=1000, burn_in_steps=100, record_every=10, exchange_every=10,
        key=jax.random.key(0), progress=False, mesh=data_mesh(n_devices))

one, four = exchange(1), exchange(4)
out["exchange"] = {
    k: float(np.max(np.abs(one.records[k] - four.records[k]))) for k in ("x", "energy")
}
out["exchange"]["positions"] = float(np.max(np.abs(
    np.asarray(one.state.md.positions) - np.asarray(four.state.md.positions))))
out["acceptance"] = [one.swap_acceptance.tolist(), four.swap_acceptance.tolist()]
out["chains_spec"] = list(four.state.md.positions.sharding.spec)
out["chains_devices"] = len(four.state.md.positions.sharding.device_set)
try:
    exchange(4, n_chains=6)
    out["chains_indivisible"] = None
except ConfigError as err:
    out["chains_indivisible"] = str(err)
# coarseflow reference --devices: its 2 quick chains do not split over 4 (refused at once)
out["reference_indivisible"] = main(
    ["reference", sys.argv[2], "--quick", "--devices", "4", "-o", str(root / "ref.npz")])
out["reference_written"] = (root / "ref.npz").exists()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def more_verdicts(tmp_path_factory):
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
        "COARSEFLOW_JAX_CACHE": "",
    }
    root = tmp_path_factory.mktemp("devices")
    proc = subprocess.run(
        [sys.executable, "-c", MORE, str(root), str(ROOT / "configs" / "alanine_dipeptide.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :]) | {"stderr": proc.stderr}


def test_evaluate_on_four_devices_equals_one(more_verdicts):
    assert more_verdicts["devices"] == 4
    assert more_verdicts["evaluate_1"] == more_verdicts["evaluate_4"] == 0
    assert more_verdicts["evaluation_samples"] < 1e-4  # coordinates and log-weights, float32
    one, four = more_verdicts["evaluation_summary"]["1"], more_verdicts["evaluation_summary"]["4"]
    assert [b[0] for b in one] == [b[0] for b in four] == [60, 200]
    for a, b in zip(one, four, strict=True):
        assert b[1:] == pytest.approx(a[1:], rel=1e-4, abs=1e-4)


def test_evaluate_rows_that_do_not_split_are_refused(more_verdicts):
    assert more_verdicts["evaluate_indivisible"] == 2
    assert (
        "rows per batch (min([prediction] batch_size, n)) = 30 does not split over 4 devices"
        in (more_verdicts["stderr"])
    )


def test_replica_exchange_on_four_devices_equals_one(more_verdicts):
    # every walker's steps are the same arithmetic on any device and the random numbers do
    # not depend on the split: measured equal to the last bit; tolerance 1e-6 (float32)
    for what, difference in more_verdicts["exchange"].items():
        assert difference < 1e-6, (what, difference)
    one, four = more_verdicts["acceptance"]
    assert four == pytest.approx(one, abs=1e-6) and len(one) == 3
    assert more_verdicts["chains_spec"] == [None, "batch"]  # (rungs, chains, ...): chains split
    assert more_verdicts["chains_devices"] == 4


def test_reference_chains_that_do_not_split_are_refused(more_verdicts):
    assert (
        "[reference] n_chains = 6 does not split over 4 devices"
        in (more_verdicts["chains_indivisible"])
    )
    assert more_verdicts["reference_indivisible"] == 2
    assert not more_verdicts["reference_written"]
    assert "[reference] n_chains = 2 does not split over 4 devices" in more_verdicts["stderr"]


# several processes: what is refused before jax.distributed starts (the run itself:
# tests/test_distributed.py)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"coordinator": "nohost"}, "--coordinator: expected HOST:PORT, got 'nohost'"),
        ({"coordinator": "h:1", "num_processes": 0}, "--num-processes: expected an integer >= 1"),
        (
            {"coordinator": "h:1", "num_processes": 2, "process_id": 2},
            "--process-id: expected an integer >= 0 and < --num-processes (2), got 2",
        ),
        ({"process_id": -1}, "--process-id: expected an integer >= 0, got -1"),
    ],
)
def test_bad_process_settings_are_refused(kwargs, message):
    from coarseflow.parallel import initialize

    with pytest.raises(ConfigError) as err:
        initialize(**kwargs)
    assert message in str(err.value)


def test_one_process_without_settings():
    import jax

    from coarseflow.parallel import broadcast_bytes, initialize, is_main_process, to_host

    assert initialize() == 1 and not jax.distributed.is_initialized()
    assert is_main_process() and broadcast_bytes(b"abc") == b"abc"
    assert to_host(jax.numpy.arange(3)).tolist() == [0, 1, 2]


def test_cli_process_options_and_variables(monkeypatch, capsys, tmp_path):
    from coarseflow.cli import main

    config = str(ROOT / "configs" / "gmm_2d.toml")
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", config, *out, "--coordinator", "h:1", "--process-id", "5",
                 "--num-processes", "2"]) == 2  # fmt: skip
    assert "--process-id: expected an integer >= 0 and < --num-processes (2)" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("COARSEFLOW_NUM_PROCESSES", "two")
    assert main(["train", config, *out]) == 2
    assert "$COARSEFLOW_NUM_PROCESSES: expected an integer, got 'two'" in capsys.readouterr().err
    monkeypatch.setenv("COARSEFLOW_NUM_PROCESSES", "0")  # read, then checked like the option
    assert main(["train", config, *out]) == 2
    assert "--num-processes: expected an integer >= 1, got 0" in capsys.readouterr().err
    # --distributed outside any allocation JAX knows: one line, nothing written (a process of
    # its own: jax.distributed must start before JAX's backend, which this one has started)
    monkeypatch.delenv("COARSEFLOW_NUM_PROCESSES")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORD"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "coarseflow.cli", "train", config, *out, "--distributed"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "coarseflow: error: several processes: coordinator_address should be defined; give "
        "--coordinator HOST:PORT, --num-processes P and --process-id I, or run inside a SLURM "
        "/ Open MPI allocation that JAX detects"
    ]
    assert not (tmp_path / "run").exists()
