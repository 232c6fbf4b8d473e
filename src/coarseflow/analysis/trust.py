"""Whether reweighted numbers can be trusted: one plain sentence from the importance weights'
diagnostics (ESS, Pareto k, the largest weight, the non-finite ones).

Pareto k alone misfires on nearly equal weights: a bulk of equal weights with a few twice as
large is, to a generalised Pareto fit of the largest M, a heavy tail (k 1.1-2.7 for 0.5-5 % of
1000 weights doubled, arviz's PSIS agreeing to 1e-3, tests/test_trust.py), yet no sample can move
a self-normalised estimate by more than its weight. So a large k with a small largest weight is
said as what it is: a tail shape the sample cannot settle, not a broken estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

# a largest weight up to this many times the mean moves any self-normalised mean by at most
# MAX_RATIO / N of its range: 1 % at N = 1000
MAX_RATIO = 10.0
LOW_ESS = 100.0  # below this many effective samples the intervals are wide


def k_threshold(n: int) -> float:
    """PSIS's sample-size-dependent bound on k: min(1 - 1 / log10(n), 0.7) (Vehtari et al.,
    JMLR 2024); above it the error of a self-normalised estimate falls too slowly to use."""
    return min(1.0 - 1.0 / math.log10(n), 0.7) if n > 10 else 0.0


class Verdict(NamedTuple):
    """level: "good", "noisy", "tail" (k high, weights bounded in the sample) or "bad";
    sentence: what it means for the reweighted numbers, in words."""

    level: str
    sentence: str


def _finite(v) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def weight_verdict(
    n: int,
    ess: float,
    pareto_k: float | None,
    max_ratio: float | None,
    n_nonfinite: int = 0,
) -> Verdict:
    """The verdict on ``n`` samples' importance weights: Kish ``ess`` (a count), ``pareto_k``
    (metrics.pareto_k; None / NaN: not fitted), ``max_ratio`` (metrics.max_weight_ratio) and
    ``n_nonfinite`` log-weights that were not finite (zero weight)."""
    thr = k_threshold(n)
    pct = 100.0 * ess / n if n else 0.0
    facts = f"ESS {ess:.0f} of {n} ({pct:.1f} %)"
    unfitted = pareto_k is None or math.isnan(pareto_k)  # inf: fitted, no tail (metrics)
    if not unfitted:
        facts += f", Pareto k {pareto_k:.2f} (threshold {thr:.2f})"
    if _finite(max_ratio):
        facts += f", largest weight {max_ratio:.1f}x the mean"
    if unfitted:
        level, words = (
            "bad",
            "too few finite weights to judge their tail: treat the reweighted numbers as "
            "unchecked.",
        )
    elif pareto_k <= thr and ess >= LOW_ESS:
        level, words = (
            "good",
            "the weights are well behaved: the reweighted numbers can be trusted within the "
            "intervals shown.",
        )
    elif pareto_k <= thr:
        level, words = (
            "noisy",
            "the weights' tail is fine but few samples count: the reweighted numbers are "
            "unbiased but noisy; trust them only within their (wide) intervals.",
        )
    elif _finite(max_ratio) and max_ratio <= MAX_RATIO:
        level, words = (
            "tail",
            "the tail fit calls the weights heavy-tailed, but no sample weighs more than "
            f"{MAX_RATIO:g}x the mean, so none dominates: the reweighted numbers are fine at "
            "this sample size unless q misses a region p visits, which more samples would show.",
        )
    else:
        level, words = (
            "bad",
            "a few samples carry most of the weight: the reweighted numbers (and their "
            "intervals) are not reliable; train longer or on a finer ladder.",
        )
    sentence = f"{facts}: {words}"
    if n_nonfinite:
        sentence += (
            f" {n_nonfinite} of {n} log-weights were not finite and count as zero weight"
            " (an infinite energy, or a sample outside the conditional's domain)."
        )
    return Verdict(level, sentence)


# the levels at which reweighted numbers must not be read without a warning beside them: "tail"
# is left out, since no sample then moves an estimate by more than MAX_RATIO / N
WARN_LEVELS = ("bad", "noisy")


def entry_verdict(entry: Mapping) -> Verdict:
    """The verdict of one evaluated checkpoint's diagnostics as summary.json stores them
    (n_samples, ess, pareto_k, max_weight_ratio, n_nonfinite_log_weights)."""
    return weight_verdict(
        int(entry["n_samples"]),
        float(entry["ess"]),
        entry.get("pareto_k"),
        entry.get("max_weight_ratio"),
        int(entry.get("n_nonfinite_log_weights") or 0),
    )


def log_weight_verdict(log_weights) -> Verdict:
    """The verdict of log importance weights (N,) (non-finite ones count as zero weight)."""
    from coarseflow.analysis import metrics  # metrics imports jax: only where weights are given

    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    return weight_verdict(
        int(lw.size),
        float(metrics.ess(lw)),
        metrics.pareto_k(lw),
        metrics.max_weight_ratio(lw),
        int(np.sum(~np.isfinite(lw))),
    )


def warning_line(verdict: Verdict) -> str | None:
    """One line to print beside reweighted numbers when the weights make them untrustworthy
    (level in WARN_LEVELS); None when they can be read as they are."""
    if verdict.level not in WARN_LEVELS:
        return None
    return f"WARNING: do not trust the reweighted numbers as they are. {verdict.sentence}"


def entry_warning(entry: Mapping) -> str | None:
    """:func:`warning_line` of a summary.json entry; None where it lacks the diagnostics."""
    if not isinstance(entry, Mapping) or "ess" not in entry or "n_samples" not in entry:
        return None
    return warning_line(entry_verdict(entry))
