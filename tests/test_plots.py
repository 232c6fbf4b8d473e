"""Plots: every function writes a non-empty PNG and returns its path; bad input is rejected."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats

from coarseflow.analysis import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_plot_marginal_1d_density_samples_and_axes(tmp_path, rng):
    x = rng.normal(size=3000)
    out = plots.plot_marginal_1d(tmp_path / "m.png", x, None, stats.norm.pdf, "normal")
    assert out == tmp_path / "m.png"
    _check_png(out)
    out2 = plots.plot_marginal_1d(tmp_path / "sub" / "r.png", x[:, None], np.ones(3000), x + 0.1)
    _check_png(out2)
    fig = Figure()
    ax = fig.subplots()
    assert plots.plot_marginal_1d(ax, x, reference=stats.norm.pdf) is ax
    assert len(ax.lines) == 1 and len(ax.patches) >= 1
    with pytest.raises(ValueError, match="weights"):
        plots.plot_marginal_1d(tmp_path / "bad.png", x, np.ones(5))


def test_plot_marginals_per_beta(tmp_path, rng):
    samples = {b: rng.normal(scale=1 / np.sqrt(b), size=2000) for b in (0.1, 0.3, 1.0, 0.05, 0.5)}

    def exact(grid, beta):
        return stats.norm.pdf(grid, scale=1 / np.sqrt(beta))

    out = plots.plot_marginals_per_beta(tmp_path / "betas.png", samples, exact, range=(-8, 8))
    _check_png(out, 20_000)
    weights = {b: np.ones(2000) for b in samples}
    _check_png(plots.plot_marginals_per_beta(tmp_path / "b2.png", samples, None, weights))


def test_plot_2d_with_contours_and_reference(tmp_path, rng):
    x = rng.normal(size=(4000, 2))

    def log_density(pts):
        return stats.multivariate_normal(mean=np.zeros(2)).logpdf(pts)

    out = plots.plot_2d(tmp_path / "2d.png", x, log_density, rng.normal(size=(4000, 2)))
    _check_png(out, 20_000)
    _check_png(plots.plot_2d(tmp_path / "2d_plain.png", x, weights=np.ones(4000)))
    with pytest.raises(ValueError, match="samples_2d"):
        plots.plot_2d(tmp_path / "bad.png", np.zeros((10, 3)))


def test_plot_training_curves(tmp_path):
    steps = np.arange(200)
    records = [
        {
            "step": int(s),
            "beta": float(min(1.0, 0.01 * 1.05**s)),
            "loss": float(np.exp(-s / 50)),
            "grad_norm": float(1.0 + (s % 37 == 0) * 50),
            "skipped": bool(s % 37 == 0),
            "ess": 0.1,
        }
        for s in steps
    ]
    _check_png(plots.plot_training_curves(tmp_path / "curves.png", records), 20_000)
    # with the chains' heating logged (None where not measured), a fourth panel below
    for i, rec in enumerate(records):
        rec["chain_heating"] = None if i < 10 else float(np.sin(i / 9.0))
    four = plots.plot_training_curves(tmp_path / "curves4.png", records)
    _check_png(four, 20_000)
    height = lambda p: int.from_bytes(p.read_bytes()[20:24], "big")  # noqa: E731 (PNG IHDR)
    assert height(four) == round(height(tmp_path / "curves.png") * 4 / 3)
    # the refit of q(Y|X) after the ladder: its loss against an axis of its own
    refit = [r | {"step": 200 + i, "loss": 150.0 - i, "refit": True} for i, r in enumerate(records)]
    fig = plots.training_curves_figure(records + refit)
    assert len(fig.axes) == len(plots.training_curves_figure(records).axes) + 1
    twin = fig.axes[-1]
    np.testing.assert_array_equal(twin.lines[0].get_xdata(), np.arange(200, 400))
    with pytest.raises(ValueError, match="grad_norm"):
        plots.plot_training_curves(
            tmp_path / "bad.png", [{"step": 0, "beta": 1.0, "loss": 0.0, "skipped": False}]
        )


def test_plot_ramachandran(tmp_path, rng):
    model = np.stack([rng.normal(-1.4, 0.3, 5000), rng.normal(2.6, 0.4, 5000)], axis=1)
    ref = np.stack([rng.normal(-1.3, 0.3, 5000), rng.normal(-0.7, 0.3, 5000)], axis=1)
    out = plots.plot_ramachandran(tmp_path / "rama.png", model, ref, weights=np.ones(5000))
    _check_png(out, 20_000)
    _check_png(plots.plot_ramachandran(tmp_path / "rama_model.png", model))


def test_plots_do_not_import_pyplot():
    code = "import sys, coarseflow.analysis.plots; print(int('matplotlib.pyplot' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
