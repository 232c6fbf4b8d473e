"""coarseflow.triangular.solve_lower: LAPACK's values and gradients, without a LAPACK call on the
CPU (the batched LAPACK kernels of jaxlib 0.10.2 can hang a program there)."""

import jax
import jax.numpy as jnp
import numpy as np

from coarseflow.triangular import solve_lower


def _system(n=7, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    L = np.tril(rng.normal(size=(batch, n, n))) + 3.0 * np.eye(n)
    L[:, 0, n - 1] = np.inf  # above the diagonal: must be ignored, not multiplied by zero
    return jnp.asarray(L), jnp.asarray(rng.normal(size=(batch, n)))


def _lapack(L, b):
    return jax.scipy.linalg.solve_triangular(L, b, lower=True)


def test_values_and_gradients_equal_lapacks():
    L, b = _system()
    x = jax.vmap(solve_lower)(L, b)
    np.testing.assert_allclose(jnp.einsum("bij,bj->bi", jnp.tril(L), x), b, atol=1e-5)
    np.testing.assert_allclose(x, jax.vmap(_lapack)(L, b), rtol=1e-5, atol=1e-6)

    def loss(solve):
        return lambda L, b: jnp.sum(jnp.sin(jax.vmap(solve)(L, b)) ** 2)

    ours = jax.grad(loss(solve_lower), argnums=(0, 1))(L, b)
    theirs = jax.grad(loss(_lapack), argnums=(0, 1))(L, b)
    for got, want in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(ours[0])[:, 0, -1] == 0.0)  # nothing reaches the upper part


def test_one_matrix_many_right_hand_sides():
    L, b = _system(batch=1)
    B = jnp.asarray(np.random.default_rng(1).normal(size=(6, 7)))
    x = jax.vmap(solve_lower, in_axes=(None, 0))(L[0], B)
    np.testing.assert_allclose(x, jax.vmap(_lapack, in_axes=(None, 0))(L[0], B), rtol=1e-5)


def test_no_lapack_call_on_the_cpu():
    L, b = _system()
    f = jax.jit(jax.grad(lambda L, b: jnp.sum(jax.vmap(solve_lower)(L, b))))
    assert "lapack" not in f.lower(L, b).as_text()
    assert "lapack" in jax.jit(jax.vmap(_lapack)).lower(L, b).as_text()  # what it replaces
