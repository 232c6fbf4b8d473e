"""Free energies from weighted samples: 1D profiles with bootstrap bands, 2D surfaces, state
populations and free-energy differences with bootstrap intervals.

Every function takes samples (N,) or (N, 2) and non-negative weights (N,) (normalised or not:
importance weights, or None for equal ones) and returns NumPy arrays. Free energies are
F = -kT log p in the units of ``kT`` (kJ/mol for a molecule, k_B T of the target otherwise),
zero at the lowest bin / the most populated state. NumPy only, analysis time.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike, Float

N_BOOTSTRAP = 200  # resamples: the 5 % / 95 % quantiles settle to about +-10 % of their width
LEVEL = 0.9  # the bands' and intervals' coverage


def _weights(weights, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights: expected {n} finite non-negative weights with a positive sum")
    return w


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) sample indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _band(replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LEVEL interval (lo, hi) over axis 0 of bootstrap replicates, NaN ignored; NaN where
    no replicate has a value (nanpercentile's warning for that case is the expected answer)."""
    tail = 100 * (1 - LEVEL) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (
            np.nanpercentile(replicates, tail, axis=0),
            np.nanpercentile(replicates, 100 - tail, axis=0),
        )


def _free_energy(p: np.ndarray, kT: float) -> np.ndarray:
    """-kT log p, NaN where p = 0 (no sample there: unknown, not infinite) and where p is not
    finite (a ratio to a state the samples missed)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = -kT * np.log(p)
    return np.where((p > 0) & np.isfinite(p), f, np.nan)


class Profile(NamedTuple):
    """A 1D free-energy profile: bin centres (B,), F (B,) and its band (lo, hi) (B,), all NaN
    where a bin holds no sample; F is zero at its minimum."""

    centers: np.ndarray
    F: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def profile_1d(
    values: Float[ArrayLike, " N"],
    weights: Float[ArrayLike, " N"] | None,
    edges: Float[ArrayLike, " B+1"],
    kT: float = 1.0,
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> Profile:
    """F(s) = -kT log p(s) of the weighted histogram of ``values`` on ``edges`` (a density: bin
    widths divided out), with a ``LEVEL`` bootstrap band (samples resampled with their weights,
    each replicate normalised as a whole, so the band shows how far each bin could move).
    Samples outside the edges are left out."""
    s = np.asarray(values, dtype=np.float64).reshape(-1)
    w = _weights(weights, s.size)
    edges = np.asarray(edges, dtype=np.float64)
    widths = np.diff(edges)
    inside = np.isfinite(s) & (s >= edges[0]) & (s <= edges[-1])
    bins = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, widths.size - 1)
    w_in = np.where(inside, w, 0.0)

    def density(idx):
        mass = np.bincount(bins[idx], weights=w_in[idx], minlength=widths.size)
        return mass / (mass.sum() * widths) if mass.sum() > 0 else np.zeros_like(widths)

    F = _free_energy(density(np.arange(s.size)), kT)
    shift = np.nanmin(F) if np.any(np.isfinite(F)) else 0.0
    if n_boot == 0:  # no band asked for (a reference's profile)
        return Profile(0.5 * (edges[1:] + edges[:-1]), F - shift, F - shift, F - shift)
    boot = np.array(
        [_free_energy(density(i), kT) for i in _bootstrap_indices(s.size, n_boot, seed)]
    )
    # a bin empty in some replicates has no finite F there: its band comes from the others
    lo, hi = _band(boot)
    return Profile(0.5 * (edges[1:] + edges[:-1]), F - shift, lo - shift, hi - shift)


def surface_2d(
    values: Float[ArrayLike, "N 2"],
    weights: Float[ArrayLike, " N"] | None,
    edges: tuple[Float[ArrayLike, " B+1"], Float[ArrayLike, " C+1"]],
    kT: float = 1.0,
) -> np.ndarray:
    """F(a, b) = -kT log p(a, b) (B, C) of the weighted 2D histogram; zero at its minimum, NaN
    in empty bins."""
    v = np.asarray(values, dtype=np.float64)
    w = _weights(weights, v.shape[0])
    h, xe, ye = np.histogram2d(v[:, 0], v[:, 1], bins=edges, weights=w)
    area = np.diff(xe)[:, None] * np.diff(ye)[None, :]
    F = _free_energy(h / (h.sum() * area), kT) if h.sum() > 0 else np.full(h.shape, np.nan)
    return F - np.nanmin(F) if np.any(np.isfinite(F)) else F


def surface_band(
    values: Float[ArrayLike, "N 2"],
    weights: Float[ArrayLike, " N"] | None,
    edges: tuple[Float[ArrayLike, " B+1"], Float[ArrayLike, " C+1"]],
    kT: float = 1.0,
    *,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``LEVEL`` bootstrap band (lo, hi) (B, C) of :func:`surface_2d`: samples resampled
    with their weights, each replicate's F shifted by the full sample's shift (zero at the
    minimum), so hi - lo is how far each bin's F could move. NaN where no replicate has the
    bin."""
    v = np.asarray(values, dtype=np.float64)
    w = _weights(weights, v.shape[0])
    h, xe, ye = np.histogram2d(v[:, 0], v[:, 1], bins=edges, weights=w)
    area = np.diff(xe)[:, None] * np.diff(ye)[None, :]
    if h.sum() <= 0:
        nan = np.full(h.shape, np.nan)
        return nan, nan
    F = _free_energy(h / (h.sum() * area), kT)
    shift = np.nanmin(F)
    boot = []
    for idx in _bootstrap_indices(v.shape[0], n_boot, seed):
        hb = np.histogram2d(v[idx, 0], v[idx, 1], bins=edges, weights=w[idx])[0]
        boot.append(_free_energy(hb / (hb.sum() * area), kT) if hb.sum() > 0 else h * np.nan)
    lo, hi = _band(np.array(boot))
    return lo - shift, hi - shift


class Populations(NamedTuple):
    """State populations (S,) and free energies dF (S,) relative to the most populated state,
    each with its ``LEVEL`` bootstrap interval (lo, hi) (S,)."""

    p: np.ndarray
    p_lo: np.ndarray
    p_hi: np.ndarray
    dF: np.ndarray
    dF_lo: np.ndarray
    dF_hi: np.ndarray


def populations(
    labels: ArrayLike,
    n_states: int,
    weights: Float[ArrayLike, " N"] | None,
    kT: float = 1.0,
    *,
    ref_state: int | None = None,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> Populations:
    """Weighted fraction of the samples in each state 0..n_states-1 and dF_i = -kT log(p_i /
    p_ref) (ref: ``ref_state``, by default the most populated state; give it to compare dF with
    another estimate's on one footing), with bootstrap intervals. A state no replicate visits has
    dF = NaN (at least the interval's upper end is then unknown), and so has every state when
    the samples miss the ref state."""
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    w = _weights(weights, lab.size)

    def pops(idx):
        mass = np.bincount(lab[idx], weights=w[idx], minlength=n_states)
        return mass / mass.sum()

    p = pops(np.arange(lab.size))
    ref = int(np.argmax(p)) if ref_state is None else int(ref_state)
    boot = np.array([pops(i) for i in _bootstrap_indices(lab.size, n_boot, seed)])
    with np.errstate(divide="ignore", invalid="ignore"):  # samples without the ref state
        dF = _free_energy(p / p[ref], kT)
        dF_boot = _free_energy(boot / boot[:, ref : ref + 1], kT)
    return Populations(p, *_band(boot), dF, *_band(dF_boot))
