"""The Gaussian q0(xi | X)'s density, alone and summed over the relabelings of methyl-like
groups without one triangular solve per relabeling.

A molecule's q(Y|X) is the mixture of q0 over every relabeling sigma of its rotors' terminal
atoms (:mod:`coarseflow.model.conditional`): 3^k of them for k methyls, 243 for capped Ala3 and
2,187 for Ala5. Each relabeling permutes xi only on the s coordinates of the relabeled atoms
(9 per methyl), so with t_sigma = t_0 + delta_sigma (delta zero off those s) and
w = L^-1 t_0, M = L^-1[:, moved] (n, s), G = M^T M:

    |L^-1 t_sigma|^2 = |w|^2 + 2 (M^T w) . delta_sigma + delta_sigma^T G delta_sigma.

delta_sigma is a sum of per-group parts, each group (a methyl) in one of its few patterns, so
the last two terms are sums of per-group (unary) and per-pair tables: s + 2 solves in all, not
3^k. Differences to the identity's term are summed, never |w|^2 itself, and the largest term is
recomputed by its own solve, so float32 keeps the brute-force sum's accuracy where it matters.
Only for the Gaussian: a spline on eps acts on every coordinate of L^-1 t_sigma.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coarseflow.triangular import solve_lower


class Groups(NamedTuple):
    """The structure of a set of relabelings of xi (all static numpy).

    moved: (s,) the coordinates some relabeling moves; coords: per group, its coordinates'
    positions in ``moved``; sources: per group (m_g, s_g), the xi index each coordinate takes
    in each of the group's m_g patterns; pattern: (S, n_groups) each relabeling's pattern per
    group."""

    moved: np.ndarray
    coords: tuple[np.ndarray, ...]
    sources: tuple[np.ndarray, ...]
    pattern: np.ndarray


@functools.lru_cache(maxsize=16)
def relabeling_groups(relabelings: tuple[tuple[int, ...], ...]) -> Groups:
    """The groups of ``relabelings`` (S permutations of xi, as tuples): the moved coordinates
    split into sets that every relabeling maps within themselves, merged where they always move
    together (a methyl's bond, angle and dihedral triples)."""
    perms = np.asarray(relabelings, dtype=np.int64)
    n = perms.shape[1]
    moved = np.flatnonzero(np.any(perms != np.arange(n), axis=0))
    parent = {int(i): int(i) for i in moved}

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in perms:
        for i in moved:
            parent[root(int(i))] = root(int(p[i]))
    blocks: dict[int, list[int]] = {}
    for i in moved:
        blocks.setdefault(root(int(i)), []).append(int(i))
    # blocks whose patterns always change together are one group
    merged: dict[tuple[int, ...], list[int]] = {}
    for block in blocks.values():
        _, index = np.unique(perms[:, block], axis=0, return_inverse=True)
        merged.setdefault(tuple(index.ravel()), []).extend(block)
    position = {int(i): k for k, i in enumerate(moved)}
    coords, sources, pattern = [], [], []
    for members in merged.values():
        members = sorted(members)
        rows, index = np.unique(perms[:, members], axis=0, return_inverse=True)
        coords.append(np.asarray([position[i] for i in members]))
        sources.append(rows)
        pattern.append(index.ravel())
    return Groups(moved, tuple(coords), tuple(sources), np.stack(pattern, axis=1))


def worth_it(groups: Groups, n: int) -> bool:
    """Whether the grouped sum costs less than one solve per relabeling: s + 2 solves and the
    Gram matrix G (about 2 s^2 / n solves' work) against S."""
    s = len(groups.moved)
    return s + 2 + 2 * s * s / n < len(groups.pattern)


def wrap(angle):
    """``angle`` (rad, any shape) into [-pi, pi)."""
    return jnp.mod(angle + jnp.pi, 2 * jnp.pi) - jnp.pi


def gaussian_terms(d, periodic):
    """(t, log-Jacobian terms) of xi - mu = d (..., m) for the Gaussian: periodic coordinates
    through pi * arctanh(wrap(d) / pi), each with its -log(1 - ratio^2); the others as they are."""
    tiny = jnp.finfo(d.dtype).eps
    ratio = jnp.clip(wrap(d) / jnp.pi, -1 + tiny, 1 - tiny)
    periodic = np.asarray(periodic, bool)
    t = jnp.where(periodic, jnp.pi * jnp.arctanh(jnp.where(periodic, ratio, 0.0)), d)
    return t, jnp.where(periodic, -jnp.log1p(-(ratio**2)), 0.0)


def whiten(xi, beta, mu, L, periodic):
    """(v, log|dv/dxi|): v = sqrt(beta) L^-1 t (n,) for xi (n,), mu (n,) and L (n, n) before
    the 1 / sqrt(beta); v ~ N(0, I) under the Gaussian."""
    t, jac = gaussian_terms(xi - mu, periodic)
    n = xi.shape[-1]
    log_det = jnp.sum(jac) - jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * n * jnp.log(beta)
    return solve_lower(L, t) * jnp.sqrt(beta), log_det


def normal_log_prob(eps):
    """log N(eps; 0, I) () for eps (n,)."""
    return jnp.sum(-0.5 * eps**2 - 0.5 * math.log(2 * math.pi))


def gaussian_log_prob(xi, beta, mu, L, periodic):
    """log q0(xi | X) () of the Gaussian (no spline): :func:`whiten`'s v under N(0, I)."""
    v, log_det = whiten(xi, beta, mu, L, periodic)
    return log_det + normal_log_prob(v)


def summed_log_prob(xi, beta, mu, L, periodic, relabelings, groups: Groups):
    """log sum_sigma q0(xi[sigma] | X) () over ``relabelings`` (S, n) with their ``groups``:
    equal to the sum of :func:`gaussian_log_prob` over them, at s + 2 solves."""
    periodic = np.asarray(periodic, bool)
    t0, jac0 = gaussian_terms(xi - mu, periodic)
    moved = groups.moved
    w = solve_lower(L, t0)
    unit = jnp.eye(xi.shape[-1], dtype=xi.dtype)[:, moved]
    M = jax.vmap(solve_lower, in_axes=(None, 1), out_axes=1)(L, unit)  # (n, s)
    b, G = M.T @ w, M.T @ M
    deltas, unary = [], []
    for coords, sources in zip(groups.coords, groups.sources, strict=True):
        at = moved[coords]
        t, jac = gaussian_terms(xi[sources] - mu[at], periodic[at])  # (m_g, s_g)
        delta = t - t0[at]
        quad = jnp.einsum("ki,ij,kj->k", delta, G[np.ix_(coords, coords)], delta)
        d_log = jnp.sum(jac, -1) - jnp.sum(jac0[at]) - 0.5 * beta * (2 * delta @ b[coords] + quad)
        deltas.append(delta)
        unary.append(d_log)
    pattern = groups.pattern
    d_log = sum(u[pattern[:, g]] for g, u in enumerate(unary))
    for g in range(len(deltas)):
        for h in range(g + 1, len(deltas)):
            block = G[np.ix_(groups.coords[g], groups.coords[h])]
            pair = -beta * (deltas[g] @ block @ deltas[h].T)  # (m_g, m_h)
            d_log = d_log + pair[pattern[:, g], pattern[:, h]]
    # the largest term by its own solve; the others relative to it
    best = jax.lax.stop_gradient(jnp.argmax(d_log))
    exact = gaussian_log_prob(xi[jnp.asarray(relabelings)[best]], beta, mu, L, periodic)
    return exact + jax.nn.logsumexp(d_log - d_log[best])
