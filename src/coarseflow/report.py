"""`coarseflow report RUN`: the run directory read into one self-contained RUN/report.html
(analysis/html_report.py draws it).

It reads what training and evaluation left (config.toml, metrics.jsonl, the checkpoints'
metadata, summary.json, samples/evaluation.npz, figures/) and recomputes nothing expensive: the
free energies come from the evaluation's kept samples. A run not evaluated gets a report that
says so (or ``evaluate=True`` evaluates it first).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from coarseflow.analysis.evaluation import evaluate_run, evaluation_samples_path
from coarseflow.analysis.html_report import ReportInputs, render
from coarseflow.analysis.reports import report_for
from coarseflow.atomic_files import atomic_write_text
from coarseflow.config import Config, build_target, load_config
from coarseflow.errors import ConfigError
from coarseflow.run_folder import coarseflow_version
from coarseflow.runs import RunDir

REPORT_NAME = "report.html"


def _settings(config: Config) -> dict:
    """Every setting in effect, defaults included: {section: {key: value}}."""
    out = {"target": dict(config.target)}
    for section in ("model", "conditional", "chains", "training", "tempering", "prediction"):
        obj = getattr(config, section)
        table = {"kind": type(obj).__name__} if section == "tempering" else {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            table[f.name] = list(value) if isinstance(value, tuple) else value
        out[section] = table
    return out


def _samples(run: RunDir, summary: dict | None, notes: list[str]) -> dict | None:
    path = evaluation_samples_path(run)
    if summary is None:
        return None
    if not path.exists():
        notes.append(
            "The evaluation's samples were not kept (evaluated by an older coarseflow): "
            "run `coarseflow evaluate` for the free-energy surfaces."
        )
        return None
    with np.load(path) as f:
        return {k: f[k] for k in ("x", "X", "log_weights", "beta")}


def _figures(summary: dict | None) -> list[tuple[str, bytes]]:
    """The evaluation's figures but the training curves (the report draws its own)."""
    out = []
    for name in (summary or {}).get("figures", []):
        path = Path(name)
        if path.is_file() and path.suffix == ".png" and path.stem != "training":
            out.append((path.stem.replace("_", " "), path.read_bytes()))
    return out


def gather(path) -> ReportInputs:
    """What the report of run ``path`` shows, read from its files."""
    run = RunDir(path).require_existing()
    config = load_config(run.config_path)
    checkpoints = run.checkpoints()
    notes: list[str] = []
    summary = None
    if run.summary_path.exists():
        summary = json.loads(run.summary_path.read_text())
        newest = max((Path(c["path"]).stat().st_mtime for c in checkpoints), default=0.0)
        if run.summary_path.stat().st_mtime < newest:
            notes.append(
                "summary.json is older than the newest checkpoint: the evaluation is stale "
                "(run `coarseflow evaluate` again)."
            )
    else:
        notes.append(
            "This run has not been evaluated: no free energies or weight diagnostics. "
            "Run `coarseflow evaluate RUN` (or `coarseflow report --evaluate RUN`)."
        )
    try:
        report = report_for(build_target(config.target))
    except (ConfigError, ImportError) as err:  # e.g. a molecule without openmm installed
        notes.append(f"The target could not be built here ({err}): no free energies.")
        report = None
    return ReportInputs(
        run_name=str(run.root),
        config=_settings(config),
        config_text=run.config_path.read_text(),
        records=run.read_metrics(),
        checkpoints=checkpoints,
        summary=summary,
        samples=_samples(run, summary, notes),
        report=report,
        figures=_figures(summary),
        notes=notes,
        version=f"coarseflow {coarseflow_version()}",
    )


def write_report(path, *, evaluate: bool = False, progress: bool = True) -> Path:
    """Write RUN/report.html for run ``path``; evaluate the run first if ``evaluate``."""
    run = RunDir(path).require_existing()
    if evaluate:
        evaluate_run(run.root, progress=progress)
    text = render(gather(run.root))
    out = run.root / REPORT_NAME
    with run.locked():
        atomic_write_text(out, text)
    return out
