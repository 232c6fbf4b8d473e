"""A run's report as one self-contained HTML page: figures inline as base64 PNG, no script, no
link to anything outside the file. ``render(ReportInputs) -> str``; reading the run directory
is coarseflow/report.py's job.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from coarseflow.analysis import free_energy as fe
from coarseflow.analysis import free_energy_plots as fplots
from coarseflow.analysis import metrics
from coarseflow.analysis import panel_free_energy as pfe
from coarseflow.analysis.plots import training_curves_figure
from coarseflow.analysis.reports import AbstractReport
from coarseflow.analysis.trust import Verdict, entry_verdict, warning_line

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.k, th.k { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.verdict { padding: 0.6em 1em; border-radius: 4px; border-left: 6px solid; }
.good { background: #e8f5e9; border-color: #2e7d32; }
.noisy, .tail { background: #fff8e1; border-color: #f9a825; }
.bad { background: #ffebee; border-color: #c62828; }
.settings { display: flex; flex-wrap: wrap; gap: 0 1.2em; align-items: flex-start; }
.wide { overflow-x: auto; }
.note { background: #eef3fb; padding: 0.5em 1em; border-radius: 4px; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


@dataclass(frozen=True)
class ReportInputs:
    """What a report shows. ``config``: the run's config as parsed TOML (sections -> keys);
    ``records``: metrics.jsonl's lines; ``checkpoints``: their metadata (beta, step, wall_time,
    energy_evals); ``summary``: summary.json (None: not evaluated); ``samples``: the evaluated
    final samples (x, X, log_weights, beta) or None; ``report``: the target's; ``figures``:
    (title, PNG bytes) of the evaluation's figures; ``notes``: lines said at the top."""

    run_name: str
    config: Mapping
    config_text: str
    records: Sequence[Mapping]
    checkpoints: Sequence[Mapping]
    summary: Mapping | None
    samples: Mapping[str, np.ndarray] | None
    report: AbstractReport | None
    figures: Sequence[tuple[str, bytes]] = ()
    notes: Sequence[str] = field(default_factory=list)
    version: str = ""


# ---- HTML pieces -------------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text))


def _num(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool | str):
        return str(v)
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    return f"{float(v) + 0.0:.{digits}g}"  # + 0.0: no "-0"


