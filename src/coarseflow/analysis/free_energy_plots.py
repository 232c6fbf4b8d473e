"""Figures of free energies for the HTML report: a 2D surface with contours, 1D profiles with
bootstrap bands, the tempering ladder. Each returns a matplotlib Figure (Agg canvas, never
pyplot); ``png_bytes`` turns it into a PNG.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from coarseflow.analysis.free_energy import Profile

_MODEL = "tab:blue"
_REF = "black"
F_MAX = 12.0  # kT: surfaces and profiles are drawn up to this far above their minimum


def _figure(ncols: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def png_bytes(fig: Figure, dpi: int = 96) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def surface_figure(
    edges: tuple[np.ndarray, np.ndarray],
    panels: Sequence[tuple[str, np.ndarray]],
    names: tuple[str, str],
    unit: str,
    f_max: float,
) -> Figure:
    """Filled contours of each panel's F (B, C) on ``edges`` (bins of names[0] x names[1]), one
    shared colour scale from 0 to ``f_max`` (in ``unit``), contour lines at its levels; empty
    bins are blank."""
    fig = Figure(figsize=(4.4 * len(panels), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    draw_surfaces(fig, edges, panels, names, unit, f_max)
    return fig


def draw_surfaces(fig, edges, panels, names, unit, f_max) -> None:
    """:func:`surface_figure`'s panels drawn into ``fig`` (a Figure or SubFigure)."""
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    centers = [0.5 * (e[1:] + e[:-1]) for e in edges]
    levels = np.linspace(0.0, f_max, 13)
    filled = None
    for ax, (title, F) in zip(axes, panels, strict=True):
        shown = np.where(F <= f_max, F, np.nan).T  # contourf wants (rows = y, columns = x)
        if np.any(np.isfinite(shown)):  # contourf of nothing draws nothing and warns
            filled = ax.contourf(*centers, shown, levels=levels, cmap="viridis")
            ax.contour(*centers, shown, levels=levels[1::2], colors="k", linewidths=0.5)
        ax.set_title(title)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.set_xlim(edges[0][0], edges[0][-1])
        ax.set_ylim(edges[1][0], edges[1][-1])
    if filled is not None:
        fig.colorbar(filled, ax=list(axes), label=f"F ({unit})", shrink=0.9)


def profile_figure(
    profiles: Sequence[tuple[str, Profile, Profile | None, tuple[np.ndarray, np.ndarray] | None]],
    unit: str,
    f_max: float,
    kT: float | None = None,
) -> Figure:
    """One panel per variable: (name, the model's profile with its band, the profile of
    reference samples (or None), an exact curve (grid, F) (or None)). With ``kT`` (in
    ``unit``) and a unit other than kT, a right-hand axis reads F in kT."""
    fig = Figure(figsize=(4.2 * len(profiles), 3.0), layout="constrained")
    FigureCanvasAgg(fig)
    draw_profiles(fig, profiles, unit, f_max, kT)
    return fig


def draw_profiles(fig, profiles, unit, f_max, kT=None) -> None:
    """:func:`profile_figure`'s panels drawn into ``fig`` (a Figure or SubFigure)."""
    axes = fig.subplots(1, len(profiles), squeeze=False)[0]
    for ax, (name, model, ref, exact) in zip(axes, profiles, strict=True):
        ax.fill_between(
            model.centers,
            model.lo,
            model.hi,
            color=_MODEL,
            alpha=0.3,
            lw=0,
            label="90 % bootstrap band",
        )
        ax.plot(model.centers, model.F, color=_MODEL, lw=1.4, label="reweighted model")
        if ref is not None:
            ax.plot(ref.centers, ref.F, color=_REF, lw=1.0, ls="--", label="reference")
        if exact is not None:
            ax.plot(*exact, color=_REF, lw=1.0, ls="--", label="exact")
        ax.set_ylim(-0.05 * f_max, f_max)
        ax.set_xlabel(name)
        ax.set_ylabel(f"F ({unit})")
        if kT is not None and unit != "kT":
            ax.secondary_yaxis(
                "right", functions=(lambda f, c=kT: f / c, lambda t, c=kT: t * c)
            ).set_ylabel("F (kT)")
        ax.legend(fontsize="small")


def surface_and_profiles_figure(
    edges: tuple[np.ndarray, np.ndarray],
    panels: Sequence[tuple[str, np.ndarray]],
    names: tuple[str, str],
    profiles: Sequence,
    unit: str,
    f_max: float,
    kT: float | None = None,
    title: str = "",
) -> Figure:
    """:func:`surface_figure` above :func:`profile_figure` in one figure (the evaluation's
    per-residue free-energy figure)."""
    width = 4.4 * max(len(panels), len(profiles))
    fig = Figure(figsize=(width, 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=(3.8, 3.0))
    draw_surfaces(top, edges, panels, names, unit, f_max)
    draw_profiles(bottom, profiles, unit, f_max, kT)
    if title:
        fig.suptitle(title)
    return fig


def ladder_figure(records: Sequence[Mapping], checkpoints: Sequence[Mapping]) -> Figure:
    """beta against the update step (metrics.jsonl's records), a dot per checkpoint."""
    fig, (ax,) = _figure(1, (6.5, 2.6))
    step = np.array([r["step"] for r in records], dtype=float)
    beta = np.array([r["beta"] for r in records], dtype=float)
    ax.plot(step, beta, color="tab:green", lw=1.0)
    ax.plot(  # a checkpoint's step counts the updates done: its last one is step - 1
        [c["step"] - 1 for c in checkpoints],
        [c["beta"] for c in checkpoints],
        "o",
        color="tab:green",
        ms=4,
        label="checkpoint",
    )
    if np.all(beta > 0) and beta.size and beta.max() / beta.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("update step")
    ax.set_ylabel("beta")
    ax.legend(fontsize="small")
    return fig


def exact_curve(
    log_density: Callable[[np.ndarray], np.ndarray],
    span: tuple[float, float],
    kT: float,
    n: int = 400,
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, F = -kT log p on it, zero at its minimum) of an exact log density."""
    grid = np.linspace(*span, n)
    F = -kT * np.asarray(log_density(grid), dtype=np.float64)
    return grid, F - np.nanmin(F[np.isfinite(F)])
