"""Analytic gradients for energy terms, as custom JVPs that keep autodiff complete.

Reverse-mode autodiff through pair matrices and their reductions builds many small kernels
that are slow on CPU; a term that knows its gradient in closed form can supply it here. Only
the gradient in the first array argument (positions, or a geometric intermediate) is
analytic: tangents in any parameter fall back to plain autodiff of the energy, so derivatives
in force-field parameters stay correct, and higher derivatives work (the analytic gradient is
itself written in differentiable jnp).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero


def with_analytic_gradient(value_and_gradient: Callable) -> Callable:
    """Decorator for ``fn(static, x, *params) -> scalar``.

    ``value_and_gradient(static, x, *params)`` must return (fn's value, d value / d x with the
    shape of x). ``static`` is hashable configuration, never differentiated.
    """

    def decorate(fn: Callable) -> Callable:
        wrapped = jax.custom_jvp(fn, nondiff_argnums=(0,))

        def jvp(static, primals, tangents):
            x_dot, *param_dots = tangents
            if isinstance(x_dot, SymbolicZero) or not all(
                isinstance(t, SymbolicZero) for t in param_dots
            ):
                tangents = tuple(_instantiate(t) for t in tangents)
                return jax.jvp(functools.partial(fn, static), primals, tangents)
            value, gradient = value_and_gradient(static, *primals)
            return value, jnp.sum(gradient * x_dot)

        wrapped.defjvp(jvp, symbolic_zeros=True)
        return functools.wraps(fn)(wrapped)

    return decorate


def _instantiate(tangent):
    if not isinstance(tangent, SymbolicZero):
        return tangent
    if tangent.dtype == jax.dtypes.float0:  # tangent of an integer or boolean argument
        return np.zeros(tangent.shape, dtype=jax.dtypes.float0)
    return jnp.zeros(tangent.shape, tangent.dtype)
