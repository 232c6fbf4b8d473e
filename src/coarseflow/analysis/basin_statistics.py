"""One residue's Ramachandran basin populations and free-energy differences: raw and reweighted
with bootstrap intervals, against reference frames where there are some.

Arrays in, numbers out (NumPy); the basins are the residue class's (analysis/ramachandran.py).
Free energies are dF_i = -kT log(p_i / p_anchor) in the units of ``kT`` (kJ/mol for a
molecule), all relative to one anchor basin so that model and reference compare on one footing:
the reference's most populated basin where there is a reference, else the reweighted estimate's
(else the raw one's).

A ``coarseflow reference`` file's populations carry errors from its independent ladders and
time blocks (:func:`reference_populations`, the one rule for every residue).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike, Float

from coarseflow.analysis import free_energy as fe
from coarseflow.analysis.ramachandran import BasinSet

N_BLOCKS = 10
"""Time blocks of the block error for a reference file that does not name its own (the default
of ``[reference] n_blocks``)."""


class ReferencePopulations(NamedTuple):
    """One residue's populations in a reference run, each (S,) over a basin set's names:
    ``populations`` (fractions of all frames), ``err_chains`` (std over the C ladders'
    populations / sqrt(C); NaN for C = 1), ``err_blocks`` (std over n_blocks contiguous time
    blocks, ladders pooled, / sqrt(n_blocks)) and ``err`` (the larger; the quoted error)."""

    populations: np.ndarray
    err_chains: np.ndarray
    err_blocks: np.ndarray
    err: np.ndarray


def reference_populations(
    basins: BasinSet,
    phi: Float[ArrayLike, " frames"],
    psi: Float[ArrayLike, " frames"],
    chain: ArrayLike,
    n_blocks: int = N_BLOCKS,
) -> ReferencePopulations:
    """Populations of one residue's reference frames in ``basins`` and their standard errors.

    ``phi``, ``psi``: (frames,) radians; ``chain``: (frames,) each frame's ladder, in the
    time-major order ``coarseflow reference`` writes (frame k C + c is ladder c at record k,
    ladders 0..C-1 at every record); ``n_blocks``: 2 to the number of records. The C ladders
    are independent runs, so their spread is one error; the time blocks catch drifts that every
    ladder shares; the larger of the two is quoted (docs/reference.md, "Uncertainties").
    """
    labels = basins.labels(phi, psi).reshape(-1)
    chain = np.asarray(chain).reshape(-1)
    if chain.shape != labels.shape:
        raise ValueError(f"chain: expected {labels.size} frames as phi, psi, got {chain.size}")
    by_record = labels.reshape(-1, _n_ladders(chain))  # (records, C)
    n_records, n_ladders = by_record.shape
    if not 2 <= n_blocks <= n_records:
        raise ValueError(f"n_blocks: expected 2 to the {n_records} records, got {n_blocks}")
    n_names = len(basins.names)

    def fractions(groups) -> np.ndarray:  # (len(groups), S): each group's populations
        return np.stack([np.bincount(g.reshape(-1), minlength=n_names) / g.size for g in groups])

    def stderr(groups) -> np.ndarray:
        return fractions(groups).std(axis=0, ddof=1) / np.sqrt(len(groups))

    err_chains = stderr(by_record.T) if n_ladders > 1 else np.full(n_names, np.nan)
    err_blocks = stderr(np.array_split(by_record, n_blocks))
    return ReferencePopulations(
        fractions([labels])[0], err_chains, err_blocks, np.fmax(err_chains, err_blocks)
    )


def _n_ladders(chain: np.ndarray) -> int:
    """C of a time-major ``chain`` (frames,); a ValueError saying so where it is not."""
    n_ladders = int(chain.max()) + 1 if chain.size else 0
    whole = n_ladders > 0 and chain.size % n_ladders == 0  # every record has every ladder
    if not (whole and np.array_equal(chain, np.arange(chain.size) % n_ladders)):
        raise ValueError(
            "chain: expected time-major frames, frame k C + c being ladder c at record k "
            "(ladders 0..C-1 at every record, as coarseflow reference writes them)"
        )
    return n_ladders


class ResidueBasins(NamedTuple):
    """The basins of one residue. ``names`` (S,) are the basin set's (basins, then "other");
    ``raw`` / ``reweighted``: free_energy.Populations (p, dF and their ``fe.LEVEL`` bootstrap
    intervals, (S,) each; reweighted None without weights), ``reweighted_err`` (S,): the
    analytic standard error of the reweighted p; ``reference`` (S,) populations of the
    reference frames, ``reference_err`` (S,) their errors where the file gives them,
    ``reference_dF`` (S,) and ``reference_dF_err`` (S,) (None where absent); ``anchor``: the
    index of the basin every dF is relative to; ``kT`` in the dF's unit."""

    residue: str
    kind: str
    names: tuple[str, ...]
    raw: fe.Populations
    reweighted: fe.Populations | None
    reweighted_err: np.ndarray | None
    reference: np.ndarray | None
    reference_err: np.ndarray | None
    reference_dF: np.ndarray | None
    reference_dF_err: np.ndarray | None
    anchor: int
    kT: float


