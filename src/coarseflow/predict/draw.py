"""One-shot all-atom samples and their importance weights (METHOD.md section 7): X ~ q(X)
from the flow, Y ~ q(Y|X) (:mod:`coarseflow.predict.conditional`, or a learned conditional),
x = Phi(X, Y), drawn in batches of one shape.

The unnormalised log-weights log w = -beta u(x) - log q(X) - log q(Y|X) make self-normalised
estimates of ``<A>_beta`` unbiased as N grows; ESS = 1 / sum(w_norm^2); and log mean exp(log w)
estimates log Z(beta) = log ∫ exp(-beta u).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float

from coarseflow.model.linear_map import physical_samples
from coarseflow.parallel import check_divisible, shard_batch
from coarseflow.predict.conditional import (
    resolve_conditional,
    sample_learned,
    sample_q_y,
    with_polish,
)
from coarseflow.predict.settings import PredictionSettings
from coarseflow.progress import Progress
from coarseflow.targets.base import AbstractTarget


class Samples(NamedTuple):
    """All arrays are numpy with leading axis N."""

    x: np.ndarray  # (N, n) every coordinate, in the target's own order
    X: np.ndarray  # (N, n_x)
    log_qX: np.ndarray  # (N,) log q(X) of the flow
    log_q: np.ndarray  # (N,) log q(X) + log q(Y|X) (ais: the implied one, see predict.conditional)
    energy: np.ndarray  # (N,) reduced energy u(x) (beta = 1 units)
    log_weights: np.ndarray  # (N,) -beta u - log_q, unnormalised
    ais_acceptance: np.ndarray  # (N,) mean MALA acceptance of the X's AIS paths (NaN: not ais)


@eqx.filter_jit
def _batch(
    flow,
    target,
    key,
    beta,
    n: int,
    conditional: str,
    settings: PredictionSettings,
    learned=None,
    mesh=None,
):
    X, log_qX = shard_batch(flow.sample_and_log_prob(jr.fold_in(key, 0), (n,)), mesh)
    if learned is not None:
        Y, log_qY, acceptance = sample_learned(jr.fold_in(key, 1), target, X, beta, learned)
    else:
        Y, log_qY, acceptance = sample_q_y(
            jr.fold_in(key, 1), target, X, beta, conditional, settings
        )
    x, log_det = physical_samples(learned, target, X, Y)  # x = Phi(X, Y): merged, or W R
    u = jax.vmap(target.energy)(x)
    log_q = log_qX + log_qY - log_det
    return x, X, log_qX, log_q, u, -beta * u - log_q, acceptance


def _in_batches(n: int, rows: int, draw, progress: Progress, what: str) -> list[np.ndarray]:
    """``draw(i)`` for the ceil(n / rows) batches i, each a tuple of arrays with leading axis
    ``rows``, concatenated (NumPy) and cut to n. Every batch has the same shape, the last one
    padded, so a jitted ``draw`` compiles once for any n; the first inside ``progress``'s
    compiling stage (``what``), then each batch advances its bar."""
    parts = []
    for i, start in enumerate(range(0, n, rows)):
        if i == 0:
            with progress.compiling(f"{what} (batch {rows})"):
                out = draw(i)
        else:
            out = draw(i)
        parts.append([np.asarray(a) for a in out])
        progress.advance(min(rows, n - start))
    return [np.concatenate(p)[:n] for p in zip(*parts, strict=True)]


def batch_rows(n: int, settings: PredictionSettings, batch: int | None = None) -> int:
    """Rows per compiled batch: ``batch`` where a caller drawing several n fixes one (so it
    compiles once), else min(batch_size, n)."""
    return min(settings.batch_size, n) if batch is None else batch


def draw_samples(
    key,
    target: AbstractTarget,
    flow,
    beta: float,
    settings: PredictionSettings = PredictionSettings(),
    n: int | None = None,
    conditional=None,
    *,
    batch: int | None = None,
    progress: Progress | None = None,
    mesh=None,
) -> Samples:
    """N = ``n`` (default settings.n_samples) one-shot samples at ``beta`` with log-weights.

    ``conditional``: a learned q(Y|X) (exact density, no AIS; its mean polished by
    ``settings.polish_steps``); None: ``settings.conditional``.
    ``batch``: rows per compiled batch (:func:`batch_rows`). Sample i is the same for every
    n > i (the same key and batch). ``progress``: the compiling stage and bar to report to.
    ``mesh``: the devices each batch is split over (:mod:`coarseflow.parallel`; the samples
    equal one device's up to rounding); its rows must split evenly.
    """
    n = settings.n_samples if n is None else n
    rows = batch_rows(n, settings, batch)
    check_divisible(rows, mesh, "rows per batch (min([prediction] batch_size, n))")
    progress = Progress(n, "sample", show=False) if progress is None else progress
    learned = with_polish(conditional, settings)
    conditional = (
        "learned" if learned is not None else resolve_conditional(target, settings.conditional)
    )
    x, X, log_qX, log_q, u, log_w, acceptance = _in_batches(
        n,
        rows,
        lambda i: _batch(
            flow,
            target,
            jr.fold_in(key, i),
            jnp.asarray(beta),
            rows,
            conditional,
            settings,
            learned,
            mesh,
        ),
        progress,
        "the sampler",
    )
    # a non-finite energy means zero weight, not a poisoned estimate
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    return Samples(
        x=x, X=X, log_qX=log_qX, log_q=log_q, energy=u, log_weights=log_w, ais_acceptance=acceptance
    )


def log_partition_estimate(log_weights: Float[Array, " N"]) -> float:
    """log Z(beta) ≈ log mean exp(log w) (unbiased for Z, consistent for log Z)."""
    lw = np.asarray(log_weights, float)
    m = np.max(lw)
    return float(m + np.log(np.mean(np.exp(lw - m))))
