"""Figures from arrays: marginals, 2D densities, training curves, Ramachandran plots.

Figures are built with ``matplotlib.figure.Figure`` and written with the Agg canvas: pyplot is
never imported, no global backend is switched, nothing is shown. Every ``plot_*`` that takes a
path writes a PNG there (creating parent folders) and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_MODEL = "tab:blue"
_REF = "black"


def _new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.5, 3.5)):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def _flat(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name}: expected a non-empty 1D array (or (N, 1)), got shape {arr.shape}"
        )
    return arr


def _weights(w, n: int, name: str) -> np.ndarray | None:
    if w is None:
        return None
    arr = np.asarray(w, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected {n} weights, got shape {arr.shape}")
    return arr


def _draw_marginal(ax: Axes, x, weights, reference, title, bins, range, label) -> None:
    x = _flat(x, "samples")
    w = _weights(weights, x.size, "weights")
    ref_samples = None
    if reference is not None and not callable(reference):
        ref_samples = _flat(reference, "reference")
    if range is None:
        pool = x if ref_samples is None else np.concatenate([x, ref_samples])
        lo, hi = float(pool.min()), float(pool.max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        range = (lo - pad, hi + pad)
    ax.hist(
        x,
        bins=bins,
        range=range,
        weights=w,
        density=True,
        histtype="stepfilled",
        alpha=0.5,
        color=_MODEL,
        label=label,
    )
    if ref_samples is not None:
        ax.hist(
            ref_samples,
            bins=bins,
            range=range,
            density=True,
            histtype="step",
            color=_REF,
            label="reference",
        )
    elif callable(reference):
        grid = np.linspace(range[0], range[1], 512)
        ax.plot(
            grid, np.asarray(reference(grid), dtype=np.float64), color=_REF, lw=1.3, label="exact"
        )
    ax.set_xlim(*range)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")


def plot_marginal_1d(
    ax_or_path: Axes | str | Path,
    samples,
    weights=None,
    reference: Callable[[np.ndarray], np.ndarray] | np.ndarray | None = None,
    title: str | None = None,
    *,
    bins: int = 60,
    range: tuple[float, float] | None = None,
) -> Axes | Path:
    """Density histogram of 1D ``samples`` (optionally ``weights``) against a reference.

    ``reference`` is a normalised density callable f(grid) -> values (drawn as a curve) or a
    reference sample set (drawn as a step histogram), or None. Draws onto ``ax_or_path`` if it is
    a matplotlib Axes (returns the Axes), else writes a PNG there (returns the path).
    """
    if isinstance(ax_or_path, Axes):
        _draw_marginal(ax_or_path, samples, weights, reference, title, bins, range, "model")
        return ax_or_path
    fig, axes = _new_figure()
    _draw_marginal(axes[0, 0], samples, weights, reference, title, bins, range, "model")
    return _save(fig, ax_or_path)


def plot_marginals_per_beta(
    path: str | Path,
    samples_by_beta: Mapping[float, np.ndarray],
    exact_fn: Callable[[np.ndarray, float], np.ndarray] | None = None,
    weights_by_beta: Mapping[float, np.ndarray] | None = None,
    *,
    bins: int = 60,
    range: tuple[float, float] | None = None,
    ncols: int = 4,
) -> Path:
    """One panel per beta (increasing): model histogram vs the exact curve exact_fn(grid, beta)."""
    if not samples_by_beta:
        raise ValueError("samples_by_beta: expected at least one beta")
    betas = sorted(samples_by_beta)
    ncols = max(1, min(ncols, len(betas)))
    nrows = math.ceil(len(betas) / ncols)
    fig, axes = _new_figure(ncols, nrows, size=(3.6, 2.9))
    for i, beta in enumerate(betas):
        ax = axes[i // ncols, i % ncols]
        ref = None if exact_fn is None else (lambda g, b=beta: exact_fn(g, b))
        w = None if weights_by_beta is None else weights_by_beta.get(beta)
        _draw_marginal(
            ax, samples_by_beta[beta], w, ref, f"beta = {beta:.4g}", bins, range, "model"
        )
    for j in np.arange(len(betas), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    return _save(fig, path)


def _grid_log_density(contour_fn, xr, yr, n=200):
    gx, gy = np.linspace(*xr, n), np.linspace(*yr, n)
    mx, my = np.meshgrid(gx, gy, indexing="xy")
    pts = np.stack([mx.ravel(), my.ravel()], axis=-1)
    z = np.asarray(contour_fn(pts), dtype=np.float64).reshape(mx.shape)
    return mx, my, z


def _as_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected samples of shape (N, 2), got {arr.shape}")
    return arr


def plot_2d(
    path: str | Path,
    samples_2d,
    contour_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    reference_samples=None,
    *,
    weights=None,
    bins: int = 80,
    range: tuple[tuple[float, float], tuple[float, float]] | None = None,
    title: str | None = None,
) -> Path:
    """2D histogram of ``samples_2d`` (N, 2) with contours of a log density.

    ``contour_fn(points (M, 2)) -> log density (M,)`` is drawn as contour lines (levels spaced
    in log density down to 12 nats below the maximum). ``reference_samples`` (M, 2), if given,
    get a second panel with the same range and contours.
    """
    x = _as_2d(samples_2d, "samples_2d")
    w = _weights(weights, x.shape[0], "weights")
    ref = None if reference_samples is None else _as_2d(reference_samples, "reference_samples")
    if range is None:
        pool = x if ref is None else np.concatenate([x, ref])
        lo, hi = pool.min(axis=0), pool.max(axis=0)
        pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
        range = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
    panels = [("model" if title is None else title, x, w)]
    if ref is not None:
        panels.append(("reference", ref, None))
    fig, axes = _new_figure(len(panels), 1, size=(4.5, 4.0))
    contours = None if contour_fn is None else _grid_log_density(contour_fn, *range)
    for ax, (name, pts, pw) in zip(axes[0], panels, strict=True):
        ax.hist2d(pts[:, 0], pts[:, 1], bins=bins, range=range, weights=pw, cmap="Blues")
        if contours is not None:
            mx, my, z = contours
            top = np.nanmax(z)
            levels = top - np.array([12.0, 9.0, 6.0, 4.0, 2.0, 1.0, 0.25])
            ax.contour(mx, my, z, levels=levels, colors="k", linewidths=0.7, linestyles="solid")
        ax.set_title(name)
        ax.set_xlim(*range[0])
        ax.set_ylim(*range[1])
    return _save(fig, path)


def _column(records: Sequence[Mapping], key: str) -> np.ndarray:
    """records[i][key] as floats; null (a non-finite value in strict JSON) is NaN."""
    return np.array([np.nan if r[key] is None else float(r[key]) for r in records])


def plot_training_curves(path: str | Path, records: Sequence[Mapping]) -> Path:
    """:func:`training_curves_figure` of ``records`` written to ``path``."""
    return _save(training_curves_figure(records), path)


def training_curves_figure(records: Sequence[Mapping]) -> Figure:
    """Loss, gradient norm (log scale) and beta against the update step; skipped updates in red.

    ``records`` are the lines of metrics.jsonl: dicts with keys 'step', 'beta', 'loss',
    'grad_norm', 'skipped'. Where they also carry 'chain_heating' (kT, None when not measured),
    a fourth panel shows it with its running mean over 25 updates: it should hover around 0.
    Records marked 'refit' (the refit of q(Y|X) after the ladder) have another loss (minus the
    importance-weighted bound): it is drawn against its own axis, on the right.
    """
    keys = ("step", "beta", "loss", "grad_norm", "skipped")
    if len(records) == 0:
        raise ValueError("records: expected at least one record")
    for i, rec in enumerate(records):
        missing = [k for k in keys if k not in rec]
        if missing:
            raise ValueError(f"records[{i}]: missing keys {missing} (expected {list(keys)})")
    step = _column(records, "step")
    beta = _column(records, "beta")
    loss = _column(records, "loss")
    gnorm = _column(records, "grad_norm")
    skipped = np.array([bool(r["skipped"]) for r in records])

    heating = np.array(
        [np.nan if r.get("chain_heating") is None else float(r["chain_heating"]) for r in records]
    )
    with_heating = bool(np.any(np.isfinite(heating)))
    fig, axes = _new_figure(1, 4 if with_heating else 3, size=(7.0, 2.4))
    ax_loss, ax_grad, ax_beta = axes[:3, 0]
    ax_grad.sharex(ax_loss)
    ax_beta.sharex(ax_loss)
    refit = np.array([bool(r.get("refit")) for r in records])
    ax_loss.plot(step[~refit], loss[~refit], lw=0.8, color=_MODEL)
    ax_loss.set_ylabel("loss")
    ax_refit = ax_loss
    if np.any(refit):
        ax_refit = ax_loss.twinx()
        ax_refit.plot(step[refit], loss[refit], lw=0.8, color="tab:purple")
        ax_refit.set_ylabel("refit of q(Y|X):\n-bound", color="tab:purple", fontsize="small")
    positive = gnorm > 0
    ax_grad.plot(step[positive], gnorm[positive], lw=0.8, color=_MODEL)
    if np.any(positive):
        ax_grad.set_yscale("log")
    ax_grad.set_ylabel("grad norm")
    if np.any(skipped):
        for ax, part in ((ax_loss, skipped & ~refit), (ax_refit, skipped & refit)):
            ax.plot(step[part], loss[part], "x", color="tab:red", label="skipped")
        ok = skipped & positive
        ax_grad.plot(step[ok], gnorm[ok], "x", color="tab:red", label="skipped")
        ax_loss.legend(fontsize="small")
    ax_beta.plot(step, beta, lw=1.0, color="tab:green")
    if np.all(beta > 0) and beta.max() / beta.min() > 20:
        ax_beta.set_yscale("log")
    ax_beta.set_ylabel("beta")
    axes[-1, 0].set_xlabel("step")
    if with_heating:
        ax_heat = axes[3, 0]
        ax_heat.sharex(ax_loss)
        ok = np.isfinite(heating)
        ax_heat.plot(step[ok], heating[ok], lw=0.5, color=_MODEL, alpha=0.35)
        window = min(25, int(ok.sum()))
        running = np.convolve(heating[ok], np.ones(window) / window, mode="valid")
        ax_heat.plot(step[ok][window - 1 :], running, lw=1.2, color=_MODEL)
        ax_heat.axhline(0.0, color="k", lw=0.6)
        ax_heat.set_ylabel("chain heating (kT)")
    return fig


def plot_ramachandran(
    path: str | Path,
    phi_psi_model,
    phi_psi_reference=None,
    weights=None,
    *,
    reference_weights=None,
    bins: int = 60,
) -> Path:
    """Side-by-side (phi, psi) histograms (log density) of model and reference, in degrees.

    Inputs are (N, 2) dihedral angles in radians (as mdtraj returns them); they are wrapped to
    [-180, 180) degrees. ``weights`` (e.g. importance weights) apply to the model samples. Both
    panels share one colour scale spanning 10 nats below the highest bin; empty bins are blank.
    """
    sets = [("model", phi_psi_model, weights)]
    if phi_psi_reference is not None:
        sets.append(("reference", phi_psi_reference, reference_weights))
    rng = ((-180.0, 180.0), (-180.0, 180.0))
    hists = []
    for name, angles, w in sets:
        deg = np.degrees(_as_2d(angles, f"phi_psi_{name}"))
        deg = (deg + 180.0) % 360.0 - 180.0
        w = _weights(w, deg.shape[0], f"{name} weights")
        h, xe, ye = np.histogram2d(deg[:, 0], deg[:, 1], bins=bins, range=rng, weights=w)
        bin_area = (xe[1] - xe[0]) * (ye[1] - ye[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            logd = np.log(h / (h.sum() * bin_area))
        hists.append((name, xe, ye, np.where(np.isfinite(logd), logd, np.nan)))
    finite = [z[np.isfinite(z)] for *_, z in hists]
    vmax = max((f.max() for f in finite if f.size), default=0.0)
    vmin = vmax - 10.0
    fig, axes = _new_figure(len(sets), 1, size=(4.3, 4.0))
    mesh = None
    for ax, (name, xe, ye, logd) in zip(axes[0], hists, strict=True):
        mesh = ax.pcolormesh(xe, ye, logd.T, cmap="viridis", shading="flat", vmin=vmin, vmax=vmax)
        ax.set_title(name)
        ax.set_xlabel("phi (deg)")
        ax.set_ylabel("psi (deg)")
        ax.set_xlim(*rng[0])
        ax.set_ylim(*rng[1])
        ax.set_xticks([-180, -90, 0, 90, 180])
        ax.set_yticks([-180, -90, 0, 90, 180])
        ax.set_aspect("equal")
    fig.colorbar(mesh, ax=list(axes[0]), label="log density (1/deg$^2$)", shrink=0.85)
    return _save(fig, path)