def residue_basins(
    residue: str,
    basins: BasinSet,
    phi: Float[ArrayLike, " N"],
    psi: Float[ArrayLike, " N"],
    weights: Float[ArrayLike, " N"] | None,
    kT: float,
    *,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    reference_err: Float[ArrayLike, " S"] | None = None,
    n_boot: int = fe.N_BOOTSTRAP,
    seed: int = 0,
) -> ResidueBasins:
    """Populations and dF of the residue ``residue`` in the basins of ``basins``.

    ``phi``, ``psi``: (N,) radians, all finite; ``weights``: (N,) importance weights (any
    normalisation; None: no reweighted numbers); ``reference``: (phi (M,), psi (M,)) radians of
    reference frames, equally weighted; ``reference_err``: (S,) standard errors of the
    reference populations (S = len(basins.names)). The bootstrap resamples the N samples
    (``n_boot`` times, ``seed``); the reference frames are correlated in time, so no bootstrap
    is made of them: their errors are the file's or none.
    """
    names = basins.names
    labels = basins.labels(phi, psi).reshape(-1)
    ref_p = ref_err = ref_dF = ref_dF_err = None
    if reference is not None:
        ref_p = basins.populations(*reference)
        anchor = int(np.argmax(ref_p))
    elif weights is not None:
        anchor = int(np.argmax(basins.populations(phi, psi, weights)))
    else:
        anchor = int(np.argmax(np.bincount(labels, minlength=len(names))))

    def pops(w):
        return fe.populations(labels, len(names), w, kT, ref_state=anchor, n_boot=n_boot, seed=seed)

    raw = pops(None)
    reweighted = reweighted_err = None
    if weights is not None:
        reweighted = pops(weights)
        reweighted_err = basins.population_errors(phi, psi, weights)
    if ref_p is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = ref_p / ref_p[anchor]
            ref_dF = np.where(ratio > 0, -kT * np.log(ratio), np.nan)
        if reference_err is not None:
            ref_err = np.asarray(reference_err, dtype=np.float64).reshape(-1)
            if ref_err.shape != (len(names),):
                raise ValueError(f"reference_err: expected {len(names)} errors")
            # first-order propagation of the two populations' errors into -kT log(p_i / p_a)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = (ref_err / ref_p) ** 2 + (ref_err[anchor] / ref_p[anchor]) ** 2
            ref_dF_err = np.where(np.arange(len(names)) == anchor, 0.0, kT * np.sqrt(rel))
    return ResidueBasins(
        residue,
        basins.kind,
        names,
        raw,
        reweighted,
        reweighted_err,
        ref_p,
        ref_err,
        ref_dF,
        ref_dF_err,
        anchor,
        float(kT),
    )


