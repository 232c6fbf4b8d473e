"""Median-based gradient skip / clip as an optax GradientTransformation (METHOD.md section 6).

``skip_or_clip(inner)`` keeps the global gradient norms of the last ``window`` accepted updates in
a ring buffer. The first ``min_history`` finite gradients only calibrate it: they are recorded
and skipped, because nothing yet says whether they are spikes, and Adam must not see one. (An
untrained molecule flow gave norms 7e2, 4e3, 3e7, ..., then ~10: the unguarded 3e7 left Adam's
second moment so large that 5000 later updates moved nothing.) Afterwards, with m the median:

* norm > skip_factor * m: the update is skipped: the returned updates are zeros and the inner
  state is returned untouched (Adam's moments and step count do not move);
* norm > clip_factor * m: the gradient is rescaled to norm clip_factor * m before ``inner`` sees it;
* otherwise the gradient goes to ``inner`` unchanged.

A gradient with a NaN or inf anywhere (non-finite global norm) is always skipped. Every finite
raw norm is recorded, skipped ones included, so that a lasting change of scale is adopted after
about window / 2 updates instead of being skipped for ever; non-finite norms are never recorded.
Everything is jnp (no Python branching on values): ``update`` jits, scans and vmaps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int

from coarseflow.checks import is_int, is_number
from coarseflow.errors import ConfigError

__all__ = [
    "SkipClipState",
    "adam_with_skip_clip",
    "any_skipped",
    "find_skip_clip_state",
    "global_norm",
    "history_median",
    "normalize_by_global_norm",
    "skip_clip_stats",
    "skip_or_clip",
]


class SkipClipState(NamedTuple):
    """State of ``skip_or_clip``.

    inner_state: the wrapped transformation's state.
    norms: (window,) ring buffer of the raw norms of accepted updates (slot count % window next).
    count: number of accepted updates recorded so far (not capped at window).
    n_skipped: number of skipped updates so far (spikes and non-finite gradients).
    last_skipped, last_norm: whether the latest update was skipped, and its raw global norm.
    n_clipped, last_clipped: the same for clipping.
    """

    inner_state: Any
    norms: Float[Array, " window"]
    count: Int[Array, ""]
    n_skipped: Int[Array, ""]
    last_skipped: Bool[Array, ""]
    last_norm: Float[Array, ""]
    n_clipped: Int[Array, ""]
    last_clipped: Bool[Array, ""]


def _validate(window: Any, skip_factor: Any, clip_factor: Any, min_history: Any) -> None:
    if not is_int(min_history) or min_history < 1:
        raise ConfigError(f"min_history: expected an integer >= 1, got {min_history!r}")
    if not is_int(window) or window < min_history:
        raise ConfigError(
            f"window: expected an integer >= min_history = {min_history}, got {window!r}"
        )
    if not is_number(clip_factor) or not 1.0 < clip_factor < float("inf"):
        raise ConfigError(f"clip_factor: expected a finite number > 1, got {clip_factor!r}")
    if not is_number(skip_factor) or not clip_factor < skip_factor < float("inf"):
        raise ConfigError(
            f"skip_factor: expected a finite number > clip_factor = {clip_factor}, "
            f"got {skip_factor!r}"
        )


def global_norm(tree: Any) -> Float[Array, ""]:
    """sqrt of the sum of squares of every leaf; NaN / inf if any entry is."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros(())
    return jnp.sqrt(sum(jnp.sum(jnp.square(jnp.abs(x))) for x in leaves))


