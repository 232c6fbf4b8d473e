"""Several processes (coarseflow.parallel.initialize, jax.distributed): 2 processes x 2
simulated CPU devices on loopback train the same model as one process on one device, only
process 0 writes the run, a one-process checkpoint resumes on 2 processes, and an error of
process 0 stops the other one too.

Each process runs in its own working directory and is given the run directory as a relative
path: process 1's directory must stay empty (it writes nothing and needs no shared disk; what
it starts from, process 0 sends it). CPU collectives between the processes go through gloo,
JAX 0.10's default (``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# two processes that each compile the training: about 1.5 min, so on demand (-m slow)
pytestmark = pytest.mark.slow

CONFIG = """
[target]
kind = "gaussian_mixture"
n_x = 2
n_y = 2
n_components = 3
width = 0.1
cond_width = 0.1
seed = 0
support_beta = 0.05

[model]
knots = 8
interval = 4.0
layers = 2
nn_width = 16
nn_depth = 1
seed = 0

[conditional]
kind = "gaussian"

[training]
objective = "joint"
batch_size = 64
learning_rate = 5e-4
first_beta_updates = 12
updates_per_beta = 6
forward_kl_weight = 100.0
tempering_samples = 128
seed = 0

[tempering]
kind = "explicit"
betas = [0.5, 1.0]

[prediction]
n_samples = 256
batch_size = 128
"""

# one process, one device: the run to compare with
SINGLE = r"""
import sys
from coarseflow.config import load_config
from coarseflow import train_from_config

train_from_config(load_config(sys.argv[1]), "whole", progress=False)
"""

# process I of 2: resume "part"; try "part" again without --resume (process 0 refuses, and
# the other must stop with it); see where the update's draws are computed; train "fresh",
# which process 0 evaluates while the other has finished
PROCESS = r"""
import json, sys
import jax, jax.numpy as jnp, jax.random as jr
import coarseflow.parallel
from coarseflow.cli import main

config, port, rank = sys.argv[1], sys.argv[2], sys.argv[3]

def once(build, key):
    built = {}

    def cached(*args):
        k = key(*args)
        if k not in built:
            built[k] = build(*args)
        return built[k]

    return cached

# one flow and conditional skeleton for this process's runs of its one config: "resume",
# "fresh" and the update below reuse the programs the first one compiled (a new flow's static
# part is a fresh closure, compared by identity: each run would compile every program again).
# Both are immutable and only their structure is reused; the values come from the seeds, a
# checkpoint or process 0, as in any run (tests/conftest.py's one_model_per_config does this
# in the test process). Installed once the CLI has joined the processes: importing
# coarseflow.workflow starts JAX's backend, which jax.distributed must precede
join, memoised = coarseflow.parallel.initialize, []

def initialize(*args, **kwargs):
    count = join(*args, **kwargs)
    if not memoised:
        from coarseflow import workflow

        workflow.build_flow = once(workflow.build_flow, lambda c, target: repr(c.model))
        workflow.make_conditional = once(
            workflow.make_conditional,
            lambda key, target, s: (repr(s), repr(jax.random.key_data(key).tolist())),
        )
        memoised.append(True)
    return count

coarseflow.parallel.initialize = initialize
flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", rank,
         "--quiet", "--no-evaluate"]
out = {"resume": main(["train", config, "--out", "part", "--resume", *flags])}
out["again"] = main(["train", config, "--out", "part", *flags])

from coarseflow.config import build_target, load_config
from coarseflow.parallel import data_mesh, replicate
from coarseflow.training.step import UpdateSettings, _gradients, init
from coarseflow.workflow import build_model

c = load_config(config)
target = build_target(c.target)
mesh = data_mesh()
state, static = init(build_model(c, target), c.training)
settings = UpdateSettings(c.training, c.chains, c.prediction, mesh)
samples = _gradients(replicate(state, mesh), static, jr.key(0), jnp.asarray(0.5), None, target,
                     settings)[-2]
rows = sorted({(s.index[0].start, s.index[0].stop) for s in samples[0].addressable_shards})
out.update(process=jax.process_index(), processes=jax.process_count(),
           devices=len(jax.devices()), local_devices=len(jax.local_devices()),
           rows=rows, batch=int(samples[0].shape[0]))
out["fresh"] = main(["train", config, "--out", "fresh", *flags[:-1]])
print("RESULT " + json.dumps(out), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "COARSEFLOW_JAX_CACHE": "",
    }


def _result(stdout: str) -> dict | None:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else None


def checkpoint_arrays(path: Path) -> list[np.ndarray]:
    """The leaves of a checkpoint's .eqx, in order (equinox writes them with np.save, one after
    another), without building a model: the test process runs in float64."""
    data = io.BytesIO(path.read_bytes())
    leaves = []
    while data.tell() < len(data.getbuffer()):
        leaves.append(np.load(data))
    return leaves