def reference_inside(rb: ResidueBasins) -> np.ndarray | None:
    """(S,) bool: whether each reference dF lies in the reweighted dF's interval, widened by
    the reference's own error where known (None without a reference or weights; False where
    either is unknown)."""
    if rb.reference_dF is None or rb.reweighted is None:
        return None
    err = np.zeros(len(rb.names)) if rb.reference_dF_err is None else rb.reference_dF_err
    err = np.nan_to_num(err, nan=0.0)
    lo, hi = rb.reweighted.dF_lo - err, rb.reweighted.dF_hi + err
    with np.errstate(invalid="ignore"):
        return (lo <= rb.reference_dF) & (rb.reference_dF <= hi)


def _f(v) -> float | None:
    """A plain float, None for NaN / inf (summary.json is strict JSON)."""
    v = float(v)
    return v if math.isfinite(v) else None


def as_dict(rb: ResidueBasins, unit: str = "kJ/mol") -> dict:
    """summary.json's record of one residue: residue, class, unit, kT, level, dF_relative_to
    and per basin raw / reweighted populations with their intervals (``_lo``, ``_hi``) and
    dF (``dF_raw``, ``dF_reweighted`` with its interval), the reference's where known.
    Unknown numbers are None."""
    inside = reference_inside(rb)
    per_basin = {}
    for i, name in enumerate(rb.names):
        row = {
            "raw": _f(rb.raw.p[i]),
            "raw_lo": _f(rb.raw.p_lo[i]),
            "raw_hi": _f(rb.raw.p_hi[i]),
            "dF_raw": _f(rb.raw.dF[i]),
        }
        if rb.reweighted is not None:
            row |= {
                "reweighted": _f(rb.reweighted.p[i]),
                "reweighted_err": _f(rb.reweighted_err[i]),
                "reweighted_lo": _f(rb.reweighted.p_lo[i]),
                "reweighted_hi": _f(rb.reweighted.p_hi[i]),
                "dF_reweighted": _f(rb.reweighted.dF[i]),
                "dF_reweighted_lo": _f(rb.reweighted.dF_lo[i]),
                "dF_reweighted_hi": _f(rb.reweighted.dF_hi[i]),
            }
        if rb.reference is not None:
            row |= {"reference": _f(rb.reference[i]), "dF_reference": _f(rb.reference_dF[i])}
            if rb.reference_err is not None:
                row["reference_err"] = _f(rb.reference_err[i])
                row["dF_reference_err"] = _f(rb.reference_dF_err[i])
            if inside is not None:
                row["dF_reference_inside"] = bool(inside[i])
        per_basin[name] = row
    return {
        "residue": rb.residue,
        "class": rb.kind,
        "unit": unit,
        "kT": rb.kT,
        "level": fe.LEVEL,
        "dF_relative_to": rb.names[rb.anchor],
        "basins": per_basin,
    }


def _n(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v + 0.0:.{digits}g}"


def summary_lines(records) -> list[str]:
    """Lines for a terminal of summary.json's ``ramachandran_basins`` records (as_dict's): per
    residue a header, then per basin the reweighted population and dF with their intervals
    (the raw ones without weights) and the reference's where known."""
    lines = []
    for rec in records or ():
        lines.append(
            f"  {rec['residue']} ({rec['class']} residue basins): populations and dF "
            f"({rec['unit']}, kT = {_n(rec['kT'])}) relative to {rec['dF_relative_to']}, "
            f"{rec['level']:.0%} bootstrap intervals".replace("%", " %")
        )
        for name, b in rec["basins"].items():
            # reweighted where there were weights, else the raw samples' (said so)
            kind = "reweighted" if "reweighted" in b else "raw"
            line = (
                f"    {name:10s} p {_n(b[kind])} [{_n(b[kind + '_lo'])}, {_n(b[kind + '_hi'])}]"
                f"  dF {_n(b['dF_' + kind])}"
            )
            if kind == "reweighted":
                line += f" [{_n(b['dF_reweighted_lo'])}, {_n(b['dF_reweighted_hi'])}]"
            else:
                line += " (raw samples)"
            if "reference" in b:
                line += f"  reference p {_n(b['reference'])} dF {_n(b['dF_reference'])}"
            lines.append(line)
    return lines
