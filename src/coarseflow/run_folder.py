"""A run directory's folder: the paths of its files, who owns it (its marker) and its lock.

A run directory is owned (docs/reliability.md): ``claim`` creates it or recognises it as a run by
its marker ``coarseflow-run.json`` (the resolved config's hash and the coarseflow version) and
refuses any other non-empty folder; a process writing it holds an exclusive ``flock`` on
``coarseflow-run.lock`` (released by the OS when the process dies, so a killed writer's lock is
simply taken over).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from coarseflow.atomic_files import atomic_write_text
from coarseflow.errors import ConfigError

MARKER = "coarseflow-run.json"  # what makes a folder a run: config hash + coarseflow version
LOCK = "coarseflow-run.lock"  # flock'ed while a process writes the run; holds pid + host
# what a run directory may hold; a folder with anything else and no marker is not a run
RUN_NAMES = frozenset(
    {
        "config.toml",
        "metrics.jsonl",
        "model.json",
        "init.json",
        "checkpoints",
        "figures",
        "samples",
        "summary.json",
        MARKER,
        LOCK,
    }
)


def config_hash(raw: dict) -> str:
    """SHA-256 (hex) of a resolved config table: key order and TOML layout do not count."""
    text = json.dumps(raw, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def coarseflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coarseflow")
    except PackageNotFoundError:
        return "unknown"


class RunFolder:
    """The folder of one training run under ``root``: its files' paths, its ownership and its
    lock (:class:`coarseflow.runs.RunDir` adds the metrics and checkpoints in it)."""

    def __init__(self, root):
        self.root = Path(root)
        self._lock_fd: int | None = None  # open while this object holds the run's lock
        self._lock_depth = 0  # nested locked() blocks of this object (train inside a workflow)

    config_path = property(lambda self: self.root / "config.toml")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    checkpoint_dir = property(lambda self: self.root / "checkpoints")
    figures_dir = property(lambda self: self.root / "figures")
    samples_dir = property(lambda self: self.root / "samples")
    summary_path = property(lambda self: self.root / "summary.json")
    marker_path = property(lambda self: self.root / MARKER)
    lock_path = property(lambda self: self.root / LOCK)

    # ownership -------------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether ``root`` is a run: it has the marker, or it is a run made before the marker
        existed (config.toml and checkpoints/, or config.toml and only a run's files)."""
        if self.marker_path.is_file():
            return True
        if not self.config_path.is_file():
            return False
        names = {p.name for p in self.root.iterdir()}
        return self.checkpoint_dir.is_dir() or all(_run_name(n) for n in names)

    def claim(self, config_hash: str, hash_of_config_file: Callable[[Path], str]) -> None:
        """Make ``root`` this config's run and take its lock (held until ``release``).

        Creates ``root`` if missing; accepts an empty folder or a run of the same config
        (``config_hash``, see :func:`config_hash`); refuses, with one line and before writing
        anything, an existing file, a non-empty folder that is not a run, and a run of another
        config. A run made before the marker existed is adopted: its config.toml, hashed by
        ``hash_of_config_file``, must match, and the marker is written.
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--out {root}: exists and is not a directory")
        # a folder holding only the lock (and the marker's temporary file) is a claim killed
        # before it wrote the marker
        leftovers = (
            [p.name for p in root.iterdir() if p.name != LOCK and not _is_tmp(p.name)]
            if root.is_dir()
            else []
        )
        if leftovers and not self.is_run():
            raise ConfigError(
                f"--out {root}: a non-empty folder that is not a coarseflow run "
                f"(no {MARKER}); choose a new or empty folder"
            )
        root.mkdir(parents=True, exist_ok=True)
        self.acquire()
        try:
            recorded = self._recorded_hash(hash_of_config_file)
            if recorded is not None and recorded != config_hash:
                source = MARKER if self.marker_path.is_file() else "its config.toml"
                raise ConfigError(
                    f"run directory {root}: the config differs from the one it "
                    f"was made with ({source}: config hash {recorded[:12]}..., "
                    f"this config {config_hash[:12]}...); resume or restart "
                    "with the same config, or choose another --out"
                )
            if not self.marker_path.is_file():
                atomic_write_text(
                    self.marker_path,
                    json.dumps(
                        {
                            "coarseflow_run": 1,
                            "config_hash": config_hash,
                            "coarseflow_version": coarseflow_version(),
                        },
                        indent=1,
                    ),
                )
        except BaseException:
            self.release()
            raise

    def _recorded_hash(self, hash_of_config_file) -> str | None:
        """The config hash this run was made with (marker, else its config.toml), or None."""
        if self.marker_path.is_file():
            try:
                recorded = json.loads(self.marker_path.read_text())["config_hash"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise ConfigError(
                    f"{self.marker_path}: not a readable run marker (expected "
                    "JSON with 'config_hash'); was it edited?"
                ) from None
            if not isinstance(recorded, str):
                raise ConfigError(f"{self.marker_path}: config_hash: expected a string")
            return recorded
        if self.config_path.is_file():
            return hash_of_config_file(self.config_path)
        return None

    # lock ------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the run's exclusive lock (reentrant for this object) or refuse in one line.

        ``flock`` belongs to the open file: the OS drops it when the holder exits, killed or
        not, so a stale lock never blocks anyone. On first taking it, the temporary files
        that a killed writer left behind are removed (only a writer makes them).
        """
        if self._lock_fd is not None:
            self._lock_depth += 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise ConfigError(
                f"run directory {self.root} is being written by another process "
                f"({holder}; {LOCK}); wait for it or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd, self._lock_depth = fd, 1
        self.remove_temporary_files()

    def release(self) -> None:
        """Give back one level of the lock taken by ``acquire``."""
        if self._lock_fd is None:
            return
        self._lock_depth -= 1
        if self._lock_depth == 0:
            fd, self._lock_fd = self._lock_fd, None
            os.ftruncate(fd, 0)  # the pid says who holds it; nobody now
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def locked(self):
        """Hold the run's lock for the block (see ``acquire``)."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def remove_temporary_files(self) -> list[Path]:
        """Delete the ``.NAME.*.tmp`` files of atomic writes that a killed process left."""
        removed = []
        for folder in (self.root, self.checkpoint_dir, self.figures_dir):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
        return removed


def _run_name(name: str) -> bool:
    """Whether a run directory's own files may have this name (a leftover .tmp included)."""
    return name in RUN_NAMES or _is_tmp(name)


def _is_tmp(name: str) -> bool:
    """Whether ``name`` is that of an atomic write's temporary file (.NAME.XXXX.tmp)."""
    return name.startswith(".") and name.endswith(".tmp")
