"""coarseflow.model.gaussian: the Gaussian q0's density summed over relabelings by groups equals
the sum of one solve per relabeling, in value and gradient."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.model.gaussian import (
    gaussian_log_prob,
    relabeling_groups,
    summed_log_prob,
    worth_it,
)

N = 30


def _methyl_relabelings(starts):
    """Every combination of cyclic shifts of 3-atom methyls whose atoms' internal coordinates
    (3 each) start at ``starts``: the layout of a molecule's xi_relabelings."""
    perms = []
    for shifts in itertools.product(range(3), repeat=len(starts)):
        p = np.arange(N)
        for start, k in zip(starts, shifts, strict=True):
            for atom in range(3):
                src = (atom + k) % 3
                p[start + 3 * atom : start + 3 * atom + 3] = np.arange(
                    start + 3 * src, start + 3 * src + 3
                )
        perms.append(p)
    return tuple(tuple(int(i) for i in p) for p in perms)


STARTS = (1, 10, 20)  # xi 0, 19 and 29 move with no relabeling
RELABELINGS = _methyl_relabelings(STARTS)
PERIODIC = tuple(bool(i % 3 == 2) for i in range(N))


def _system(seed, scale, width=1.0):
    rng = np.random.default_rng(seed)
    L = width * (np.tril(rng.normal(size=(N, N)) * 0.1, -1) + np.diag(rng.uniform(0.05, 0.3, N)))
    mu = rng.normal(size=N)
    if width > 1:  # a methyl's three atoms alike, as a real one's: many relabelings count
        for start in STARTS:
            for atom in (1, 2):
                mu[start + 3 * atom : start + 3 * atom + 3] = mu[start : start + 3]
    xi = mu + scale * rng.normal(size=N) * 0.2
    return jnp.asarray(xi), jnp.asarray(mu), jnp.asarray(L)


def _brute(xi, beta, mu, L):
    perms = np.asarray(RELABELINGS)
    logs = jax.vmap(lambda p: gaussian_log_prob(xi[p], beta, mu, L, PERIODIC))(perms)
    return jax.nn.logsumexp(logs)


def test_groups_are_the_methyls():
    groups = relabeling_groups(RELABELINGS)
    assert len(groups.coords) == 3
    assert sorted(len(c) for c in groups.coords) == [9, 9, 9]
    assert all(len(s) == 3 for s in groups.sources)
    assert groups.pattern.shape == (27, 3)


def _fast(xi, mu, L, beta):
    groups = relabeling_groups(RELABELINGS)
    return summed_log_prob(xi, beta, mu, L, PERIODIC, RELABELINGS, groups)


# one compile each for every case: beta is an argument, not a constant
FAST = jax.jit(jax.value_and_grad(_fast, argnums=(0, 1, 2)))
BRUTE = jax.jit(jax.value_and_grad(_brute, argnums=(0, 2, 3)))


@pytest.mark.parametrize(
    ("seed", "scale", "width", "beta"),
    [(0, 1.0, 1.0, 1.0), (1, 5.0, 1.0, 0.05), (2, 1.0, 8.0, 1.0)],
)
def test_grouped_sum_equals_one_solve_per_relabeling(seed, scale, width, beta):
    xi, mu, L = _system(seed, scale, width)
    value, grads = FAST(xi, mu, L, beta)
    want, want_grads = BRUTE(xi, beta, mu, L)
    np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-5)
    # the broad one (seed 2) spreads the sum over many relabelings: not only the largest term
    for got, expected in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_it_is_used_where_it_saves_solves():
    groups = relabeling_groups(RELABELINGS)
    assert not worth_it(groups, N)  # 27 relabelings, 27 moved coordinates: not here
    assert worth_it(groups._replace(pattern=np.zeros((243, 3), int)), 93)  # capped Ala3's