def _table(header: Sequence[str], rows: Sequence[Sequence], first_left: bool = True) -> str:
    def cell(tag, i, v):
        cls = ' class="k"' if first_left and i == 0 else ""
        return f"<{tag}{cls}>{v if isinstance(v, _Raw) else _e(v)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """HTML that a table cell takes as it is."""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _figure(fig, alt: str) -> str:
    return _img(fplots.png_bytes(fig), alt)


# ---- sections -----------------------------------------------------------------------------------


def _weights_of(entry: Mapping | None, log_w: np.ndarray | None) -> dict | None:
    """ESS, Pareto k, the largest weight and the non-finite count of one evaluated checkpoint:
    summary.json's where it has them, else from the samples' log-weights."""
    out = dict(entry or {})
    if log_w is not None:
        computed = {
            "n_samples": int(log_w.size),
            "ess": float(metrics.ess(log_w)),
            "pareto_k": metrics.pareto_k(log_w),
            "max_weight_ratio": metrics.max_weight_ratio(log_w),
            "n_nonfinite_log_weights": int(np.sum(~np.isfinite(log_w))),
        }
        out = computed | {k: v for k, v in out.items() if v is not None or k not in computed}
    return out if "ess" in out and "n_samples" in out else None


def verdict_of(entry: Mapping) -> Verdict:
    return entry_verdict(entry)


def _trust_section(inputs: ReportInputs, log_w) -> tuple[str, Verdict | None]:
    final = None if inputs.summary is None else inputs.summary.get("final")
    entry = _weights_of(final, log_w)
    if entry is None:
        return "<h2>Can the reweighted numbers be trusted?</h2><p>Not evaluated.</p>", None
    verdict = verdict_of(entry)
    parts = [
        "<h2>Can the reweighted numbers be trusted?</h2>",
        f'<p class="verdict {verdict.level}">{_e(verdict.sentence)}</p>',
    ]
    refined = None if final is None else final.get("refined")
    if refined:
        rv = verdict_of(_weights_of(refined, None))
        parts.append(
            f'<p class="verdict {rv.level}">After refinement by AIS toward p: {_e(rv.sentence)}</p>'
        )
    rows = [
        ("samples", entry["n_samples"]),
        ("ESS (Kish)", entry["ess"]),
        ("Pareto k (PSIS tail fit)", entry.get("pareto_k")),
        ("largest weight / mean weight", entry.get("max_weight_ratio")),
        ("non-finite log-weights", entry.get("n_nonfinite_log_weights")),
        ("log Z estimate", entry.get("log_Z_estimate")),
        ("log Z estimate, bootstrap standard error", entry.get("log_Z_estimate_err")),
        ("log Z exact", entry.get("log_Z_exact")),
    ]
    parts.append(_table(["diagnostic", "value"], [(k, _num(v)) for k, v in rows if v is not None]))
    return "".join(parts), verdict


def _settings_section(inputs: ReportInputs) -> str:
    """One small table per config section, side by side; the file itself folded below."""
    tables = []
    for section, table in inputs.config.items():
        rows = [
            (key, ", ".join(_num(v) for v in value) if isinstance(value, list) else _num(value))
            for key, value in (table.items() if isinstance(table, Mapping) else [("", table)])
        ]
        tables.append(_table([f"[{section}]", ""], rows))
    return (
        "<h2>Settings</h2><p>Every setting in effect (defaults included).</p>"
        f'<div class="settings">{"".join(tables)}</div>'
        "<details><summary>config.toml</summary><pre>" + _e(inputs.config_text) + "</pre></details>"
    )


def _ladder_section(inputs: ReportInputs) -> str:
    per_beta = (
        {}
        if inputs.summary is None
        else {round(float(b["beta"]), 12): b for b in inputs.summary.get("per_beta", [])}
    )
    updates: dict[float, int] = {}
    for r in inputs.records:
        key = round(float(r["beta"]), 12)
        updates[key] = updates.get(key, 0) + 1
    rows = []
    for c in inputs.checkpoints:
        key = round(float(c["beta"]), 12)
        ev = per_beta.get(key, {})
        rows.append(
            (
                _num(c["beta"], 6),
                _num(updates.get(key)),
                _num(c.get("step")),  # updates done when it was written
                _num(c.get("wall_time"), 3),
                _num(c.get("energy_evals")),
                _num(ev.get("ess_fraction"), 3),
                _num(ev.get("pareto_k"), 3),
            )
        )
    header = [
        "beta",
        "updates",
        "updates so far",
        "wall time (s)",
        "energy evaluations",
        "ESS fraction",
        "Pareto k",
    ]
    out = "<h2>Tempering ladder</h2>"
    if not inputs.checkpoints:
        return out + "<p>No checkpoint.</p>"
    out += _table(header, rows, first_left=False)
    if inputs.records:
        out += _figure(fplots.ladder_figure(inputs.records, inputs.checkpoints), "ladder")
    return out


def _training_section(inputs: ReportInputs) -> str:
    out = "<h2>Training curves</h2>"
    if not inputs.records:
        return out + "<p>metrics.jsonl is empty.</p>"
    skipped = sum(bool(r.get("skipped")) for r in inputs.records)
    n = len(inputs.records)
    out += f"<p>{n:,} updates, {skipped:,} of them skipped by the gradient guard.</p>"
    return out + _figure(training_curves_figure(inputs.records), "training curves")


def _free_energy_sections(inputs: ReportInputs, w: np.ndarray, verdict: Verdict | None) -> str:
    """Free-energy surfaces and profiles on the CG variables and the states' populations, a
    block per panel of the target's report (a peptide: one per residue); the weights' warning
    above them when they make the numbers untrustworthy."""
    s, report = inputs.samples, inputs.report
    beta = float(s["beta"])
    kT_unit, unit = report.energy_unit()
    kT = kT_unit / beta
    out = [
        "<h2>Free energy on the CG variables</h2>",
        f"<p>Reweighted by the importance weights, beta = {beta:.4g}; F = -kT log p in {unit} "
        f"(kT = {_num(kT, 4)} {unit}), zero at the minimum. Bands and intervals: 90 % "
        f"bootstrap over the {len(w):,} samples.</p>",
    ]
    warning = None if verdict is None else warning_line(verdict)
    if warning is not None:
        out.append(f'<p class="verdict {verdict.level}">{_e(warning)}</p>')
    exact_2d = report.reference_log_density_2d(beta)
    for panel in report.panels(s["x"], s["X"], beta):
        if panel.title:
            out.append(f"<h3>{_e(panel.title)}</h3>")
        ok = pfe.usable(panel.variables, w)
        surface, profiles = pfe.panel_figures(panel, w, kT, unit, exact_2d)
        if profiles is None:
            out.append("<p>No sample with a finite weight and finite variables.</p>")
            continue
        if surface is not None:
            out.append(_figure(surface, f"free-energy surface {panel.title}".strip()))
        out.append(_figure(profiles, f"free-energy profiles {panel.title}".strip()))
        if panel.states is not None:
            out.append(_states_table(panel.states, ok, w, kT, unit))
    return "".join(out)


def _interval(v, lo, hi, digits=3) -> str:
    return f"{_num(v, digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _states_table(states, ok, w, kT: float, unit: str) -> str:
    """Populations and dF with their intervals; dF relative to the reference's most populated
    state where there is a reference (so both columns share it), else the model's."""
    ref = states.reference
    anchor = None if ref is None else int(np.argmax(ref))
    pops = fe.populations(states.labels[ok], len(states.names), w[ok], kT, ref_state=anchor)
    anchor = int(np.argmax(pops.p)) if anchor is None else anchor
    ref_dF = None
    if ref is not None:
        with np.errstate(divide="ignore"):
            ref_dF = -kT * np.log(ref / ref[anchor])
    rows = []
    for i, name in enumerate(states.names):
        row = [
            name,
            _interval(pops.p[i], pops.p_lo[i], pops.p_hi[i]),
            _interval(pops.dF[i], pops.dF_lo[i], pops.dF_hi[i]),
            _interval(pops.dF[i] / kT, pops.dF_lo[i] / kT, pops.dF_hi[i] / kT),
        ]
        if ref is not None:
            err = None if states.reference_err is None else states.reference_err[i]
            row.append(_num(ref[i], 3) + ("" if not err else f" ± {_num(err, 2)}"))
            row.append(_num(ref_dF[i], 3))
            inside = pops.p_lo[i] - (err or 0) <= ref[i] <= pops.p_hi[i] + (err or 0)
            row.append("yes" if inside else "no")
        rows.append(row)
    header = [
        "state",
        "population [90 % interval]",
        f"dF ({unit}) [90 % interval]",
        "dF (kT) [90 % interval]",
    ]
    if ref is not None:
        header += [
            f"population ({states.reference_kind})",
            f"dF ({unit}, {states.reference_kind})",
            "reference inside the interval",
        ]
    return (
        "<h3>States: populations and free-energy differences</h3>"
        f"<p>dF relative to {_e(states.names[anchor])}"
        f"{' (the most populated in the reference)' if ref is not None else ''}.</p>"
        + _table(header, rows)
    )


