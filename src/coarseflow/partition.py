"""The coarse-graining map as a partition of coordinates into slow X and fast Y."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from coarseflow.errors import ConfigError


@dataclass(frozen=True)
class Partition:
    """Index lists that split x (n,) into X = x[x_indices] (n_x,) and Y = x[y_indices] (n_y,).

    Validated on construction: indices are integers in [0, n), disjoint, together complete,
    and neither part is empty. A permutation, so |det dPhi| = 1.
    """

    n: int
    x_indices: tuple[int, ...]
    y_indices: tuple[int, ...]

    def __post_init__(self):
        x, y = tuple(self.x_indices), tuple(self.y_indices)
        object.__setattr__(self, "x_indices", tuple(int(i) for i in x))
        object.__setattr__(self, "y_indices", tuple(int(i) for i in y))
        if not isinstance(self.n, int | np.integer) or self.n < 2:
            raise ConfigError(f"partition: expected a dimension n >= 2, got {self.n!r}")
        for name, idx in (("x_indices", self.x_indices), ("y_indices", self.y_indices)):
            if len(idx) == 0:
                raise ConfigError(f"partition: {name} is empty; both X and Y need coordinates")
            bad = [i for i in idx if not 0 <= i < self.n]
            if bad:
                raise ConfigError(f"partition: {name} has indices outside [0, {self.n}): {bad}")
            if len(set(idx)) != len(idx):
                raise ConfigError(f"partition: {name} repeats an index")
        both = sorted(set(self.x_indices) & set(self.y_indices))
        if both:
            raise ConfigError(f"partition: indices {both} are in both x_indices and y_indices")
        missing = sorted(set(range(self.n)) - set(self.x_indices) - set(self.y_indices))
        if missing:
            raise ConfigError(f"partition: indices {missing} are in neither X nor Y")

    @classmethod
    def from_x(cls, n: int, x_indices) -> Partition:
        """X = the given indices, Y = every other coordinate in increasing order."""
        x = [int(i) for i in x_indices]
        return cls(n, tuple(x), tuple(i for i in range(n) if i not in set(x)))

    @property
    def n_x(self) -> int:
        return len(self.x_indices)

    @property
    def n_y(self) -> int:
        return len(self.y_indices)

    def split(self, x: Float[Array, "... n"]) -> tuple[Float[Array, "... n_x"], Array]:
        """(X (..., n_x), Y (..., n_y)) of x (..., n)."""
        x = jnp.asarray(x)
        return x[..., np.asarray(self.x_indices)], x[..., np.asarray(self.y_indices)]

    def merge(self, X: Float[Array, "... n_x"], Y: Float[Array, "... n_y"]) -> Array:
        """x (..., n) with X and Y put back at their indices."""
        X, Y = jnp.asarray(X), jnp.asarray(Y)
        order = np.argsort(np.asarray(self.x_indices + self.y_indices))
        return jnp.concatenate([X, Y], axis=-1)[..., order]
