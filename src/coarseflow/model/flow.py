"""q(X): a rational-quadratic-spline coupling flow on a base confined to a box.

z ~ N(0, I) truncated to [-B, B]^n_x (uniform on [-B, B] for angles)  ->  spline coupling layers
(identity outside [-B, B], so z stays inside)  ->  a fixed affine map of [-B, B]^n_x onto the
target's box for X  ->  the target's fixed bijection onto X, if it declares one.

:func:`make_flow` builds q(X) for a target from what the target declares (``x_bounds``,
``x_bijection``, ``x_periodic``); :func:`box_flow` is the same flow on a box given directly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import paramax
from flowjax.bijections import (
    AbstractBijection,
    Affine,
    Chain,
    Permute,
    RationalQuadraticSpline,
)
from flowjax.distributions import AbstractDistribution, Transformed
from flowjax.flows import coupling_flow
from jax.scipy.special import log_ndtr
from jaxtyping import Array, Float, PRNGKeyArray

from coarseflow.errors import ConfigError


class BoxBase(AbstractDistribution):
    """The flow's base on the box [-bound, bound]^dim, a product over coordinates: uniform on
    [-bound, bound] where ``uniform`` is True (angles, which p makes flat as beta -> 0), else a
    standard normal truncated to it. Normalised on the box; -inf outside."""

    shape: tuple[int, ...]
    bound: float
    uniform: tuple[bool, ...]
    cond_shape: None = None

    def __init__(self, dim: int, bound: float, uniform=None):
        self.shape = (int(dim),)
        self.bound = float(bound)
        flags = np.zeros(dim, bool) if uniform is None else np.asarray(uniform, bool)
        if flags.shape != self.shape:
            raise ConfigError(f"flow base: uniform must have shape {self.shape}, got {flags.shape}")
        self.uniform = tuple(bool(f) for f in flags)

    def _log_prob(self, x, condition=None):
        # per coordinate: log N(x) - log(Phi(B) - Phi(-B)), or -log(2 B) where uniform
        b = self.bound
        log_mass = log_ndtr(b) + jnp.log1p(-jnp.exp(log_ndtr(-b) - log_ndtr(b)))
        normal = -0.5 * x**2 - 0.5 * jnp.log(2 * jnp.pi) - log_mass
        logp = jnp.sum(jnp.where(np.asarray(self.uniform), -jnp.log(2 * b), normal))
        inside = jnp.all(jnp.abs(x) <= b)
        return jnp.where(inside, logp, -jnp.inf)

    def _sample(self, key, condition=None):
        k_normal, k_uniform = jr.split(key)
        normal = jr.truncated_normal(k_normal, -self.bound, self.bound, self.shape)
        flat = jr.uniform(k_uniform, self.shape, normal.dtype, -self.bound, self.bound)
        return jnp.where(np.asarray(self.uniform), flat, normal)


PERMUTATIONS = ("alternating", "random")
MAX_SIZE = 100_000  # knots, layers, nn_width, nn_depth: beyond this a typo, not a model
MAX_INTERVAL = 100.0  # the spline half-width B, in standard deviations of the base


class FlowSettings(eqx.Module):
    """Sizes of q(X). ``interval`` is the spline half-width B (also the base's truncation).

    ``uniform_angles``: the base is uniform over the coordinates that the target marks as angles
    (``x_periodic``: a molecule's CG dihedrals), so q starts flat over them, as p is at small
    beta. A normal base starts q with a std of 45 degrees (B = 4) about the window's centre:
    on alanine dipeptide 51% in C5 and 0.3% in C7ax, against 16% and 9% in MD at the first beta.

    ``permutation``: how coordinates are shuffled between coupling layers. ``alternating``
    (default): the coordinates a layer leaves unchanged are among those the next layer
    transforms, in a random order, so every coordinate is transformed in at least every other
    layer. ``random``: flowjax's independent random permutations (coarseflow before 2026-12-04),
    which leave a coordinate untransformed by every layer with probability 2^-layers: 1 of the
    16 X of ManyWell-32 in model seed 0 and 2 in seed 1 at 6 layers, whose wells' weights then
    stayed at the base's 50 / 50 whatever the objective (docs/benchmarks.md).
    """

    knots: int = 8
    interval: float = 4.0
    layers: int = 4
    nn_width: int = 64
    nn_depth: int = 2
    uniform_angles: bool = True
    permutation: str = "alternating"
    seed: int = 0

    def __check_init__(self):
        from coarseflow import checks

        for name, low in (("knots", 2), ("layers", 1), ("nn_width", 1), ("nn_depth", 0)):
            checks.integer(f"[model] {name}", getattr(self, name), low, MAX_SIZE)
        checks.number("[model] interval", self.interval, 0.0, MAX_INTERVAL)
        checks.boolean("[model] uniform_angles", self.uniform_angles)
        checks.choice("[model] permutation", self.permutation, PERMUTATIONS)
        checks.seed("[model] seed", self.seed)


def make_flow(key: PRNGKeyArray, target, settings: FlowSettings = FlowSettings()) -> Transformed:
    """The untrained flow q(X) of ``target`` (any AbstractTarget): on its box
    ``target.x_bounds()``, followed by its fixed ``target.x_bijection()`` (e.g. a molecule's
    internal -> Cartesian coordinates), uniform at the start over the coordinates that
    ``target.x_periodic()`` marks as angles (when ``settings.uniform_angles``)."""
    lower, upper = target.x_bounds()
    return box_flow(
        key,
        lower=lower,
        upper=upper,
        settings=settings,
        output=target.x_bijection(),
        periodic=target.x_periodic(),
    )


def box_flow(
    key: PRNGKeyArray,
    *,
    lower: Float[np.ndarray, " n_x"],
    upper: Float[np.ndarray, " n_x"],
    settings: FlowSettings = FlowSettings(),
    output: AbstractBijection | None = None,
    periodic: np.ndarray | None = None,
) -> Transformed:
    """The flow q(X) whose support is the box [lower, upper] (each (n_x,)).

    At initialisation every spline is the identity and the layers only permute coordinates, so
    q(X) is the base stretched onto the box: wide and unimodal, a good start at small beta, and
    uniform over the coordinates marked by ``periodic`` ((n_x,) bool, default none) when
    ``settings.uniform_angles``. ``output``: an optional fixed
    bijection applied last (e.g. internal -> Cartesian coordinates of a molecule); the box is
    then in its input space. It is not trained.
    """
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    if lower.shape != upper.shape or lower.ndim != 1 or np.any(upper <= lower):
        raise ConfigError(f"flow box: need lower < upper, each (n_x,), got {lower}, {upper}")
    b = settings.interval
    splines = coupling_flow(
        key,
        base_dist=BoxBase(lower.size, b),  # for its shape only: the flow's base is set below
        transformer=RationalQuadraticSpline(knots=settings.knots, interval=b),
        flow_layers=settings.layers,
        nn_width=settings.nn_width,
        nn_depth=settings.nn_depth,
        nn_activation=jax.nn.gelu,
        invert=False,  # fast forward transform: training samples X = f(z)
    ).bijection
    if settings.permutation == "alternating":
        splines = _alternate(splines, lower.size, key)
    splines = start_as_identity(splines)
    uniform = None
    if periodic is not None and settings.uniform_angles:
        uniform = np.zeros(lower.size, bool)
        uniform[_source_of_each_output(splines, lower.size, b)] = np.asarray(periodic, bool)
    base = BoxBase(lower.size, b, uniform)
    to_box = paramax.non_trainable(Affine(loc=(upper + lower) / 2, scale=(upper - lower) / (2 * b)))
    layers = [splines, to_box] + ([paramax.non_trainable(output)] if output is not None else [])
    return Transformed(base, Chain(layers))


def alternating_permutations(
    key: PRNGKeyArray, dim: int, layers: int, untransformed: int
) -> np.ndarray:
    """(layers, dim) int: the permutation after each coupling layer, y = x[perm], such that
    the ``untransformed`` positions [0, untransformed) of one layer land in the next layer's
    transformed positions; the rest of those positions, and the order within each part, are
    random. Every coordinate is then transformed in at least every other layer."""
    rng = np.random.default_rng(np.asarray(jr.key_data(key)).ravel())
    k = untransformed
    perms = []
    for _ in range(layers):
        kept, changed = np.arange(k), rng.permutation(np.arange(k, dim))
        # the next layer's transformed part: all of this layer's kept ones and dim - 2k of
        # the changed ones; its kept part: the remaining changed ones
        transformed = rng.permutation(np.concatenate([kept, changed[: dim - 2 * k]]))
        perms.append(np.concatenate([changed[dim - 2 * k :], transformed]))
    return np.stack(perms)


def _alternate(splines, dim: int, key: PRNGKeyArray):
    """coupling_flow's Scan of (coupling, permute) layers with :func:`alternating_permutations`
    in place of its random ones."""
    if not isinstance(getattr(splines, "bijection", None), Chain):
        return splines  # a single layer: nothing to permute
    coupling, permute = splines.bijection.bijections
    if not isinstance(permute, Permute):
        return splines  # dim 2: flowjax flips the two coordinates, which alternates already
    layers = permute.permutation[0].shape[0]
    perms = alternating_permutations(
        jr.fold_in(key, 1), dim, layers, int(coupling.untransformed_dim)
    )
    inverse = np.argsort(perms, axis=-1)
    return eqx.tree_at(
        lambda s: (
            s.bijection.bijections[1].permutation,
            s.bijection.bijections[1].inverse_permutation,
        ),
        splines,
        ((jnp.asarray(perms, jnp.int32),), (jnp.asarray(inverse, jnp.int32),)),
    )


def _is_mlp(node) -> bool:
    return isinstance(node, eqx.nn.MLP)


def start_as_identity(bijection):
    """``bijection`` with the last layer of every conditioner MLP zeroed.

    flowjax's coupling layers add the MLP's output to the transformer's initial parameters, so a
    zero output is the identity spline: q then starts exactly as the base (stretched onto the
    box). The other layers keep their random initialisation, so the first updates break the
    symmetry through the last layer's weights.
    """

    def last_layers(tree):
        mlps = [m for m in jax.tree.leaves(tree, is_leaf=_is_mlp) if _is_mlp(m)]
        return [leaf for m in mlps for leaf in (m.layers[-1].weight, m.layers[-1].bias)]

    return eqx.tree_at(last_layers, bijection, replace_fn=jnp.zeros_like)


def _source_of_each_output(identity_splines, dim: int, bound: float) -> np.ndarray:
    """(dim,) int: the base coordinate that each output coordinate is, for splines that are the
    identity (so the flow is the composition of coupling_flow's permutations)."""
    step = bound / (dim + 1)
    probe = step * jnp.arange(1, dim + 1)  # distinct values inside the splines' interval
    out = np.asarray(paramax.unwrap(identity_splines).transform(probe))
    return np.rint(out / step).astype(int) - 1


def split_trainable(flow):
    """(trainable params, static rest) of a flow, leaving non-trainable wrappers out."""
    return eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda x: isinstance(x, paramax.NonTrainable)
    )


def sample_with_log_det(flow: Transformed, z: Float[Array, "S n_x"]):
    """X = f(z) (S, n_x) and log|det df/dz| (S,) for base samples z."""
    bij = paramax.unwrap(flow.bijection)
    return jax.vmap(bij.transform_and_log_det)(z)
