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
import json, sys
import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, numpy as np
from coarseflow.config import build_target, load_config, parse_config
from coarseflow.errors import ConfigError
from coarseflow.parallel import data_mesh, replicate
from coarseflow.predict import draw_samples
from coarseflow.training.ladder import Callbacks, train
from coarseflow.training.step import UpdateSettings, _gradients, init
from coarseflow.workflow import initial_model

def config_of(objective):
    raw = load_config(sys.argv[1]).raw
    raw["training"].update(objective=objective, batch_size=64, first_beta_updates=12,
                           updates_per_beta=6, tempering_samples=128, fab_steps=2)
    if objective == "fab":
        raw["training"]["forward_kl_weight"] = 0.0
    raw["conditional"] = {"kind": "gaussian"}
    return parse_config(raw)

def leaves(model):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]

def largest_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b), strict=True))

class Keep(Callbacks):
    def __init__(self):
        self.ladders = []

    def on_beta(self, beta, ladder, summary):
        self.ladders.append(ladder)

def run(config, n, max_betas, start=None, callbacks=None):
    target = build_target(config.target)
    flow, conditional = initial_model(config, target)
    result = train(target, flow, config.tempering, config.training, config.chains,
                   conditional=conditional, prediction=config.prediction, progress=False,
                   max_betas=max_betas, mesh=data_mesh(n), start=start, callbacks=callbacks)
    return (result.flow, result.conditional), result.betas

def model_of(ladder, config):
    target = build_target(config.target)
    static = init(initial_model(config, target), config.training)[1]
    return eqx.combine(ladder.state.params, static)

out = {"devices": len(jax.devices())}
# joint: two betas on one device; the first of them on 4 devices, the second resumed from the
# 4 devices' checkpoint on 2
config = config_of("joint")
keep1, keep4 = Keep(), Keep()
whole, betas = run(config, 1, 2, callbacks=keep1)
first = model_of(keep1.ladders[0], config)
four, _ = run(config, 4, 1, callbacks=keep4)
out["joint"] = {"4": largest_difference(first, four)}
resumed, resumed_betas = run(config, 2, 2, start=keep4.ladders[0])
out["resume"] = largest_difference(whole, resumed)
out["betas"] = [betas, resumed_betas]
# prediction: the same draws on 1 and 4 devices
target = build_target(config.target)
draws = [draw_samples(jr.key(3), whole[0], target, 1.0, config.prediction, n=64,
                      conditional=whole[1], mesh=data_mesh(n)) for n in (1, 4)]
out["samples"] = max(float(np.max(np.abs(a - b))) for a, b in
                     ((draws[0].x, draws[1].x), (draws[0].log_weights, draws[1].log_weights)))
try:
    draw_samples(jr.key(3), whole[0], target, 1.0, config.prediction, n=30,
                 conditional=whole[1], mesh=data_mesh(4))
    out["rows_indivisible"] = None
except ConfigError as err:
    out["rows_indivisible"] = str(err)
config = config_of("fab")
one = run(config, 1, 1)[0]
out["fab"] = {"4": largest_difference(one, run(config, 4, 1)[0])}

# what is split and what is copied
config = config_of("joint")
target = build_target(config.target)
mesh = data_mesh(4)
state, static = init(initial_model(config, target), config.training)
state = replicate(state, mesh)
settings = UpdateSettings(config.training, config.chains, config.prediction, mesh)
grads, *_, samples, log_w = _gradients(state, static, jr.key(0), jnp.asarray(0.5), None,
                                       target, settings)
out["params_devices"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)
out["params_spec"] = list(jax.tree.leaves(state.params)[0].sharding.spec)
out["samples_spec"] = list(samples[0].sharding.spec)
out["samples_devices"] = len(samples[0].sharding.device_set)
try:
    run(parse_config({**config.raw, "training": {**config.raw["training"], "batch_size": 62}}),
        4, 1)
    out["indivisible"] = None
except ConfigError as err:
    out["indivisible"] = str(err)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def verdicts():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
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


def test_four_simulated_devices(verdicts):
    assert verdicts["devices"] == 4


@pytest.mark.parametrize("objective", ["joint", "fab"])
def test_same_model_on_one_and_four_devices(verdicts, objective):
    # 12 updates in float32; only the order of the batch's sums differs (measured: <= 3e-8)
    for n, difference in verdicts[objective].items():
        assert difference < 1e-5, (objective, n, difference)


def test_resumes_on_another_device_count(verdicts):
    whole, resumed = verdicts["betas"]  # the ladder's next beta is computed from the model
    assert len(whole) == len(resumed) == 2
    assert resumed == pytest.approx(whole, rel=1e-5)
    assert verdicts["resume"] < 1e-5


def test_batch_split_parameters_copied(verdicts):
    assert verdicts["params_devices"] == 4 and verdicts["params_spec"] == []
    assert verdicts["samples_devices"] == 4
    assert verdicts["samples_spec"] == ["batch"]


def test_batch_that_does_not_split_is_refused(verdicts):
    assert "batch_size = 62 does not split over 4 devices" in verdicts["indivisible"]
    assert "rows per batch" in verdicts["rows_indivisible"]
    assert "= 30 does not split over 4 devices" in verdicts["rows_indivisible"]


def test_same_samples_on_one_and_four_devices(verdicts):
    assert verdicts["samples"] < 1e-4  # coordinates and log-weights, float32


def test_one_device_is_the_plain_path():
    assert data_mesh(1) is None and device_count(None) == 1
    x = object()
    assert shard_batch(x, None) is x
    check_divisible(7, None, "n")
    with pytest.raises(ConfigError, match="devices: expected an integer from 1"):
        data_mesh(10**6)