def normalize_by_global_norm() -> optax.GradientTransformation:
    """Each gradient divided by its global norm (a zero gradient stays zero; a non-finite one
    stays non-finite, for the guard to skip). For estimators whose norms are heavy-tailed from
    update to update: unnormalised, Adam's second moment follows the rare large gradients and
    every other step shrinks by their size (the refit of q(Y|X): docs/benchmarks.md, Session 24).
    """

    def update(updates, state, params=None):
        norm = global_norm(updates)
        scale = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
        return jax.tree.map(lambda u: u * scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def history_median(state: SkipClipState) -> Float[Array, ""]:
    """Median of the recorded norms (the last min(count, window)); NaN if none recorded."""
    window = state.norms.shape[0]
    k = jnp.minimum(state.count, window)
    valid = jnp.arange(window) < k
    ordered = jnp.sort(jnp.where(valid, state.norms, jnp.inf))
    lo = ordered[jnp.maximum((k - 1) // 2, 0)]
    hi = ordered[jnp.minimum(k // 2, window - 1)]
    return jnp.where(k > 0, 0.5 * (lo + hi), jnp.nan)


def skip_or_clip(
    inner: optax.GradientTransformation,
    window: int = 50,
    skip_factor: float = 10.0,
    clip_factor: float = 3.0,
    min_history: int = 10,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` with the median-based skip / clip (see module docstring).

    Requires skip_factor > clip_factor > 1 and window >= min_history >= 1 (else ConfigError).
    Extra keyword arguments to ``update`` are passed on to ``inner``.
    """
    _validate(window, skip_factor, clip_factor, min_history)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        dtype = jnp.result_type(float)  # float64 under jax_enable_x64, else float32
        return SkipClipState(
            inner_state=inner.init(params),
            norms=jnp.zeros(window, dtype),
            count=jnp.zeros((), jnp.int32),
            n_skipped=jnp.zeros((), jnp.int32),
            last_skipped=jnp.zeros((), bool),
            last_norm=jnp.zeros((), dtype),
            n_clipped=jnp.zeros((), jnp.int32),
            last_clipped=jnp.zeros((), bool),
        )

    def update_fn(updates, state: SkipClipState, params=None, **extra_args):
        dtype = state.norms.dtype
        norm = global_norm(updates).astype(dtype)
        finite = jnp.isfinite(norm)
        median = history_median(state)
        calibrating = state.count < min_history
        skip = ~finite | calibrating | (norm > skip_factor * median)
        clip = ~skip & (norm > clip_factor * median)
        scale = jnp.where(clip, clip_factor * median / jnp.where(clip, norm, 1.0), 1.0)

        # The inner update always runs (on zeros when skipping, so no NaN enters it) and is
        # then discarded leaf by leaf: jnp.where returns the old inner state bit for bit.
        # (Cheaper to trace than lax.cond, and fast in eager mode.)
        factor = jnp.where(skip, 0.0, scale)
        grads = jax.tree.map(
            lambda g: jnp.where(skip, jnp.zeros_like(g), g * factor.astype(g.dtype)), updates
        )
        proposed, proposed_state = inner.update(grads, state.inner_state, params, **extra_args)
        new_updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), proposed)
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(skip, old, new), proposed_state, state.inner_state
        )
        # Every finite norm enters the history, skipped or not: a lasting change of gradient
        # scale (a new beta, a sharper model) is then adopted after about window / 2 updates
        # instead of being skipped for ever. Non-finite norms never enter it.
        slot = state.count % window
        norms = jnp.where(finite, state.norms.at[slot].set(norm), state.norms)
        new_state = SkipClipState(
            inner_state=inner_state,
            norms=norms,
            count=state.count + finite.astype(jnp.int32),
            n_skipped=state.n_skipped + skip.astype(jnp.int32),
            last_skipped=skip,
            last_norm=norm,
            n_clipped=state.n_clipped + clip.astype(jnp.int32),
            last_clipped=clip,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_with_skip_clip(
    learning_rate: float | optax.Schedule,
    *,
    window: int = 50,
    skip_factor: float = 10.0,
    clip_factor: float = 3.0,
    min_history: int = 10,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """``skip_or_clip(optax.adam(learning_rate, b1, b2, eps), ...)``."""
    return skip_or_clip(
        optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
        window=window,
        skip_factor=skip_factor,
        clip_factor=clip_factor,
        min_history=min_history,
    )


def find_skip_clip_state(opt_state: Any) -> SkipClipState:
    """The first SkipClipState inside a (possibly chained / nested) optax state.

    Searches depth-first through tuples (optax.chain, NamedTuple states), lists and dicts.
    Raises ValueError if there is none.
    """
    found = _find(opt_state)
    if found is None:
        raise ValueError("find_skip_clip_state: no SkipClipState in this optimiser state")
    return found


def _find(node: Any) -> SkipClipState | None:
    return next(_all_states(node), None)


def _all_states(node: Any):
    """Every SkipClipState inside ``node``, depth-first."""
    if isinstance(node, SkipClipState):
        yield node
        return
    if isinstance(node, dict):
        children = list(node.values())
    elif isinstance(node, tuple | list):
        children = list(node)
    else:
        return
    for child in children:
        yield from _all_states(child)


def any_skipped(opt_state: Any) -> Bool[Array, ""]:
    """Whether any gradient guard inside ``opt_state`` skipped its latest update (one guard
    per parameter group in a partitioned optimiser)."""
    return jnp.any(jnp.stack([s.last_skipped for s in _all_states(opt_state)]))


def skip_clip_stats(opt_state: Any) -> dict[str, Any]:
    """Python values for the metrics log (call outside jit).

    Keys: grad_norm (raw global norm of the latest update), skipped, clipped (bools),
    n_skipped, n_clipped, n_recorded (ints), median (of the norm history; NaN if empty).
    """
    s = find_skip_clip_state(opt_state)
    return {
        "grad_norm": float(s.last_norm),
        "skipped": bool(s.last_skipped),
        "clipped": bool(s.last_clipped),
        "n_skipped": int(s.n_skipped),
        "n_clipped": int(s.n_clipped),
        "n_recorded": int(s.count),
        "median": float(history_median(s)),
    }
