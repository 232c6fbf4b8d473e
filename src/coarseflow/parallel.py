"""Data parallelism over the devices JAX sees, through ``jax.sharding``: one mesh axis, "batch".

A batch of independent draws (one update's samples, the ladder's samples) is split along its
first axis over the mesh's devices; the model's parameters and the optimiser's state are
replicated. Inside a jitted function one sharding constraint on the batch's first array is
enough: XLA's sharding propagation splits everything computed per sample from it, and the means
over the batch become all-reduces. No communication of our own. The result equals the
one-device result up to the order of floating-point sums: random draws do not depend on how
they are sharded (``jax_threefry_partitionable``, JAX's default).

``mesh=None`` everywhere means one device, the code path of a plain ``jax.jit``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from coarseflow.checks import is_int
from coarseflow.errors import ConfigError

BATCH = "batch"  # the mesh's one axis


def data_mesh(n_devices: int | None = None) -> Mesh | None:
    """A mesh of the first ``n_devices`` devices (default: all that JAX sees) on the axis
    "batch"; None for one device."""
    devices = jax.devices()
    n = len(devices) if n_devices is None else n_devices
    if not is_int(n) or not 1 <= n <= len(devices):
        raise ConfigError(
            f"devices: expected an integer from 1 to {len(devices)} (JAX sees "
            f"{len(devices)} {devices[0].platform} device(s)), got {n_devices!r}"
        )
    return None if n == 1 else Mesh(np.array(devices[:n]), (BATCH,))


def device_count(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def check_divisible(size: int, mesh: Mesh | None, what: str) -> None:
    """A ConfigError unless ``size`` splits evenly over the mesh's devices (the estimator is
    never changed to make it fit)."""
    n = device_count(mesh)
    if size % n:
        raise ConfigError(
            f"{what} = {size} does not split over {n} devices: use a multiple of {n}, "
            "or fewer devices (--devices)"
        )


def shard_batch(tree, mesh: Mesh | None):
    """Inside a jitted function: ``tree``'s arrays split along their first (batch) axis over
    ``mesh``; unchanged without a mesh or where that axis does not divide evenly."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(BATCH))

    def constrain(a):
        if getattr(a, "ndim", 0) == 0 or a.shape[0] % mesh.size:
            return a
        return jax.lax.with_sharding_constraint(a, sharding)

    return jax.tree.map(constrain, tree)


def replicate(tree, mesh: Mesh | None):
    """``tree``'s arrays copied to every device of ``mesh`` (parameters, optimiser state);
    unchanged without a mesh."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda a: jax.device_put(a, sharding) if isinstance(a, jax.Array) else a, tree
    )
