"""A target from any user-supplied JAX energy function."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from coarseflow.errors import ConfigError
from coarseflow.partition import Partition
from coarseflow.targets.base import AbstractTarget


def _as_bound(name: str, value, n_x: int) -> tuple[float, ...]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"energy target {name}: expected a number or {n_x} numbers (one per X coordinate), "
            f"got {value!r}"
        ) from err
    if arr.ndim == 0:
        arr = np.full(n_x, float(arr))
    if arr.shape != (n_x,):
        raise ConfigError(
            f"energy target {name}: expected a number or shape ({n_x},) (one per X coordinate), "
            f"got shape {arr.shape}"
        )
    return tuple(float(v) for v in arr)


class EnergyTarget(AbstractTarget):
    """Wraps a reduced energy u(x) (one configuration (n,) -> scalar, pure JAX) as a target.

    ``partition`` says which coordinates are X; ``lower`` and ``upper`` (a number, or one number
    per X coordinate) give the box that holds essentially all the mass of p_beta(X) for the betas
    you intend to train at (the flow over X lives there). ``energy_fn`` is checked once with
    ``jax.eval_shape`` (no compilation) to return a scalar for an input of shape (n,).

    Example:

    >>> import jax.numpy as jnp
    >>> from coarseflow.partition import Partition
    >>> from coarseflow.targets import EnergyTarget
    >>> def u(x):  # a double well in x[0], a stiff harmonic x[1] coupled to it
    ...     return (x[0] ** 2 - 1.0) ** 2 / 0.1 + 0.5 * (x[1] - x[0]) ** 2 / 0.01
    >>> target = EnergyTarget(u, Partition.from_x(2, [0]), lower=-2.5, upper=2.5)
    >>> float(target.energy(jnp.array([1.0, 1.0])))
    0.0
    >>> target.x_bounds()
    (array([-2.5]), array([2.5]))
    """

    energy_fn: Callable[[Float[Array, " n"]], Float[Array, ""]]
    partition: Partition = eqx.field(static=True)
    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)

    def __init__(
        self,
        energy_fn: Callable[[Float[Array, " n"]], Float[Array, ""]],
        partition: Partition,
        lower,
        upper,
    ):
        if not isinstance(partition, Partition):
            raise ConfigError(
                f"energy target partition: expected a coarseflow Partition, got {type(partition)!r}"
            )
        self.energy_fn = energy_fn
        self.partition = partition
        self.lower = _as_bound("lower", lower, partition.n_x)
        self.upper = _as_bound("upper", upper, partition.n_x)

    def __check_init__(self):
        if not callable(self.energy_fn):
            raise ConfigError(
                "energy target energy_fn: expected a callable u(x) -> scalar, "
                f"got {self.energy_fn!r}"
            )
        lo, hi = np.asarray(self.lower), np.asarray(self.upper)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ConfigError(
                "energy target lower/upper: expected finite numbers, "
                f"got {self.lower} / {self.upper}"
            )
        bad = [i for i in range(len(lo)) if not lo[i] < hi[i]]
        if bad:
            raise ConfigError(
                f"energy target lower/upper: expected lower < upper for every X coordinate; "
                f"fails at X indices {bad} (lower {self.lower}, upper {self.upper})"
            )
        n = self.partition.n
        try:
            out = jax.eval_shape(self.energy_fn, jax.ShapeDtypeStruct((n,), jnp.zeros(()).dtype))
        except Exception as err:
            raise ConfigError(
                f"energy target energy_fn: failed on an input of shape ({n},): "
                f"{type(err).__name__}: {err}"
            ) from err
        if not hasattr(out, "shape") or tuple(out.shape) != ():
            shape = getattr(out, "shape", type(out).__name__)
            raise ConfigError(
                f"energy target energy_fn: expected a scalar energy for an input of shape "
                f"({n},), got shape {shape}"
            )

    def energy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        return self.energy_fn(jnp.asarray(x))

    def x_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.lower), np.array(self.upper)
