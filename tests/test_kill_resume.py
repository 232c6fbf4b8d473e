"""Fault injection on a real (tiny) training: `train` killed with SIGKILL at random times and
inside checkpoint writes, then `--resume`, must end with exactly the bytes of an uninterrupted
run; damaged checkpoints are skipped by `sample`, `evaluate` and `--resume` alike.

Compilation dominates: one tiny double-well config for the whole module, trained once in this
process (the reference), with JAX's persistent cache pointed at a temporary folder so that the
killed subprocesses load the same compiled programs instead of compiling them again.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from coarseflow.cli import main
from coarseflow.config import load_config
from coarseflow.run_training import train_from_config
from coarseflow.runs import RunDir

TINY = """[target]
kind = "double_well"
[model]
knots = 4
layers = 1
nn_width = 8
nn_depth = 1
[chains]
n_chains = 1
n_burn = 2
n_keep = 2
warm_start_steps = 1
[training]
batch_size = 16
first_beta_updates = 30
updates_per_beta = 30
tempering_samples = 32
learning_rate = 1e-2
[tempering]
kind = "explicit"
betas = [0.1, 0.4, 1.0]
[prediction]
n_samples = 64
"""
N_UPDATES = 90
FINAL = "checkpoints/beta_1.000000000000.eqx"

# `coarseflow train` in a subprocess, in float64 like the tests, using the module's compile
# cache; KILL_AT_WRITE=k: SIGKILL itself inside the k-th atomic write, its temporary file
# written and not yet renamed (1 marker, 2 config.toml, 3 model.json, then per checkpoint
# .eqx and .json: 4 and 5 for the first beta, 6 and 7 for the second, ...)
CHILD = """
import os, signal, sys
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
kill_at = int(os.environ.get("KILL_AT_WRITE", "0"))
if kill_at:
    import coarseflow.atomic_files as atomic_files
    import coarseflow.runs as runs
    real, count = atomic_files.atomic_write_bytes, [0]
    def atomic_write_bytes(path, write):
        count[0] += 1
        if count[0] != kill_at:
            return real(path, write)
        def write_then_die(f):
            write(f)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, write_then_die)
    # every atomic write: atomic_write_text's (through atomic_files) and a checkpoint's .eqx
    atomic_files.atomic_write_bytes = runs.atomic_write_bytes = atomic_write_bytes
from coarseflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config file, reference run, compile-cache folder); the reference trained here."""
    from jax._src import compilation_cache

    root = tmp_path_factory.mktemp("kill")
    cache = root / "jax-cache"
    before = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    try:
        cfg = root / "tiny.toml"
        cfg.write_text(TINY)
        train_from_config(load_config(cfg), root / "reference", progress=False)
        yield cfg, root / "reference", cache
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
        compilation_cache.reset_cache()


def start_child(cfg, out, cache, kill_at_write=0):
    env = {**os.environ, "COARSEFLOW_JAX_CACHE": str(cache), "KILL_AT_WRITE": str(kill_at_write)}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            "train",
            str(cfg),
            "--out",
            str(out),
            "--quiet",
            "--no-evaluate",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def resume_and_compare(cfg, out, reference):
    """Resume ``out`` in this process; it must equal the uninterrupted ``reference``."""
    result = train_from_config(load_config(cfg), out, progress=False, resume=True)
    assert result.betas == [0.1, 0.4, 1.0]
    assert (out / FINAL).read_bytes() == (reference / FINAL).read_bytes()
    ours, theirs = RunDir(out).read_metrics(), RunDir(reference).read_metrics()
    assert [r["step"] for r in ours] == list(range(N_UPDATES))  # no line kept twice
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.parametrize("kill_at_write", [4, pytest.param(7, marks=pytest.mark.slow)])
def test_killed_inside_a_checkpoint_write_resumes_exactly(setup, tmp_path, kill_at_write):
    """4: inside the first .eqx, after the first beta's 30 metrics lines; 7: between the
    second beta's .eqx (renamed) and its .json (not): that beta is not a checkpoint yet."""
    cfg, reference, cache = setup
    out = tmp_path / "run"
    child = start_child(cfg, out, cache, kill_at_write)
    _, err = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, err
    assert list(out.rglob(".*.tmp"))  # the kill left its temporary file
    assert len(RunDir(out).checkpoints()) == (kill_at_write - 4) // 2
    if kill_at_write == 4:
        assert len(RunDir(out).read_metrics()) == 30  # would be kept twice without truncation
    resume_and_compare(cfg, out, reference)


