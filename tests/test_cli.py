"""Bad input at the command line: one clear line on stderr, exit status 2, no traceback."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from coarseflow.cli import main
from coarseflow.runs import RunDir


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "coarseflow.cli", *args], capture_output=True, text=True, timeout=600
    )


def assert_user_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0]


def test_missing_config_file(tmp_path):
    assert_user_error(run_cli("train", str(tmp_path / "nope.toml")), "not found")


def test_misspelt_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[target]\nkind = "double_well"\n[training]\nlearning_rat = 0.1\n')
    assert_user_error(
        run_cli("train", str(cfg), "--out", str(tmp_path / "r")), "unknown key 'learning_rat'"
    )


def test_not_a_run(tmp_path):
    assert_user_error(run_cli("sample", str(tmp_path)), "no config.toml")
    assert_user_error(run_cli("evaluate", str(tmp_path)), "no config.toml")


def test_bad_sample_count(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "-n", "0"]) == 2
    assert "-n" in capsys.readouterr().err


def test_nan_energy_target(tmp_path, monkeypatch, capsys):
    """A target whose energy is NaN everywhere is refused with one line."""
    import jax.numpy as jnp

    from coarseflow.targets import DoubleWell

    monkeypatch.setattr(DoubleWell, "energy", lambda self, x: jnp.nan * x[0])
    cfg = tmp_path / "c.toml"
    cfg.write_text('[target]\nkind = "double_well"\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not finite" in err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_model_per_config):  # conftest: one build per config
    root = tmp_path_factory.mktemp("run")
    cfg = root / "tiny.toml"
    cfg.write_text(
        '[target]\nkind = "double_well"\n'
        "[model]\nknots = 4\nlayers = 1\nnn_width = 8\n"
        "[chains]\nn_chains = 1\nn_burn = 2\nn_keep = 2\nwarm_start_steps = 1\n"
        "[training]\nbatch_size = 16\nfirst_beta_updates = 5\nupdates_per_beta = 3\n"
        "tempering_samples = 32\n"
        '[tempering]\nkind = "explicit"\nbetas = [0.2, 1.0]\n'
        "[prediction]\nn_samples = 200\nladder_samples = 60\n"
    )
    out = root / "out"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    return out


def test_train_sample_evaluate(tiny_run, tmp_path, capsys):
    assert (tiny_run / "summary.json").exists()
    assert (tiny_run / "figures" / "training.png").stat().st_size > 0
    out = tmp_path / "s.npz"
    assert main(["sample", str(tiny_run), "-n", "50", "--beta", "0.2", "-o", str(out)]) == 0
    assert re.search(r"\(ESS \d+\.\d, Pareto k -?\d\.\d\d", capsys.readouterr().out)
    assert main(["sample", str(tiny_run), "-n", "10", "-o", str(tmp_path / "few.npz")]) == 0
    assert "Pareto k n/a: fewer than 25 weights" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["x"].shape == (50, 2) and f["log_weights"].shape == (50,)
        assert float(f["beta"]) == 0.2
    assert main(["evaluate", str(tiny_run), "-n", "100", "--quiet"]) == 0
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert [b["n_samples"] for b in summary["per_beta"]] == [60, 100]
    assert main(["evaluate", str(tiny_run), "-n", "40", "--quiet"]) == 0  # never more below
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert [b["n_samples"] for b in summary["per_beta"]] == [40, 40]
    assert isinstance(summary["final"]["pareto_k"], float)  # its values: test_metrics.py
    heating = [m["chain_heating"] for m in RunDir(tiny_run).checkpoints()]
    assert len(heating) == 2 and all(isinstance(h, float) for h in heating)
    assert [b["chain_heating"] for b in summary["per_beta"]] == heating  # from the checkpoints


def test_train_from_another_runs_flow(tiny_run, tmp_path):
    import equinox as eqx
    import jax

    from coarseflow.config import build_target, load_config
    from coarseflow.workflow import initial_model, load_run

    config = load_config(tiny_run / "config.toml")
    _, _, trained, _, meta = load_run(tiny_run)
    start, _ = initial_model(config, build_target(config.target), init=tiny_run)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(start, eqx.is_inexact_array)),
        jax.tree.leaves(eqx.filter(trained, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    out = tmp_path / "continued"
    assert (
        main(
            [
                "train",
                str(tiny_run.parent / "tiny.toml"),
                "--out",
                str(out),
                "--init",
                str(tiny_run),
                "--no-evaluate",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "init.json").read_text())["beta"] == meta["beta"]
    other = tmp_path / "other.toml"
    other.write_text((tiny_run.parent / "tiny.toml").read_text().replace("knots = 4", "knots = 5"))
    r = run_cli("train", str(other), "--out", str(tmp_path / "x"), "--init", str(tiny_run))
    assert_user_error(r, "does not fit this config's [model]")


def test_sample_unknown_beta_and_bad_suffix(tiny_run, tmp_path):
    r = run_cli("sample", str(tiny_run), "--beta", "0.5")
    assert_user_error(r, "no checkpoint for that beta")
    r = run_cli("sample", str(tiny_run), "-o", str(tmp_path / "s.dcd"))
    assert_user_error(r, ".dcd is for molecules")


def test_compilation_cache_follows_the_environment(tmp_path, monkeypatch):
    import jax

    from coarseflow.cli import enable_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("COARSEFLOW_JAX_CACHE", str(tmp_path / "cache"))
        enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        jax.config.update("jax_compilation_cache_dir", before)
        monkeypatch.setenv("COARSEFLOW_JAX_CACHE", "")
        enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == before
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_cache_entries_without_access_time_are_dropped(tmp_path, monkeypatch):
    # a cache written before the size limit has no "-atime" files, on which JAX's eviction fails
    import jax

    from coarseflow.cli import enable_compilation_cache

    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("jit_old-1-cache", "jit_new-2-cache", "jit_new-2-atime"):
        (cache / name).write_bytes(b"x")
    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("COARSEFLOW_JAX_CACHE", str(cache))
        enable_compilation_cache()
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert sorted(p.name for p in cache.iterdir()) == ["jit_new-2-atime", "jit_new-2-cache"]


def test_a_run_without_model_marker_loads_with_random_permutations(tiny_run, tmp_path):
    # runs trained before model.json had flowjax's random permutations: they load that way
    import json
    import shutil

    from coarseflow.workflow import MODEL_MARKER, load_run

    assert json.loads((tiny_run / MODEL_MARKER).read_text()) == {"flow_permutation": "alternating"}
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    (old / MODEL_MARKER).unlink()
    assert load_run(old).config.model.permutation == "random"
    assert load_run(tiny_run).config.model.permutation == "alternating"


def test_version_names_coarseflow_and_jax():
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"coarseflow {version('coarseflow')} (jax {version('jax')}, jaxlib {version('jaxlib')})"
    )


def test_coarseflow_warnings_print_as_one_line():
    """The CLI prints coarseflow's own warnings like its errors, others as Python does."""
    from coarseflow.cli import _format_warning
    from coarseflow.targets.molecule.rotamers import MultimodalWarning

    line = _format_warning("p(Y|X) is multimodal: chi1 SER2", MultimodalWarning, "x.py", 3)
    assert line == "coarseflow: warning: p(Y|X) is multimodal: chi1 SER2\n"
    assert "UserWarning" in _format_warning("other", UserWarning, "x.py", 3)


def test_evaluate_with_some_non_finite_energies(tiny_run, tmp_path, monkeypatch, capsys):
    """Samples whose energy is NaN (a clash, a force field's pole) get weight zero: evaluate
    counts them, and its ESS and populations come from the others."""
    import shutil

    import jax.numpy as jnp

    from coarseflow.targets import DoubleWell

    well = DoubleWell.energy
    monkeypatch.setattr(
        DoubleWell, "energy", lambda self, x: jnp.where(x[0] > 1.2, jnp.nan, well(self, x))
    )
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["evaluate", str(run), "-n", "400", "--quiet"]) == 0
    final = json.loads((run / "summary.json").read_text())["final"]
    assert 0 < final["n_nonfinite_energy"] < 400
    assert 0 < final["ess"] <= 400 - final["n_nonfinite_energy"]
    assert np.isfinite(final["log_Z_estimate"])
