"""`coarseflow sample` writes every format from one draw, weights beside the trajectories;
the first N samples of -n M are those of -n N; empty output paths are refused."""

import numpy as np
import pytest

from coarseflow.cli import main
from coarseflow.predict.draw import Samples
from coarseflow.sample_outputs import write_weights

TINY = (
    '[target]\nkind = "double_well"\n'
    "[model]\nknots = 4\nlayers = 1\nnn_width = 8\n"
    "[chains]\nn_chains = 1\nn_burn = 2\nn_keep = 2\nwarm_start_steps = 1\n"
    "[training]\nbatch_size = 16\nfirst_beta_updates = 3\nupdates_per_beta = 2\n"
    "tempering_samples = 32\n"
    '[tempering]\nkind = "explicit"\nbetas = [0.2, 1.0]\n'
    "[prediction]\nn_samples = 40\nbatch_size = 16\n"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    (root / "tiny.toml").write_text(TINY)
    out = root / "run"
    assert (
        main(["train", str(root / "tiny.toml"), "--out", str(out), "--quiet", "--no-evaluate"]) == 0
    )
    return out


def _sample(run, path, n):
    assert main(["sample", str(run), "-n", str(n), "--quiet", "-o", str(path)]) == 0
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_the_first_n_samples_do_not_depend_on_how_many_follow(run, tmp_path):
    """-n 10 (one batch of 10) and -n 37 (batches of 16, the last padded)."""
    few, many = _sample(run, tmp_path / "few.npz", 10), _sample(run, tmp_path / "many.npz", 37)
    assert len(many["x"]) == 37
    for key in ("x", "X", "log_weights", "energy"):
        np.testing.assert_array_equal(few[key], many[key][:10])


def test_a_trajectory_format_for_a_non_molecule_is_refused_before_drawing(run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "-o", str(out), "-o", str(tmp_path / "s.pdb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".pdb is for molecules" in err[0]
    assert not out.exists()


def test_an_output_named_twice_is_refused(run, tmp_path, capsys):
    out = str(tmp_path / "s.npz")
    assert main(["sample", str(run), "-o", out, "-o", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "named twice" in err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "RUN", "-o", ""],
        ["sample", "RUN", "--output", ""],
        ["sample", "RUN", "-o", "a.npz", "-o", " "],
        ["train", "CONFIG", "--out", ""],
        ["demo", "--out", ""],
    ],
)
def test_an_empty_output_path_is_one_line_error(run, tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    argv = [{"RUN": str(run), "CONFIG": str(run / "config.toml")}.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected a path" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_weights_file_lines_up_with_the_frames(tmp_path):
    lw = np.array([0.0, np.log(3.0), -np.inf, np.log(4.0)])
    samples = Samples(
        x=np.zeros((4, 2)),
        X=np.zeros((4, 1)),
        log_qX=np.zeros(4),
        log_q=np.zeros(4),
        energy=np.array([1.0, 2.0, np.inf, 3.0]),
        log_weights=lw,
        ais_acceptance=np.full(4, np.nan),
    )
    table = np.loadtxt(write_weights(tmp_path / "s.weights.txt", samples, 0.5))
    np.testing.assert_array_equal(table[:, 0], np.arange(4))
    np.testing.assert_array_equal(table[:, 1], lw)
    np.testing.assert_allclose(table[:, 2], [1 / 8, 3 / 8, 0, 4 / 8])
    np.testing.assert_array_equal(table[:, 3], samples.energy)
    assert "beta = 0.5" in (tmp_path / "s.weights.txt").read_text().splitlines()[0]


@pytest.mark.parametrize("bad", [True, False])
def test_sample_warns_exactly_when_the_weights_are_untrustworthy(run, tmp_path, capsys, bad):
    """The warning follows trust's verdict: one weight holding everything, or near-uniform
    weights with a few twice the mean (PSIS's k > 1 there, but no weight can dominate)."""
    import coarseflow.sample_outputs as sample_outputs
    from coarseflow.analysis import trust

    target, samples, beta = sample_outputs.sample_run(run, n=200)
    log_w = np.zeros(200)
    if bad:
        log_w[0] = 50.0
    else:
        log_w[:5] = np.log(2.0)
    samples = samples._replace(log_weights=log_w)
    expected = trust.warning_line(trust.log_weight_verdict(log_w))
    assert (expected is not None) == bad
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(sample_outputs, "sample_run", lambda *a, **k: (target, samples, beta))
    try:
        assert (
            main(["sample", str(run), "-n", "200", "--quiet", "-o", str(tmp_path / "s.npz")]) == 0
        )
    finally:
        monkeypatch.undo()
    err = capsys.readouterr().err
    assert ("WARNING: do not trust the reweighted numbers" in err) == bad
