"""A report panel's free energies (reports.Panel): the surface on its first two variables
(the reweighted model, the exact or reference surface, the bootstrap band's width) and a profile
of each variable with its band; drawn for the HTML report and the evaluation's figures.

F = -kT log p in the units of ``kT`` (kJ/mol for a molecule), zero at the minimum.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from coarseflow.analysis import free_energy as fe
from coarseflow.analysis import free_energy_plots as fplots
from coarseflow.analysis.reports import Panel, Variable

PROFILE_BINS = 60
SURFACE_BINS = 50


def usable(variables: list[Variable], w: np.ndarray) -> np.ndarray:
    """(N,) bool: samples with a positive weight and every variable finite."""
    ok = np.asarray(w) > 0
    for v in variables:
        ok &= np.isfinite(v.values)
    return ok


def surfaces(
    a: Variable,
    b: Variable,
    ok: np.ndarray,
    w: np.ndarray,
    kT: float,
    exact_2d: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    band: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[str, np.ndarray]]]:
    """(edges, [(title, F (B, C))]): the reweighted model's surface of (a, b), the exact one
    (``exact_2d``: points (M, 2) -> log p) or the reference samples' where known, and with
    ``band`` the width hi - lo of the model's 90 % bootstrap band in each bin."""
    edges = (np.linspace(*a.range, SURFACE_BINS + 1), np.linspace(*b.range, SURFACE_BINS + 1))
    values = np.stack([a.values, b.values], 1)[ok]
    panels = [("reweighted model", fe.surface_2d(values, w[ok], edges, kT))]
    if exact_2d is not None:
        cx, cy = (0.5 * (e[1:] + e[:-1]) for e in edges)
        g = np.stack(np.meshgrid(cx, cy, indexing="ij"), -1).reshape(-1, 2)
        F = -kT * np.asarray(exact_2d(g), dtype=np.float64).reshape(cx.size, cy.size)
        panels.append(("exact", F - np.nanmin(F)))
    elif a.reference is not None and b.reference is not None:
        ref = np.stack([a.reference, b.reference], 1)
        panels.append(("reference", fe.surface_2d(ref, None, edges, kT)))
    if band:
        lo, hi = fe.surface_band(values, w[ok], edges, kT)
        panels.append((f"{fe.LEVEL:.0%} bootstrap band width".replace("%", " %"), hi - lo))
    return edges, panels


def profiles(variables: list[Variable], ok: np.ndarray, w: np.ndarray, kT: float) -> list:
    """[(name, model Profile with its band, reference Profile or None, exact curve or None)]."""
    out = []
    for v in variables:
        edges = np.linspace(*v.range, PROFILE_BINS + 1)
        prof = fe.profile_1d(v.values[ok], w[ok], edges, kT)
        ref = None if v.reference is None else fe.profile_1d(v.reference, None, edges, kT, n_boot=0)
        exact = None
        if v.exact_log_density is not None:
            exact = fplots.exact_curve(v.exact_log_density, v.range, kT)
        out.append((v.name, prof, ref, exact))
    return out


def panel_figures(
    panel: Panel,
    w: np.ndarray,
    kT: float,
    unit: str,
    exact_2d: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[Figure | None, Figure | None]:
    """(surface figure or None (fewer than two variables), profile figure or None (no usable
    sample)) of ``panel`` under weights w (N,); ``kT`` in ``unit``."""
    ok = usable(panel.variables, w)
    if not ok.any() or not panel.variables:
        return None, None
    f_max = fplots.F_MAX * kT
    surface = None
    if len(panel.variables) >= 2:
        a, b = panel.variables[:2]
        edges, panels = surfaces(a, b, ok, w, kT, exact_2d)
        surface = fplots.surface_figure(edges, panels, (a.name, b.name), unit, f_max)
    profs = profiles(panel.variables, ok, w, kT)
    return surface, fplots.profile_figure(profs, unit, f_max, kT)


def panel_figure(panel: Panel, w: np.ndarray, kT: float, unit: str) -> Figure | None:
    """The surface above the profiles in one figure (None: no usable sample or fewer than two
    variables); titled with the panel's title."""
    ok = usable(panel.variables, w)
    if not ok.any() or len(panel.variables) < 2:
        return None
    a, b = panel.variables[:2]
    edges, panels = surfaces(a, b, ok, w, kT)
    profs = profiles(panel.variables, ok, w, kT)
    f_max = fplots.F_MAX * kT
    return fplots.surface_and_profiles_figure(
        edges, panels, (a.name, b.name), profs, unit, f_max, kT, panel.title
    )