@pytest.mark.parametrize("seed", [0])
def test_killed_at_a_random_time_resumes_exactly(setup, tmp_path, seed):
    """SIGKILL at a random moment after the run directory appears (imports, compile cache
    loads, updates, metric appends, checkpoint writes), then --resume."""
    cfg, reference, cache = setup
    out = tmp_path / "run"
    child = start_child(cfg, out, cache)
    deadline = time.monotonic() + 120
    while not (out / "config.toml").exists() and child.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 4.0))
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    resume_and_compare(cfg, out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 11))
def test_killed_at_more_random_times_resumes_exactly(setup, tmp_path, seed):
    test_killed_at_a_random_time_resumes_exactly(setup, tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at_write", [1, 2, 3, 5, 6, 8, 9])
def test_killed_inside_every_other_write_resumes_exactly(setup, tmp_path, kill_at_write):
    cfg, reference, cache = setup
    out = tmp_path / "run"
    child = start_child(cfg, out, cache, kill_at_write)
    child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL
    resume_and_compare(cfg, out, reference)


def test_a_damaged_last_checkpoint_is_redone_on_resume(setup, tmp_path, capsys):
    cfg, reference, _ = setup
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    final = out / FINAL
    final.write_bytes(final.read_bytes()[:100])  # truncated
    resume_and_compare(cfg, out, reference)
    err = capsys.readouterr().err
    assert "beta_1.000000000000.eqx: damaged" in err and "beta = 0.4" in err
    assert (out / (FINAL + ".damaged")).exists()  # kept, not deleted


def _one_warning(capsys, fragment, out=""):
    captured = capsys.readouterr()
    # (the weights' own verdict, a separate line about the reweighted numbers, aside)
    err = [x for x in captured.err.strip().splitlines() if not x.startswith("WARNING: do not")]
    assert len(err) == 1 and "warning" in err[0] and fragment in err[0], err
    assert out in captured.out


def test_sample_and_evaluate_skip_a_damaged_checkpoint(setup, tmp_path, capsys):
    _, reference, _ = setup
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / FINAL).write_bytes(b"")
    samples = tmp_path / "s.npz"
    assert main(["sample", str(out), "-n", "30", "-o", str(samples), "--quiet"]) == 0
    _one_warning(capsys, "beta_1.000000000000.eqx: damaged", out="at beta = 0.4")
    # asked for by name: one line, exit 2, never another beta in its place
    assert main(["sample", str(out), "--beta", "1", "-o", str(samples)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "beta_1.000000000000.eqx" in err[0], err
    assert main(["sample", str(out), "--beta", "0.1", "-n", "30", "-o", str(samples)]) == 0
    capsys.readouterr()
    # a garbled .json as well: evaluate reports both and evaluates what is left
    meta_path = out / "checkpoints" / "beta_0.100000000000.json"
    meta_path.write_text(meta_path.read_text()[:20])
    assert main(["evaluate", str(out), "-n", "30", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "beta_1.000000000000.eqx" in err and "beta_0.100000000000.json" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [b["beta"] for b in summary["per_beta"]] == [0.4]
    # nothing intact: one line and exit 2 for all three
    (out / "checkpoints" / "beta_0.400000000000.eqx").write_bytes(b"\x00" * 10)
    for argv in (
        ["sample", str(out)],
        ["evaluate", str(out), "--quiet"],
        ["train", str(out / "config.toml"), "--out", str(out), "--resume", "--quiet"],
    ):
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and "no intact checkpoint" in err[0], err
