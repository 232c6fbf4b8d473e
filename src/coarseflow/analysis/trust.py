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
from typing import NamedTuple

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
    if _finite(pareto_k):
        facts += f", Pareto k {pareto_k:.2f} (threshold {thr:.2f})"
    if _finite(max_ratio):
        facts += f", largest weight {max_ratio:.1f}x the mean"
    if not _finite(pareto_k):
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