def largest_difference(a: Path, b: Path) -> float:
    """The largest difference between two checkpoints' leaves (parameters, the optimiser's
    moments, the gradient guard's norms), relative to each leaf's largest entry (at least 1):
    the norms and moments run to 2e3, where one float32 rounding is 2e-4."""
    leaves_a, leaves_b = checkpoint_arrays(a), checkpoint_arrays(b)
    assert len(leaves_a) == len(leaves_b) and leaves_a
    return max(
        float(np.max(np.abs(x.astype(float) - y.astype(float)), initial=0.0))
        / max(1.0, float(np.max(np.abs(x), initial=0.0)))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    config = root / "config.toml"
    config.write_text(CONFIG)
    single, dirs = root / "single", [root / "process0", root / "process1"]
    for d in (single, *dirs):
        d.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SINGLE, str(config)],
        cwd=single,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # "part": that run as it was after its first beta (its last checkpoint gone; a resume
    # cuts metrics.jsonl back to the checkpoint's step), in process 0's directory only
    part = dirs[0] / "part"
    shutil.copytree(single / "whole", part)
    last = sorted(part.glob("checkpoints/*.json"))[-1]
    last.unlink()
    last.with_suffix(".eqx").unlink()
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS, str(config), port, str(rank)],
            cwd=d,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, d in enumerate(dirs)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    results = [_result(stdout) for stdout, _ in outputs]
    assert all(p.returncode == 0 for p in procs) and None not in results, "\n".join(
        f"process {rank} (exit {p.returncode}): {stderr[-2500:]}"
        for rank, (p, (_, stderr)) in enumerate(zip(procs, outputs, strict=True))
    )
    return {
        "single": single,
        "dirs": dirs,
        "results": results,
        "stdout": [stdout for stdout, _ in outputs],
        "stderr": [stderr for _, stderr in outputs],
    }


def test_two_processes_of_two_devices(runs):
    for rank, result in enumerate(runs["results"]):
        assert result["process"] == rank and result["processes"] == 2
        assert result["devices"] == 4 and result["local_devices"] == 2


def test_each_process_computes_its_half_of_the_batch(runs):
    # the update's draws are made on the devices, each process's devices only its own rows
    batch = runs["results"][0]["batch"]
    halves = [result["rows"] for result in runs["results"]]
    assert halves[0] == [[0, batch // 4], [batch // 4, batch // 2]]
    assert halves[1] == [[batch // 2, 3 * batch // 4], [3 * batch // 4, batch]]


def test_only_process_zero_writes_the_run(runs):
    process0, process1 = runs["dirs"]
    assert list(process1.iterdir()) == []  # no run directory, no lock, nothing
    fresh = process0 / "fresh"
    names = {p.name for p in fresh.iterdir()}
    assert {"config.toml", "metrics.jsonl", "checkpoints", "summary.json", "report.html"} <= names
    assert "coarseflow-run.lock" in names and (fresh / "coarseflow-run.lock").read_text() == ""
    assert len((fresh / "metrics.jsonl").read_text().splitlines()) == 12 + 6
    summary = json.loads((fresh / "summary.json").read_text())
    assert summary["final"]["beta"] == 1.0 and summary["final"]["n_samples"] == 256
    # what each process printed: process 0 the devices, the ladder and the evaluation
    assert "device: CPU (4 devices" in runs["stdout"][0]
    assert ", 2 processes" in runs["stdout"][0]
    assert "trained 2 betas up to beta = 1" in runs["stdout"][0]
    assert "final model (beta = 1)" in runs["stdout"][0]
    assert not any(
        line.startswith(("device", "trained", "final")) for line in runs["stdout"][1].splitlines()
    )


def test_same_model_as_one_process_on_one_device(runs):
    # 12 + 6 updates in float32 over 4 devices of 2 processes vs 1 device: only the order of
    # the batch's sums differs (measured: 9e-7 of each leaf's largest entry); tolerance 1e-5
    whole = runs["single"] / "whole" / "checkpoints"
    fresh = runs["dirs"][0] / "fresh" / "checkpoints"
    names = sorted(p.name for p in whole.glob("*.eqx"))
    assert names == sorted(p.name for p in fresh.glob("*.eqx")) and len(names) == 2
    for name in names:
        assert largest_difference(whole / name, fresh / name) < 1e-5, name


def test_one_process_checkpoint_resumes_on_two_processes(runs):
    whole = runs["single"] / "whole" / "checkpoints"
    part = runs["dirs"][0] / "part" / "checkpoints"
    last = sorted(p.name for p in whole.glob("*.eqx"))[-1]
    assert (part / last).exists()
    assert largest_difference(whole / last, part / last) < 1e-5
    lines = (runs["dirs"][0] / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(18))


def test_an_error_of_process_zero_stops_both(runs):
    # "part" has checkpoints and --resume was not given: process 0 refuses, and the other
    # stops with the same one line instead of waiting for it
    for result, stderr in zip(runs["results"], runs["stderr"], strict=True):
        assert result["again"] == 2 and result["resume"] == 0 and result["fresh"] == 0
        assert "already has checkpoints; pass --resume" in stderr
