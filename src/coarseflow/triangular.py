"""A lower-triangular solve that does not hang XLA's CPU runtime.

On the CPU, jaxlib 0.10.2 runs a batched LAPACK call (``solve_triangular``'s trsm, Cholesky,
...) by handing chunks of its batch to XLA's intra-op thread pool and blocking until they are
done. When a compiled program runs as many such calls side by side as the pool has threads
(the pool is the machine's core count: 2 here), every thread waits for work that no thread is
left to do, and the program never returns: no CPU used, every thread parked in
``jax::ParallelBatchMap``'s ``BlockingCounter::Wait`` (gdb on a hung fab update of capped Ala3,
2026-12-07; docs/benchmarks.md, Session 25). So on the CPU :func:`solve_lower` is a forward
substitution of our own, with its gradient by a backward substitution (no per-step state kept);
on other platforms it is ``jax.scipy.linalg.solve_triangular``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def solve_lower(L: Float[Array, "n n"], b: Float[Array, " n"]) -> Float[Array, " n"]:
    """x (n,) with L x = b, for L (n, n) lower triangular (its upper part is ignored); vmap
    over a batch. Reverse-mode differentiable in L and b."""
    return jax.lax.platform_dependent(
        L,
        b,
        cpu=_substitution_solve,
        default=lambda L, b: jax.scipy.linalg.solve_triangular(L, b, lower=True),
    )


@jax.custom_vjp
def _substitution_solve(L, b):
    return _forward(L, b)


def _forward(L, b):
    """Forward substitution: x_i = (b_i - sum_{j<i} L_ij x_j) / L_ii, i = 0 .. n-1."""
    L = jnp.tril(L)  # x_j = 0 for j >= i at step i, but 0 * an inf above the diagonal is NaN

    def step(i, x):
        return x.at[i].set((b[i] - L[i] @ x) / L[i, i])

    return jax.lax.fori_loop(0, b.shape[-1], step, jnp.zeros_like(b))


def _backward(L, g):
    """Backward substitution: y with L^T y = g, i = n-1 .. 0."""
    L = jnp.tril(L)
    n = g.shape[-1]

    def step(k, y):
        i = n - 1 - k
        return y.at[i].set((g[i] - L[:, i] @ y) / L[i, i])

    return jax.lax.fori_loop(0, n, step, jnp.zeros_like(g))


def _solve_fwd(L, b):
    x = _forward(L, b)
    return x, (L, x)


def _solve_bwd(residuals, x_bar):
    # x = L^-1 b: dx = L^-1 (db - dL x), so b_bar = L^-T x_bar and L_bar = -b_bar x^T, of
    # which only the lower triangle reaches L
    L, x = residuals
    b_bar = _backward(L, x_bar)
    return -jnp.tril(jnp.outer(b_bar, x)), b_bar


_substitution_solve.defvjp(_solve_fwd, _solve_bwd)
