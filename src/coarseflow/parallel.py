"""Data parallelism over the devices JAX sees, through ``jax.sharding``: one mesh axis, "batch";
and several processes (hosts) through ``jax.distributed``.

A batch of independent draws (one update's samples, the ladder's samples, a replica-exchange
run's chains) is split along one axis over the mesh's devices; the model's parameters and the
optimiser's state are replicated. Inside a jitted function one sharding constraint on the
batch's first array is enough: XLA's sharding propagation splits everything computed per
sample from it, and the means over the batch become all-reduces. No communication of our own.
The result equals the one-device result up to the order of floating-point sums: random draws
do not depend on how they are sharded (``jax_threefry_partitionable``, JAX's default).

Several processes (one per host, or one per GPU): :func:`initialize` starts
``jax.distributed``; :func:`data_mesh` is then one mesh over every process's devices, and every
process runs the same jitted programs on it (JAX's multi-controller model). The draws are made
on the devices from a key all processes share, each device drawing only its own rows, so each
process computes its part of the batch without any host data being fed or exchanged; only
arrays that come back to a host are gathered (:func:`to_host`), and what process 0 alone
decides (the start of a resumed run) is sent to the others (:func:`broadcast_bytes`).

``mesh=None`` everywhere means one device, the code path of a plain ``jax.jit``.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from coarseflow.checks import is_int
from coarseflow.errors import ConfigError

BATCH = "batch"  # the mesh's one axis
# how long a finished process waits for the others before leaving jax.distributed (seconds):
# process 0 may evaluate the run for a long while after training
SHUTDOWN_WAIT_S = 24 * 3600


def data_mesh(n_devices: int | None = None, *, local: bool = False) -> Mesh | None:
    """A mesh of the first ``n_devices`` devices (default: all that JAX sees) on the axis
    "batch"; None for one device.

    In a run of several processes, JAX sees every process's devices and the mesh spans all
    of them (``n_devices`` None or their total); ``local=True``: only this process's devices
    (what process 0 alone computes on, e.g. the evaluation after training)."""
    devices = jax.local_devices() if local else jax.devices()
    n = len(devices) if n_devices is None else n_devices
    if not is_int(n) or not 1 <= n <= len(devices):
        raise ConfigError(
            f"devices: expected an integer from 1 to {len(devices)} (JAX sees "
            f"{len(devices)} {devices[0].platform} device(s)), got {n_devices!r}"
        )
    if not local and jax.process_count() > 1 and n != len(devices):
        raise ConfigError(
            f"devices: a run of {jax.process_count()} processes uses all {len(devices)} "
            f"devices of all processes, got {n_devices!r} (leave --devices out)"
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


def shard_batch(tree, mesh: Mesh | None, axis: int = 0):
    """Inside a jitted function: ``tree``'s arrays split along their batch axis (``axis``,
    default the first) over ``mesh``; unchanged without a mesh, and arrays without that axis
    or where it does not divide evenly are left as they are."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(*(None,) * axis, BATCH))

    def constrain(a):
        if getattr(a, "ndim", 0) <= axis or a.shape[axis] % mesh.size:
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


def to_host(x) -> np.ndarray:
    """``x`` as a NumPy array on this host: the whole array, gathered from the other processes
    where its rows are split over several (``np.asarray`` alone refuses such an array); every
    process gets it. One process: ``np.asarray(x)``."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ------------------------------------------------------------------------------ several processes

_ADDRESS = re.compile(r"\[?[A-Za-z0-9_.:-]+\]?:(\d{1,5})")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    detect: bool = False,
) -> int:
    """Join a run of several processes (``jax.distributed.initialize``) before JAX computes
    anything; returns the number of processes (1: nothing was started).

    ``coordinator`` ("HOST:PORT" of process 0), ``num_processes`` and ``process_id``: as
    given; those left out (None) are detected by JAX from a SLURM or Open MPI allocation (or
    $JAX_COORDINATOR_ADDRESS). ``detect``: start even when none is given, from the allocation
    alone. Nothing given and no ``detect``: one process. Calling it again is a no-op.
    """
    given = (coordinator, num_processes, process_id)
    if jax.distributed.is_initialized():
        return jax.process_count()
    if all(v is None for v in given) and not detect:
        return 1
    if coordinator is not None and not _ADDRESS.fullmatch(str(coordinator)):
        raise ConfigError(f"--coordinator: expected HOST:PORT, got {coordinator!r}")
    if num_processes is not None and (not is_int(num_processes) or num_processes < 1):
        raise ConfigError(f"--num-processes: expected an integer >= 1, got {num_processes!r}")
    if process_id is not None and (
        not is_int(process_id)
        or process_id < 0
        or (num_processes is not None and process_id >= num_processes)
    ):
        bound = "" if num_processes is None else f" and < --num-processes ({num_processes})"
        raise ConfigError(f"--process-id: expected an integer >= 0{bound}, got {process_id!r}")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            shutdown_timeout_seconds=SHUTDOWN_WAIT_S,
        )
    except (ValueError, TypeError) as err:  # JAX: what it could not find
        said = str(err).rstrip(".")
        raise ConfigError(
            f"several processes: {said}; give --coordinator HOST:PORT, --num-processes P and "
            "--process-id I, or run inside a SLURM / Open MPI allocation that JAX detects"
        ) from None
    _connect_devices()
    return jax.process_count()


def _connect_devices() -> None:
    """One broadcast from process 0 and one sum over every device, while all processes are at
    the same point (just joined). CPU collectives (gloo) connect a group of devices on its
    first use and give up when the others have not come within 30 s; without this, the first
    use would be process 0 sending the run's start after its own minutes of reading files and
    fitting, or the first update. Connected groups wait as long as needed. A process that
    cannot reach the others fails here, before any work."""
    from jax.experimental import multihost_utils

    multihost_utils.broadcast_one_to_all(np.zeros(1, np.int32))
    mesh = Mesh(np.array(jax.devices()), (BATCH,))
    ones = np.ones(mesh.size, np.float32)
    total = jax.jit(
        lambda x: jax.numpy.sum(
            jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(BATCH)))
        )
    )(ones)
    if float(total) != mesh.size:
        raise RuntimeError(f"several processes: a sum over {mesh.size} devices gave {total}")


def process_count() -> int:
    """The number of processes of this run (1 without :func:`initialize`)."""
    return jax.process_count()


def is_main_process() -> bool:
    """Whether this is process 0: the one that reads and writes the run directory."""
    return jax.process_index() == 0


def broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's ``data`` on every process (the others pass None); every process must call
    it. One process: ``data`` itself."""
    if jax.process_count() == 1:
        return data
    from jax.experimental import multihost_utils

    main = is_main_process()
    if main and data is None:
        raise ValueError("broadcast_bytes: process 0 must give the data")
    size = np.array([len(data) if main else 0], np.int32)
    n = int(multihost_utils.broadcast_one_to_all(size)[0])
    buffer = np.frombuffer(data, np.uint8) if main else np.zeros(n, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()
