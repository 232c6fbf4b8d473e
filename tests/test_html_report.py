"""`coarseflow report RUN`: a self-contained HTML page with the run's sections and inline
figures, no external URL; rendered by headless Chromium where one is installed."""

import html.parser
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from coarseflow.cli import main

TINY = (
    '[target]\nkind = "double_well"\n'
    "[model]\nknots = 4\nlayers = 1\nnn_width = 8\n"
    "[chains]\nn_chains = 1\nn_burn = 2\nn_keep = 2\nwarm_start_steps = 1\n"
    "[training]\nbatch_size = 16\nfirst_beta_updates = 5\nupdates_per_beta = 3\n"
    "tempering_samples = 32\n"
    '[tempering]\nkind = "explicit"\nbetas = [0.2, 1.0]\n'
    "[prediction]\nn_samples = 200\nladder_samples = 60\n"
)
SECTIONS = (
    "Settings",
    "Tempering ladder",
    "Training curves",
    "Free energy on the CG variables",
    "States: populations and free-energy differences",
    "Can the reweighted numbers be trusted?",
    "Cost",
    "Evaluation, every checkpoint",
)
VOID = {"meta", "img", "br", "hr", "input", "link"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(an unevaluated run's report text, the evaluated run's directory)."""
    root = tmp_path_factory.mktemp("report")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY)
    out = root / "out"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--no-evaluate"]) == 0
    unevaluated = (out / "report.html").read_text()  # train writes it at its end
    assert main(["report", str(out), "--evaluate", "--quiet"]) == 0
    return unevaluated, out


class _Checker(html.parser.HTMLParser):
    """Tags nested and closed properly; the src of every img."""

    def __init__(self):
        super().__init__()
        self.stack, self.sources, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_html(text: str) -> _Checker:
    assert text.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    # self-contained: no URL, no script, no stylesheet or font from elsewhere
    assert not re.search(r"https?://|<script|<link|<iframe|url\(", text, re.IGNORECASE)
    return checker


def test_report_of_an_evaluated_run(runs):
    _, out = runs
    text = (out / "report.html").read_text()
    checker = check_html(text)
    for section in SECTIONS:
        assert f">{section}<" in text, section
    # ladder, training curves, free-energy profile, the evaluation's marginals
    assert len(checker.sources) >= 4
    assert all(s.startswith("data:image/png;base64,") for s in checker.sources)
    assert "right well (x1 &gt; 0)" in text and "population (exact)" in text
    assert "kT" in text and "90 % bootstrap" in text
    assert re.search(r'class="verdict (good|noisy|tail|bad)"', text)
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final"]
    assert final["n_nonfinite_log_weights"] == 0 and final["max_weight_ratio"] >= 1.0
    assert f"ESS {final['ess']:.0f} of 200" in text
    with np.load(out / "samples" / "evaluation.npz") as f:  # what the report read
        assert f["log_weights"].shape == (200,) and float(f["beta"]) == 1.0


def test_report_of_an_unevaluated_run_says_so(runs):
    unevaluated, _ = runs
    check_html(unevaluated)
    assert "has not been evaluated" in unevaluated
    assert ">Tempering ladder<" in unevaluated and ">Training curves<" in unevaluated
    assert ">Free energy on the CG variables<" not in unevaluated


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no config.toml" in capsys.readouterr().err


CHROMIUM = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
    None,
)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    from matplotlib.image import imread

    _, out = runs
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            (out / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    image = imread(shot)[:, :, :3]
    assert image.shape[:2] == (3000, 1200)
    ink = np.any(image < 0.9, axis=2)  # anything not (nearly) white
    assert ink.mean() > 0.01  # measured 0.03: text, tables, figures
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows.max() - rows.min() > 2000  # the page runs on, not one line at the top
    colours = np.unique((image[ink] * 8).astype(int), axis=0)
    assert len(colours) > 20  # figures' colours, the verdict's box: not text only


def _render(target, X, x=None, log_w=None):
    """The report of made-up samples of ``target`` (no run): its free-energy sections."""
    from coarseflow.analysis.html_report import ReportInputs, render
    from coarseflow.analysis.reports import report_for

    n = X.shape[0]
    samples = {
        "x": X if x is None else x,
        "X": X,
        "log_weights": np.zeros(n) if log_w is None else log_w,
        "beta": np.float64(1.0),
    }
    inputs = ReportInputs("made-up", {}, "", [], [], None, samples, report_for(target))
    return render(inputs)


def test_free_energies_of_every_toy_target():
    import jax.numpy as jnp
    import jax.random as jr

    from coarseflow.partition import Partition
    from coarseflow.targets import EnergyTarget, GaussianMixture, ManyWell

    mixture = GaussianMixture()
    x = np.asarray(mixture.sample(jr.key(0), 500))
    log_w = np.where(np.arange(500) < 5, -np.inf, 0.0)  # 5 zero weights: counted, said
    text = _render(mixture, x[:, : mixture.n_x], x, log_w)
    check_html(text)
    assert "component 1" in text and "5 of 500 log-weights were not finite" in text
    many = ManyWell()
    X = np.random.default_rng(0).normal(1.0, 0.5, (300, many.n_wells))
    check_html(_render(many, X, np.zeros((300, many.n))))
    energy = EnergyTarget(lambda x: jnp.sum(x**2), Partition.from_x(2, [0]), lower=-1, upper=1)
    text = _render(energy, np.random.default_rng(1).uniform(-1, 1, (300, 1)), np.zeros((300, 2)))
    check_html(text)
    assert "free-energy profiles" in text and "States" not in text


def test_free_energies_of_a_molecule_in_kj_per_mol():
    pytest.importorskip("openmm")
    from coarseflow.targets.molecule import Molecule

    m = Molecule()
    rng = np.random.default_rng(2)
    x = np.asarray(m.reference_x)[None] + 0.002 * rng.normal(size=(60, m.n))
    text = _render(m, x[:, : m.partition.n_x], x)
    check_html(text)
    assert "kJ/mol" in text and "alpha_R" in text and "C7eq/PII" in text
