"""Sample-quality metrics: importance weights, ESS, histogram distances, mode masses, KL.

The importance-weight functions (``normalized_weights``, ``ess``, ``ess_fraction``,
``log_mean_exp``, ``kl_from_log_densities``) are pure JAX: they jit, vmap and accept traced
arrays, and they return JAX scalars/arrays. The histogram functions are NumPy (concrete data,
analysis time) and return Python floats / NumPy arrays. All weights are over the last axis of a
1D array of per-sample values; -inf log-weights are allowed (zero weight).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

# ---- importance weights (JAX) ----


def normalized_weights(log_w: Float[ArrayLike, " N"]) -> Float[Array, " N"]:
    """Self-normalised importance weights w_i = exp(log_w_i) / sum_j exp(log_w_j) (sum 1)."""
    return jax.nn.softmax(jnp.asarray(log_w), axis=-1)


def log_mean_exp(a: Float[ArrayLike, " N"]) -> Float[Array, ""]:
    """log( (1/N) sum_i exp(a_i) ), computed stably."""
    a = jnp.asarray(a)
    return jax.nn.logsumexp(a, axis=-1) - jnp.log(a.shape[-1])


def ess(log_w: Float[ArrayLike, " N"]) -> Float[Array, ""]:
    """Kish effective sample size 1 / sum_i w_i^2 of the normalised weights (a count in [1, N]).

    Computed as exp(2 logsumexp(log_w) - logsumexp(2 log_w)), so it is invariant to adding a
    constant to every log-weight and never overflows.
    """
    log_w = jnp.asarray(log_w)
    return jnp.exp(2.0 * jax.nn.logsumexp(log_w, axis=-1) - jax.nn.logsumexp(2.0 * log_w, axis=-1))


def ess_fraction(log_w: Float[ArrayLike, " N"]) -> Float[Array, ""]:
    """ESS / N, in [1/N, 1]; 1 means the proposal equals the target (all weights equal)."""
    log_w = jnp.asarray(log_w)
    return ess(log_w) / log_w.shape[-1]


def kl_from_log_densities(
    log_q: Float[ArrayLike, " N"],
    log_p: Float[ArrayLike, " N"],
    *,
    normalize: bool = False,
) -> Float[Array, ""]:
    """Monte Carlo estimate of the reverse KL(q || p) = E_q[log q - log p] from samples of q.

    ``log_q`` and ``log_p`` are the two log-densities evaluated at the same samples x_i ~ q;
    ``log_q`` must be normalised. If ``log_p`` is normalised, leave ``normalize=False``: the
    estimate is mean(log_q - log_p) (unbiased). If ``log_p`` is only known up to a constant
    (e.g. -beta u(x)), pass ``normalize=True``: log Z_p is estimated by importance sampling,
    log Z_hat = log_mean_exp(log_p - log_q), and the estimate is
    mean(log_q - log_p) + log Z_hat. That estimate is >= 0 by Jensen's inequality, consistent,
    and biased low for finite N (log Z_hat is biased low); with poor overlap it can be far too low,
    so read it together with ``ess``.
    """
    log_q, log_p = jnp.asarray(log_q), jnp.asarray(log_p)
    kl = jnp.mean(log_q - log_p, axis=-1)
    if normalize:
        kl = kl + log_mean_exp(log_p - log_q)
    return kl


def pareto_k(log_w: Float[ArrayLike, " N"]) -> float:
    """Shape k of a generalised Pareto fit to the largest importance weights: how heavy their
    right tail is, the reliability diagnostic of Pareto-smoothed importance sampling (Vehtari,
    Simpson, Gelman, Yao and Gabry, JMLR 2024).

    The weights' variance is finite for k < 1/2 and their mean for k < 1. Below 0.7,
    self-normalised estimates converge at a practical rate; above it, the largest weights are
    luck, the ESS overstates what the sample is worth and reweighted estimates can be far off
    however large they look. Fitted to the M = ceil(min(N / 5, 3 sqrt(N))) largest finite weights
    (PSIS's tail length) in excess of the next one, by Zhang and Stephens' (Technometrics 2009)
    posterior-mean estimate of b = k / sigma, then k = mean(log(1 + b x)) shrunk toward 1/2 as
    if 10 more points said so: PSIS's estimate (arviz's psislw agrees to 1e-12 on continuous
    weights, tests/test_trust.py). 0 where every excess weight is equal (arviz: inf); inf where
    a quarter of the tail ties at its threshold (a few weights over a flat bulk). NaN with
    fewer than 25 finite weights (too few to fit a tail). NumPy, not traced.
    """
    lw = np.asarray(log_w, dtype=np.float64)
    lw = np.sort(lw[np.isfinite(lw)])
    n = lw.size
    if n < 25:
        return float("nan")
    m = int(np.ceil(min(n / 5, 3 * np.sqrt(n))))
    w = np.exp(lw - lw[-1])
    x = w[-m:] - w[-m - 1]  # exceedances over the threshold, ascending
    if x[-1] <= 0:  # the tail is flat: every excess weight equal
        return 0.0
    # candidate b on Zhang and Stephens' grid (b < 1 / max(x) keeps 1 + b x > 0)
    n_grid = 30 + int(np.sqrt(m))
    quartile = x[int(m / 4 + 0.5) - 1]
    if quartile <= 0:  # a quarter of the tail ties at the threshold: a few weights over a
        return float("inf")  # flat bulk, no tail to fit (Zhang-Stephens' grid divides by it)
    j = np.arange(1, n_grid + 1)
    b = -(1 / x[-1] + (1 - np.sqrt(n_grid / (j - 0.5))) / (3 * quartile))
    k_of_b = np.mean(np.log1p(b[:, None] * x[None, :]), axis=1)
    profile = m * (np.log(b / k_of_b) - k_of_b - 1)  # log-likelihood with k maximised out
    posterior = np.exp(profile - profile.max())
    b_hat = np.sum(b * posterior) / np.sum(posterior)
    k = np.mean(np.log1p(b_hat * x))
    return float((m * k + 10 * 0.5) / (m + 10))


def weighted_mean_stderr(values: ArrayLike, weights: Float[ArrayLike, " N"]) -> np.ndarray:
    """Standard error of the self-normalised importance-sampling mean sum_i w_i f_i / sum_i w_i,
    by the delta method: sqrt(sum_i wn_i^2 (f_i - mean)^2), wn = w / sum(w).

    ``values``: (N,) or (N, k) per-sample f (an indicator gives a population's error);
    ``weights``: (N,) non-negative. With equal weights this is the population standard
    deviation of f over sqrt(N). It is the large-sample error; where the weights are heavy-tailed
    (Pareto k > 0.7) it understates. NumPy, not traced.
    """
    f = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    wn = (w / w.sum()).reshape((-1,) + (1,) * (f.ndim - 1))
    mean = np.sum(wn * f, axis=0)
    return np.sqrt(np.sum(wn**2 * (f - mean) ** 2, axis=0))


def weighted_proportion_stderr(indicator: ArrayLike, weights: Float[ArrayLike, " N"]) -> np.ndarray:
    """Standard error of self-normalised importance-sampling proportions (a basin's
    population): :func:`weighted_mean_stderr` of the 0 / 1 ``indicator`` (N,) or (N, k), but
    never below sqrt(p0 (1 - p0) / n_eff) with p0 = 1 / (2 n_eff), n_eff = (sum w)^2 / sum w^2.

    The delta method says 0 +- 0 for a state that no weighted sample reaches, which claims a
    certainty that n_eff effective samples cannot give: a population under about 1 / n_eff
    is unresolved. The floor is the binomial error at half an effective sample (the Jeffreys
    prior's pseudo-count); it only binds below about one effective sample in the state, so
    with equal weights it leaves every state that has a sample at sqrt(p (1 - p) / N).
    """
    w = np.asarray(weights, dtype=np.float64)
    n_eff = w.sum() ** 2 / np.sum(w**2)
    p0 = 0.5 / n_eff
    return np.fmax(weighted_mean_stderr(indicator, w), np.sqrt(p0 * (1.0 - p0) / n_eff))


# ---- histograms (NumPy) ----


def _weights_or_none(weights, n: int, name: str) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"{name}: expected {n} weights (one per sample), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"{name}: expected finite non-negative weights with a positive sum")
    return w


def _bin_probabilities_1d(samples, edges: np.ndarray, weights, name: str) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    w = _weights_or_none(weights, x.shape[0], f"{name} weights")
    counts, _ = np.histogram(x, bins=edges, weights=w)
    total = counts.sum()
    if total <= 0:
        raise ValueError(f"{name}: no samples (or no weight) inside the histogram range")
    return counts / total


def _density_bin_probabilities(density: Callable, edges: np.ndarray, n_sub: int = 8) -> np.ndarray:
    """Integrate density over each bin (composite Simpson, 2 n_sub steps per bin); normalised."""
    m = 2 * n_sub
    t = np.linspace(0.0, 1.0, m + 1)
    widths = np.diff(edges)
    pts = edges[:-1, None] + widths[:, None] * t[None, :]
    vals = np.asarray(density(pts.reshape(-1)), dtype=np.float64).reshape(pts.shape)
    if not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise ValueError("reference density: expected finite non-negative values on the bins")
    simpson = np.ones(m + 1)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    mass = widths * (vals @ simpson) / (3.0 * m)
    if mass.sum() <= 0:
        raise ValueError("reference density: integrates to zero over the histogram range")
    return mass / mass.sum()


def histogram_tv(
    samples: Float[ArrayLike, " N"],
    reference: Float[ArrayLike, " M"] | Callable[[np.ndarray], np.ndarray],
    bins: int | Float[ArrayLike, " B"] = 50,
    range: tuple[float, float] | None = None,
    weights: Float[ArrayLike, " N"] | None = None,
    *,
    reference_weights: Float[ArrayLike, " M"] | None = None,
) -> float:
    """Total-variation distance 0.5 sum_b |p_b - r_b| between two binned 1D distributions.

    ``samples`` (optionally ``weights``, e.g. importance weights) give p_b. ``reference`` is either
    a second sample set (optionally ``reference_weights``) or a density callable f(points) ->
    values, vectorised over a 1D array; a callable is integrated over each bin (Simpson rule on
    16 sub-intervals) rather than read at bin centres, so narrow peaks are not missed. ``bins`` is
    a count (then ``range`` is needed for a callable; for samples it defaults to the joint min/max)
    or an array of edges. Both distributions are renormalised over the bins: mass outside
    ``range`` is ignored, so choose a range that holds it. Result in [0, 1].
    """
    if np.ndim(bins) == 0:
        if range is None:
            if callable(reference):
                raise ValueError("range: needed when the reference is a density callable")
            both = np.concatenate(
                [np.asarray(samples, float).reshape(-1), np.asarray(reference, float).reshape(-1)]
            )
            range = (float(both.min()), float(both.max()))
        edges = np.linspace(float(range[0]), float(range[1]), int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.shape[0] < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins: expected a count >= 1 or increasing edges, and range lo < hi")
    p = _bin_probabilities_1d(samples, edges, weights, "samples")
    if callable(reference):
        r = _density_bin_probabilities(reference, edges)
    else:
        r = _bin_probabilities_1d(reference, edges, reference_weights, "reference")
    return float(0.5 * np.abs(p - r).sum())


def mode_masses(
    labels: ArrayLike,
    n_modes: int,
    weights: Float[ArrayLike, " N"] | None = None,
) -> np.ndarray:
    """Fraction of the (weighted) samples carrying each label 0..n_modes-1; shape (n_modes,)."""
    lab = np.asarray(labels).reshape(-1)
    if lab.size == 0:
        raise ValueError("labels: expected at least one sample")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels: expected integers, got dtype {lab.dtype}")
    if lab.min() < 0 or lab.max() >= n_modes:
        raise ValueError(
            f"labels: expected values in [0, {n_modes}), got [{lab.min()}, {lab.max()}]"
        )
    w = _weights_or_none(weights, lab.shape[0], "weights")
    counts = np.bincount(lab, weights=w, minlength=n_modes).astype(np.float64)
    return counts / counts.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """sum p log(p/q) with 0 log 0 = 0; inf where p > 0 = q."""
    mask = p > 0
    if np.any(q[mask] <= 0):
        return float("inf")
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


def histogram_kl_js(
    a: Float[ArrayLike, "N 2"],
    b: Float[ArrayLike, "M 2"],
    bins: int | tuple[int, int] = 60,
    range: tuple[tuple[float, float], tuple[float, float]] | None = None,
    smoothing: float = 0.5,
    *,
    weights_a: Float[ArrayLike, " N"] | None = None,
    weights_b: Float[ArrayLike, " M"] | None = None,
) -> tuple[float, float]:
    """(KL(a || b), JS(a, b)) between the 2D histograms of two sample sets, in nats.

    Each histogram is counted (weights, if given, are rescaled to sum to the number of samples,
    so they act as effective counts), then ``smoothing`` pseudo-counts are added to *every* bin of
    both histograms before normalising; the default 0.5 is the Krichevsky-Trofimov (Jeffreys)
    prior and keeps KL finite when b has empty bins. ``smoothing=0`` gives the raw histograms
    (KL may be inf). JS = KL(a || m)/2 + KL(b || m)/2 with m = (a + b)/2, in [0, log 2].
    ``range`` defaults to the joint min/max of both sets per axis; for Ramachandran plots pass
    ((-pi, pi), (-pi, pi)) (or degrees).
    """
    a2, b2 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    for name, arr in (("a", a2), ("b", b2)):
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
            raise ValueError(f"{name}: expected samples of shape (N, 2), got {arr.shape}")
    if not (np.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing: expected a pseudo-count >= 0, got {smoothing!r}")
    if range is None:
        both = np.concatenate([a2, b2])
        range = ((both[:, 0].min(), both[:, 0].max()), (both[:, 1].min(), both[:, 1].max()))

    def hist(x, w, name):
        w = _weights_or_none(w, x.shape[0], name)
        if w is not None:
            w = w * (x.shape[0] / w.sum())
        h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=range, weights=w)
        h = h + smoothing
        if h.sum() <= 0:
            raise ValueError(f"{name}: no samples inside the histogram range")
        return h / h.sum()

    p, q = hist(a2, weights_a, "weights_a"), hist(b2, weights_b, "weights_b")
    m = 0.5 * (p + q)
    return _kl(p, q), 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def log_partition_stderr(
    log_w: Float[ArrayLike, " N"], n_resamples: int = 200, seed: int = 0
) -> float:
    """Standard error of log Z-hat = log mean(exp(log_w)), from ``n_resamples`` bootstrap
    resamples of the N samples (fixed ``seed``: the same number every call). It shares the
    weights' blind spot: a tail that no sample reached is missing from every resample too, so
    read it with ``pareto_k``. (The ESS fraction gets no such error: on log-normal weights of
    sigma 1 its bootstrap error is about half its spread over independent sample sets, since it
    rests on the fourth moment of the weights; compare independent draws instead.) NumPy."""
    lw = np.asarray(log_w, dtype=np.float64)
    finite = lw[np.isfinite(lw)]
    if finite.size == 0:
        return float("inf")
    w = np.exp(lw - finite.max())
    rng = np.random.default_rng(seed)
    means = np.array([np.mean(w[rng.integers(0, w.size, w.size)]) for _ in range(n_resamples)])
    return float(np.std(np.log(means), ddof=1)) if np.all(means > 0) else float("inf")


def max_weight_ratio(log_w: Float[ArrayLike, " N"]) -> float:
    """The largest importance weight over the mean weight, N max_i w_i (normalised weights; a
    non-finite log-weight is a zero weight): 1 for equal weights, N when one sample holds all
    the weight. It bounds what any one sample can do to a self-normalised estimate. NumPy."""
    lw = np.asarray(log_w, dtype=np.float64).reshape(-1)
    finite = np.isfinite(lw)
    if not finite.any():
        return float("nan")
    top = lw[finite].max()
    return float(lw.size / np.sum(np.exp(lw[finite] - top)))