def _cost_section(inputs: ReportInputs) -> str:
    last = inputs.checkpoints[-1] if inputs.checkpoints else {}
    rows = [
        ("updates", len(inputs.records)),
        ("betas trained", len(inputs.checkpoints)),
        ("training wall time (s)", last.get("wall_time")),
        ("energy + gradient evaluations in training", last.get("energy_evals")),
    ]
    if inputs.summary is not None:
        final = inputs.summary.get("final", {})
        rows.append(("samples evaluated at the last beta", final.get("n_samples")))
        rows.append(
            (
                "samples evaluated over the ladder",
                sum(b.get("n_samples", 0) for b in inputs.summary.get("per_beta", [])),
            )
        )
        if final.get("refined"):
            rows.append(
                ("evaluations of the refinement", final["refined"].get("refine_energy_evals"))
            )
    return "<h2>Cost</h2>" + _table(["", ""], [(k, _num(v)) for k, v in rows])


def _evaluation_section(inputs: ReportInputs) -> str:
    """summary.json's numbers, a column per checkpoint, and the evaluation's figures."""
    if inputs.summary is None:
        return ""
    per_beta = inputs.summary.get("per_beta", [])
    keys = [
        k
        for k, v in (per_beta[-1] if per_beta else {}).items()
        if k not in ("index", "beta") and (v is None or isinstance(v, int | float))
    ]
    rows = [[k] + [_num(b.get(k)) for b in per_beta] for k in keys]
    header = ["beta"] + [_num(b.get("beta"), 6) for b in per_beta]
    out = "<h2>Evaluation, every checkpoint</h2>"
    out += f'<div class="wide">{_table(header, rows)}</div>'
    for title, png in inputs.figures:
        out += f"<h3>{_e(title)}</h3>" + _img(png, title)
    return out


# ---- the page -----------------------------------------------------------------------------------


def render(inputs: ReportInputs) -> str:
    """The report's HTML text."""
    s = inputs.samples
    log_w = None if s is None else np.asarray(s["log_weights"], dtype=np.float64)
    trust, verdict = _trust_section(inputs, log_w)
    body = [f"<h1>coarseflow run {_e(inputs.run_name)}</h1>"]
    body += [f'<p class="note">{_e(n)}</p>' for n in inputs.notes]
    if verdict is not None:
        body.append(f'<p class="verdict {verdict.level}">{_e(verdict.sentence)}</p>')
    body += [_settings_section(inputs), _ladder_section(inputs), _training_section(inputs)]
    if s is not None and inputs.report is not None:
        w = np.nan_to_num(
            np.asarray(metrics.normalized_weights(np.where(np.isnan(log_w), -np.inf, log_w))),
            nan=0.0,
        )
        body.append(_free_energy_sections(inputs, w, verdict))
    body += [trust, _cost_section(inputs), _evaluation_section(inputs)]
    if inputs.version:
        body.append(f"<p><small>{_e(inputs.version)}</small></p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>coarseflow report: {_e(inputs.run_name)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
