"""Run directories under faults, without training (fast): ownership, the lock, history,
damaged checkpoints, and the conditions on which training stops itself.

The kill -9 / resume tests, which train, are in test_kill_resume.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.atomic_files import atomic_write_text
from coarseflow.errors import ConfigError
from coarseflow.run_folder import LOCK, MARKER, config_hash
from coarseflow.runs import DamagedCheckpoint, RunDir, all_finite

HASH = config_hash({"target": {"kind": "double_well"}})
OTHER = config_hash({"target": {"kind": "double_well", "bound": 5.0}})


def never(path):
    raise AssertionError(f"{path} should not be read")


# ownership ---------------------------------------------------------------------------------
def test_a_new_or_empty_folder_becomes_a_run(tmp_path):
    for root in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        run = RunDir(root)
        run.claim(HASH, never)
        marker = json.loads(run.marker_path.read_text())
        assert marker["config_hash"] == HASH and marker["coarseflow_version"]
        run.release()
        RunDir(root).claim(HASH, never)  # the same config again: accepted


def test_a_claim_killed_before_its_marker_is_taken_up(tmp_path):
    (tmp_path / LOCK).write_text("pid 1 on elsewhere\n")
    (tmp_path / f".{MARKER}.k2j3.tmp").write_text('{"config_')
    run = RunDir(tmp_path)
    run.claim(HASH, never)
    run.release()
    assert {p.name for p in tmp_path.iterdir()} == {MARKER, LOCK}


def test_a_users_folder_is_never_written_into(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.toml").write_text("my own config")
    (mine / "notes.txt").write_text("precious")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    with pytest.raises(ConfigError, match="not a coarseflow run"):
        RunDir(mine).claim(HASH, never)
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before  # nothing added
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        RunDir(a_file).claim(HASH, never)


def test_a_run_of_another_config_is_refused(tmp_path):
    run = RunDir(tmp_path)
    run.claim(HASH, never)
    run.release()
    with pytest.raises(ConfigError, match="config differs.*coarseflow-run.json"):
        RunDir(tmp_path).claim(OTHER, never)
    run.marker_path.write_text("{garbled")
    with pytest.raises(ConfigError, match="coarseflow-run.json: not a readable run marker"):
        RunDir(tmp_path).claim(HASH, never)


def test_a_run_from_before_the_marker_is_adopted(tmp_path):
    old = RunDir(tmp_path / "old")
    old.checkpoint_dir.mkdir(parents=True)
    old.config_path.write_text("[target]\n")
    (old.root / "my_plot.png").write_text("")  # anything else beside config + checkpoints
    old.claim(HASH, lambda path: HASH)
    assert json.loads(old.marker_path.read_text())["config_hash"] == HASH
    old.release()
    # killed before its first checkpoint: config.toml and a run's files only
    early = RunDir(tmp_path / "early")
    early.root.mkdir()
    early.config_path.write_text("[target]\n")
    early.metrics_path.write_text("")
    with pytest.raises(ConfigError, match="config differs"):
        early.claim(HASH, lambda path: OTHER)  # its config.toml is another config
    assert not early.marker_path.exists()


# the lock ----------------------------------------------------------------------------------
def test_a_second_writer_is_refused_in_one_line(tmp_path):
    first = RunDir(tmp_path)
    first.claim(HASH, never)
    with first.locked():  # reentrant for the holder (train inside train_from_config)
        pass
    with pytest.raises(
        ConfigError,
        match=rf"being written by another process "
        rf"\(pid {os.getpid()} on {socket.gethostname()}",
    ):
        RunDir(tmp_path).claim(HASH, never)
    with pytest.raises(ConfigError, match="being written"):
        RunDir(tmp_path).acquire()
    first.release()
    second = RunDir(tmp_path)
    second.acquire()
    second.release()


def test_the_cli_refuses_a_second_writer(tmp_path, capsys):
    from coarseflow.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text('[target]\nkind = "double_well"\n')
    from coarseflow.config import load_config

    holder = RunDir(tmp_path / "run")
    holder.claim(config_hash(load_config(cfg).raw), never)
    holder.config_path.write_text(cfg.read_text())
    for argv in (
        ["train", str(cfg), "--out", str(holder.root), "--quiet"],
        ["train", str(cfg), "--out", str(holder.root), "--resume", "--quiet"],
        ["evaluate", str(holder.root), "--quiet"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "being written by another process" in err[0], err
    holder.release()


def test_a_killed_writers_lock_is_taken_over(tmp_path):
    """flock dies with its process: a writer killed by SIGKILL leaves no lock behind."""
    code = (
        "import sys, time; from coarseflow.runs import RunDir; r = RunDir(sys.argv[1]); "
        "r.acquire(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {proc.pid} on"):
            RunDir(tmp_path).acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert (tmp_path / LOCK).read_text().startswith(f"pid {proc.pid}")  # stale content...
    run = RunDir(tmp_path)
    run.acquire()  # ...but no lock: taken over
    assert (tmp_path / LOCK).read_text().startswith(f"pid {os.getpid()}")
    run.release()


def test_temporary_files_of_a_dead_writer_are_removed(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoint_dir.mkdir()
    stale = [
        tmp_path / ".summary.json.abc123.tmp",
        run.checkpoint_dir / ".beta_1.000000000000.eqx.x1y2.tmp",
    ]
    for path in stale:
        path.write_text("half")
    (tmp_path / "keep.tmp").write_text("not ours: no leading dot")
    with run.locked():
        assert not any(p.exists() for p in stale)
    assert (tmp_path / "keep.tmp").exists()


# history -----------------------------------------------------------------------------------
def test_a_torn_last_line_of_metrics_is_dropped(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.append_metrics([{"step": i, "loss": 0.5} for i in range(3)])
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 3, "lo')  # a kill mid-append
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    assert capsys.readouterr().err == ""  # expected after a kill: no warning
    run.truncate_metrics(2)
    assert run.metrics_path.read_text() == "".join(
        json.dumps({"step": i, "loss": 0.5}) + "\n" for i in range(2)
    )
    # a bad line in the middle is damage, not a kill: dropped with a warning naming the line
    with open(run.metrics_path, "a") as f:
        f.write("\x00\x00garbage\n" + json.dumps({"step": 2, "loss": 0.5}) + "\n")
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    assert "metrics.jsonl:3: not a metrics record" in capsys.readouterr().err


# damaged checkpoints -----------------------------------------------------------------------
TEMPLATE = (jnp.zeros(3), {"w": jnp.zeros((2, 2))})


def tree(beta):
    return (jnp.arange(3.0) * beta, {"w": jnp.ones((2, 2)) * beta})


def three_checkpoints(root):
    run = RunDir(root)
    for i, b in enumerate((0.1, 0.4, 1.0)):
        nxt = (0.4, 1.0, None)[i]
        run.save_checkpoint(b, tree(b), {"index": i, "step": 10 * (i + 1), "next_beta": nxt})
    return run


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _flip(path):  # same length, one byte changed: only the checksum can tell
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_key(key):
    def damage(path):
        meta = json.loads(path.read_text())
        del meta[key]
        path.write_text(json.dumps(meta))

    return damage


EQX_DAMAGE = {
    "truncated": _truncate,
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
    "bit flip": _flip,
    "missing": lambda p: p.unlink(),
}
JSON_DAMAGE = {
    "garbled": lambda p: p.write_text('{"beta": 1.0, "ind'),
    "not an object": lambda p: p.write_text("[1, 2]"),
    "no beta": _drop_key("beta"),
    "no next_beta": _drop_key("next_beta"),
    "beta nan": lambda p: p.write_text(p.read_text().replace('"beta": 1.0', '"beta": NaN')),
    "binary": lambda p: p.write_bytes(b"\xff\xfe\x00\x01"),
}


@pytest.mark.parametrize("case", [*EQX_DAMAGE, *JSON_DAMAGE])
def test_a_damaged_checkpoint_is_named_and_skipped(tmp_path, capsys, case):
    run = three_checkpoints(tmp_path)
    eqx_path, json_path = run.checkpoint_paths(1.0)
    damage = EQX_DAMAGE.get(case) or JSON_DAMAGE[case]
    damage(eqx_path if case in EQX_DAMAGE else json_path)
    meta, loaded = run.load_newest(TEMPLATE)
    assert meta["beta"] == 0.4
    np.testing.assert_array_equal(loaded[0], tree(0.4)[0])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "beta_1.000000000000" in err[0] and "warning" in err[0], err
    # the one asked for by name: one line naming it
    if case in EQX_DAMAGE and case != "missing":
        with pytest.raises(DamagedCheckpoint, match="beta_1.000000000000.eqx"):
            run.load_checkpoint(TEMPLATE, run.find_checkpoint(1.0))
    else:  # no sound metadata: not a checkpoint at all
        assert [m["beta"] for m in run.checkpoints()] == [0.1, 0.4]
    # a resuming writer renames it aside (nothing deleted), so that beta is trained afresh
    with run.locked():
        run.set_aside_damaged()
        run.load_newest(TEMPLATE, set_aside=True)
    kept = sorted(p.name for p in run.checkpoint_dir.glob("beta_1.*"))
    assert kept and all(name.endswith(".damaged") for name in kept)
    assert [m["beta"] for m in run.checkpoints()] == [0.1, 0.4]


def test_no_intact_checkpoint_is_one_line(tmp_path):
    run = three_checkpoints(tmp_path)
    for b in (0.1, 0.4, 1.0):
        run.checkpoint_paths(b)[0].write_bytes(b"")
    with pytest.raises(
        ConfigError,
        match=r"no intact checkpoint .*damaged: beta_1.*, "
        r"beta_0.4.*, beta_0.1",
    ):
        run.load_newest(TEMPLATE)
    with pytest.raises(ConfigError, match="no checkpoints yet"):
        RunDir(tmp_path / "none").load_newest(TEMPLATE)
    # only damaged metadata: nothing to resume from, refused rather than started afresh
    for b in (0.1, 0.4, 1.0):
        run.checkpoint_paths(b)[1].write_text("{")
    with pytest.raises(ConfigError, match="no intact checkpoint"):
        run.refuse_if_damaged()


def test_non_finite_parameters_are_damage(tmp_path, capsys):
    run = three_checkpoints(tmp_path)
    run.save_checkpoint(
        1.0,
        (jnp.full(3, jnp.nan), {"w": jnp.ones((2, 2))}),
        {"index": 2, "step": 30, "next_beta": None},
    )
    meta, _ = run.load_newest(TEMPLATE, all_finite)
    assert meta["beta"] == 0.4
    assert "holds non-finite parameters" in capsys.readouterr().err


def test_checkpoints_from_before_the_checksum_still_load(tmp_path):
    run = three_checkpoints(tmp_path)
    for b in (0.1, 0.4, 1.0):
        json_path = run.checkpoint_paths(b)[1]
        meta = json.loads(json_path.read_text())
        del meta["eqx_sha256"]
        atomic_write_text(json_path, json.dumps(meta))
    assert run.load_newest(TEMPLATE)[0]["beta"] == 1.0
    run.checkpoint_paths(1.0)[0].write_bytes(b"junk")
    assert run.load_newest(TEMPLATE)[0]["beta"] == 0.4  # unreadable without a checksum too


def test_marker_and_lock_are_a_runs_own_names(tmp_path):
    run = RunDir(tmp_path)
    run.claim(HASH, never)
    run.release()
    assert {p.name for p in tmp_path.iterdir()} == {MARKER, LOCK}
    assert run.is_run()


# training stops by itself --------------------------------------------------------------------
def _fake_training(monkeypatch, *, skipped=False, n_used=16, energies=None):
    """Make train()'s update and ladder samples free: each update reports ``skipped`` and
    ``n_used`` (of 16) and leaves the parameters as they are; the ladder sees ``energies``."""
    import coarseflow.training.ladder as training
    from coarseflow.training.step import StepInfo

    nan = np.float64(np.nan)

    def update_step(state, *args):
        info = StepInfo(
            np.float64(0.0),
            np.float64(1.0),
            np.bool_(skipped),
            np.int64(n_used),
            nan,
            nan,
            nan,
            nan,
            np.int64(0),
        )
        return state, info

    u = np.zeros(32) if energies is None else energies
    monkeypatch.setattr(training, "update_step", update_step)
    monkeypatch.setattr(training, "model_energies", lambda *a, **k: (u, 0))


def _train_fake(run, schedule, updates=30):
    import jax

    from coarseflow.checkpointing import train_into
    from coarseflow.model.flow import FlowSettings, box_flow
    from coarseflow.samplers.conditional import ChainSettings
    from coarseflow.targets import DoubleWell
    from coarseflow.training.settings import TrainingSettings

    target = DoubleWell()
    lower, upper = target.x_bounds()
    flow = box_flow(
        jax.random.key(0),
        lower=lower,
        upper=upper,
        settings=FlowSettings(knots=4, layers=1, nn_width=8),
    )
    settings = TrainingSettings(
        batch_size=16, first_beta_updates=updates, updates_per_beta=updates, tempering_samples=32
    )
    return train_into(run, target, flow, schedule, settings, ChainSettings(), progress=False)


@pytest.mark.parametrize(
    ("fake", "reason"),
    [
        ({"skipped": True}, "the last 60 updates were all skipped"),
        ({"n_used": 1}, "fewer than 10% of the 16 samples had a finite energy"),
    ],
)
def test_training_stops_when_nothing_is_learned(tmp_path, monkeypatch, fake, reason):
    from coarseflow.tempering.schedules import Explicit
    from coarseflow.training.health import TrainingStopped

    _fake_training(monkeypatch, **fake)
    run = RunDir(tmp_path)
    # 30 updates per beta: the second beta's checkpoint is the first after 50 such updates
    with pytest.raises(
        TrainingStopped,
        match=rf"after beta = 0.2 \(checkpoint saved\): "
        rf".*{reason}",
    ):
        _train_fake(run, Explicit((0.1, 0.2, 0.5, 1.0)))
    assert [m["beta"] for m in run.checkpoints()] == [0.1, 0.2]
    assert len(run.read_metrics()) == 60


def test_training_stops_when_the_adaptive_ladder_stalls(tmp_path, monkeypatch):
    from coarseflow.tempering.adaptive import Adaptive
    from coarseflow.training.health import TrainingStopped

    # energies this spread allow only min_step: 1e-4 per beta, ~10^4 betas to go
    _fake_training(monkeypatch, energies=np.tile([0.0, 1e6], 16))
    run = RunDir(tmp_path)
    with pytest.raises(
        TrainingStopped,
        match=r"ladder's last 5 steps were at most 0.0001: "
        r".*more than 1000 betas away",
    ):
        _train_fake(run, Adaptive(beta0=0.01, max_kl_increase=0.1, min_step=1e-4), updates=1)
    assert len(run.checkpoints()) == 5  # stopped at the first beta it could tell


def test_stop_conditions_leave_a_healthy_run_alone():
    from coarseflow.tempering.adaptive import Adaptive
    from coarseflow.tempering.schedules import Explicit
    from coarseflow.training.health import STOP_WINDOW, Streaks, stop_reason

    streaks = Streaks()
    for i in range(200):  # occasional skips and starved updates do not add up
        streaks = streaks.after(i % 7 == 0, 2 if i % 5 == 0 else 128, 128)
    assert stop_reason(streaks, 128, Explicit((1.0,)), [1.0], None) is None
    assert Streaks(STOP_WINDOW - 1, STOP_WINDOW - 1).after(False, 128, 128) == Streaks(0, 0)
    # a double-well-like adaptive ladder: big steps, then small ones just below 1
    ladder = [0.01, 0.03, 0.08, 0.2, 0.45, 0.8, 0.95, 0.99, 0.995, 0.999]
    schedule = Adaptive(beta0=0.01, max_kl_increase=0.3)
    assert stop_reason(Streaks(), 128, schedule, ladder, 1.0) is None
    assert stop_reason(Streaks(), 128, schedule, ladder[:-1], ladder[-1]) is None
