"""Progress that tells the truth: the device, a compiling stage with its duration, one compile
per batch shape, XLA's C++ log kept from the user, bars after the compile."""

import contextlib
import io
import os
import subprocess
import sys
from types import SimpleNamespace

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from coarseflow.analysis.evaluation import evaluate_run
from coarseflow.cli import main
from coarseflow.config import build_target, parse_config
from coarseflow.model.flow import make_flow
from coarseflow.predict.draw import draw_samples
from coarseflow.predict.settings import PredictionSettings
from coarseflow.progress import compiling, device_line

TINY = (
    '[target]\nkind = "double_well"\n'
    "[model]\nknots = 4\nlayers = 1\nnn_width = 8\n"
    "[chains]\nn_chains = 1\nn_burn = 2\nn_keep = 2\nwarm_start_steps = 1\n"
    "[training]\nbatch_size = 12\nfirst_beta_updates = 3\nupdates_per_beta = 2\n"
    "tempering_samples = 24\n"
    '[tempering]\nkind = "explicit"\nbetas = [0.2, 1.0]\n'
    "[prediction]\nn_samples = 50\nladder_samples = 20\nbatch_size = 16\n"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run, trained with progress on: (run directory, its stdout, its stderr)."""
    root = tmp_path_factory.mktemp("progress")
    (root / "tiny.toml").write_text(TINY)
    out, stdout, stderr = root / "run", io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", str(root / "tiny.toml"), "--out", str(out), "--no-evaluate"])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def _programs(stage, name):
    return sum(f"({name})" in c for c in stage.compiled)


def test_device_line_names_the_accelerator():
    gpus = [SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")] * 2
    assert device_line(gpus) == "device: GPU NVIDIA H100 80GB HBM3 (2 devices)"
    assert device_line().startswith("device: CPU (1 device, ")


def test_train_says_device_and_each_compile_with_its_duration(trained):
    _, stdout, stderr = trained
    assert stdout.startswith("device: CPU")
    assert "compiling the update's gradient (batch 12) ..." in stderr
    assert "compiling the optimiser step" in stderr
    # a duration after each announcement (above the bar: whole lines)
    assert "compiling the update's gradient (batch 12): " in stderr
    assert "Very slow compile" not in stderr


def test_a_stage_is_silent_where_nothing_compiles(capsys):
    @eqx.filter_jit
    def double(x):
        return 2 * x

    with compiling("the doubling (batch 3)") as stage:
        double(jnp.ones(3))
    err = capsys.readouterr().err
    assert err.startswith("compiling the doubling (batch 3) ... ") and err.endswith(" s\n")
    assert _programs(stage, "double") == 1
    with compiling("the doubling (batch 3)") as stage:
        double(jnp.ones(3))
    assert capsys.readouterr().err == "" and stage.compiles == 0


def _double_well_flow():
    config = parse_config({"target": {"kind": "double_well"}, "model": {"knots": 3, "layers": 1}})
    target = build_target(config.target)
    return target, make_flow(jr.key(0), target, config.model)


@pytest.mark.parametrize("conditional", ["exact", "ais"])
def test_a_ragged_last_batch_compiles_nothing_new(conditional):
    """40 samples in batches of 13 (the last padded) and then 27: the sampler compiles once,
    and the 27 are the first 27 of the 40."""
    target, flow = _double_well_flow()
    settings = PredictionSettings(
        batch_size=13,
        conditional=conditional,
        ais_steps=3,
        ais_paths=1,
        minimize_steps=5,
        newton_steps=1,
    )
    with compiling("sampler", show=False) as stage:
        many = draw_samples(jr.key(5), target, flow, 0.5, settings, n=40)
        few = draw_samples(jr.key(5), target, flow, 0.5, settings, n=27)
    assert _programs(stage, "_batch") == 1
    assert len(many.x) == 40 and len(few.x) == 27
    np.testing.assert_array_equal(few.x, many.x[:27])
    np.testing.assert_array_equal(few.log_weights, many.log_weights[:27])


def test_evaluate_compiles_the_sampler_once(trained):
    """Ladder checkpoints at 20 samples, the last at 50, batches of 16: one shape."""
    run, _, _ = trained
    with compiling("evaluate", show=False) as stage:
        summary = evaluate_run(run, progress=False)
    assert [b["n_samples"] for b in summary["per_beta"]] == [20, 50]
    assert _programs(stage, "_batch") <= 1


def test_sample_shows_device_compile_and_bar(trained, tmp_path, capsys):
    run, _, _ = trained
    assert main(["sample", str(run), "-n", "45", "--seed", "7", "-o", str(tmp_path / "s.npz")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("device: CPU")
    assert "compiling the sampler (batch 16) ... " in out.err


XLA_NOISE = "Could not create directory"  # an XLA LOG(ERROR), as "Very slow compile?" is


@pytest.mark.parametrize("level, shown", [(None, False), ("0", True)])
def test_xla_cpp_log_is_filtered_unless_asked_for(tmp_path, level, shown):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_dump_to={tmp_path / 'file' / 'dump'}"
    (tmp_path / "file").write_text("a file, so XLA cannot dump under it")
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    code = "import coarseflow.cli, jax, jax.numpy as jnp; jax.jit(lambda x: x + 1)(jnp.ones(2))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert (XLA_NOISE in done.stderr) == shown, done.stderr
