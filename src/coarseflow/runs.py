"""A run directory: resolved config, metrics.jsonl, one checkpoint per beta, samples, figures.

Checkpoints are equinox leaf serialisations (no pickle) plus a JSON metadata file, both written
atomically (temporary file + rename), so a killed run never leaves a half-written checkpoint.
The metadata holds the SHA-256 of the .eqx bytes, so a checkpoint damaged later (a truncated
copy, a full disk, a bit flip) is recognised, reported by name and skipped.

A run directory is owned (docs/reliability.md): ``claim`` creates it or recognises it as a run by
its marker ``coarseflow-run.json`` (the resolved config's hash and the coarseflow version) and
refuses any other non-empty folder; a process writing it holds an exclusive ``flock`` on
``coarseflow-run.lock`` (released by the OS when the process dies, so a killed writer's lock is
simply taken over).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from coarseflow.checks import is_finite, is_int, is_number, show
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
REQUIRED_META = ("beta", "index", "step", "next_beta")  # what resume and evaluate read


class DamagedCheckpoint(ConfigError):
    """A checkpoint file that cannot be used: the message names it and says why."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


_warned: set[str] = set()  # one warning per damaged file and process, however often it is read


def warn_once(message: str) -> None:
    """Print ``coarseflow: warning: message`` on stderr, once per process."""
    if message not in _warned:
        _warned.add(message)
        print(f"coarseflow: warning: {message}", file=sys.stderr)


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


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (NaN / inf: a broken model)."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in leaves)


def strict_json(obj, **kwargs) -> str:
    """JSON text of ``obj`` in which every non-finite number is null: json.dumps would write
    NaN / Infinity, which no strict JSON reader accepts. NumPy and JAX scalars and arrays become
    numbers and lists. ``kwargs``: json.dumps's (indent, ...)."""
    return json.dumps(_plain(obj), allow_nan=False, **kwargs)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, str | bytes):
        obj = np.asarray(obj)
        return _plain(obj.tolist()) if obj.ndim else _plain(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the usual permissions (umask applied)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


class RunDir:
    """The files of one training run under ``root``."""

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

    def require_existing(self) -> RunDir:
        if not self.config_path.is_file():
            raise ConfigError(f"run directory {self.root}: no config.toml; is it a training run?")
        return self

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

    # metrics ---------------------------------------------------------------------------------
    def append_metrics(self, records: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            for r in records:
                f.write(strict_json(r) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl. A torn last line (a kill mid-append, a full disk) is
        dropped silently; any other line that is not a JSON record is dropped with a warning."""
        if not self.metrics_path.exists():
            return []
        text = self.metrics_path.read_bytes().decode(errors="replace")
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            elif number < len(lines) - 1 or text.endswith("\n"):  # not the torn last line
                warn_once(f"{self.metrics_path}:{number}: not a metrics record; dropped")
        return records

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records with step < last_step (those a checkpoint already covers); every
        (re)start calls it, so the lines of updates a kill undid are not kept twice."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.read_metrics() if r["step"] < last_step]
        atomic_write_text(self.metrics_path, "".join(strict_json(r) + "\n" for r in kept))

    # checkpoints -----------------------------------------------------------------------------
    def checkpoint_paths(self, beta: float) -> tuple[Path, Path]:
        # the label has a decimal point, so build names by string, not with_suffix
        stem = f"beta_{ladder_label(beta)}"
        return self.checkpoint_dir / f"{stem}.eqx", self.checkpoint_dir / f"{stem}.json"

    def save_checkpoint(self, beta: float, tree, meta: dict) -> Path:
        """Write the pytree ``tree`` and ``meta`` (JSON-able; gets 'beta' and 'eqx_sha256',
        the checksum of the .eqx bytes) for this beta."""
        eqx_path, json_path = self.checkpoint_paths(beta)
        buffer = io.BytesIO()
        eqx.tree_serialise_leaves(buffer, tree)
        data = buffer.getvalue()
        atomic_write_bytes(eqx_path, lambda f: f.write(data))
        # metadata last: a checkpoint counts as written once its .json exists
        atomic_write_text(
            json_path,
            strict_json(
                {**meta, "beta": float(beta), "eqx_sha256": hashlib.sha256(data).hexdigest()},
                indent=1,
            ),
        )
        return eqx_path

    def _scan(self) -> tuple[list[dict], list[tuple[Path, str]]]:
        """(metadata of checkpoints whose .json is sound, [(file, what is wrong)])."""
        found, damaged = [], []
        for json_path in sorted(self.checkpoint_dir.glob("beta_*.json")):
            eqx_path = json_path.parent / (json_path.name[: -len(".json")] + ".eqx")
            problem = None if eqx_path.exists() else f"its data file {eqx_path.name} is missing"
            meta = None
            if problem is None:
                meta, problem = _read_meta(json_path)
            if problem is None:
                found.append({**meta, "path": str(eqx_path)})
            else:
                damaged.append((json_path, problem))
        return sorted(found, key=lambda m: m["beta"]), damaged

    def checkpoints(self) -> list[dict]:
        """Metadata of every complete checkpoint, in increasing beta, with 'path' added.

        A .eqx without its .json is a write that a kill interrupted: not a checkpoint, silently.
        A .json that is not valid metadata (or whose .eqx is gone) is damaged: skipped with a
        one-line warning naming it.
        """
        found, damaged = self._scan()
        for path, problem in damaged:
            warn_once(f"{path}: {problem}; checkpoint skipped")
        return found

    def set_aside_damaged(self, also: tuple[Path, ...] = ()) -> list[Path]:
        """Rename the damaged checkpoints (a bad .json, see ``checkpoints``) and the files
        ``also`` to NAME.damaged, so that a resumed run writes those betas afresh and nothing
        is deleted. Only a lock holder may."""
        moved = []
        for path, problem in self._scan()[1]:
            warn_once(f"{path}: {problem}; renamed to {path.name}.damaged")
            also = (*also, path, path.with_suffix(".eqx"))
        for path in also:
            if path.exists():
                path.replace(path.with_name(path.name + ".damaged"))
                moved.append(path)
        return moved

    def refuse_if_damaged(self) -> None:
        """One line if the run has checkpoint files but no sound one (nothing to resume)."""
        damaged = self._scan()[1]
        if damaged and not self._scan()[0]:
            path, problem = damaged[-1]
            raise ConfigError(
                f"run directory {self.root}: no intact checkpoint ({path}: "
                f"{problem}; damaged: {', '.join(p.name for p, _ in damaged)})"
            )

    def find_checkpoint(self, beta: float | None = None) -> dict:
        """The checkpoint of ``beta``, or the last one if beta is None.

        ``beta`` matches a checkpoint within 1e-9 or to the 6 significant digits that the error
        message and the summaries print, so a value copied from them works.
        """
        ckpts = self.checkpoints()
        if not ckpts:
            raise ConfigError(f"run directory {self.root}: no checkpoints yet")
        if beta is None:
            return ckpts[-1]
        best = min(ckpts, key=lambda m: abs(m["beta"] - beta))
        if abs(best["beta"] - beta) > 1e-9 and f"{best['beta']:.6g}" != f"{beta:.6g}":
            have = ", ".join(f"{m['beta']:.6g}" for m in ckpts)
            raise ConfigError(f"--beta {beta}: no checkpoint for that beta; have {have}")
        return best

    def load_checkpoint(self, template, meta: dict, validate: Callable | None = None):
        """The pytree of checkpoint ``meta`` in the structure of ``template``.

        Raises DamagedCheckpoint (one line naming the file) when the file is unreadable, fails
        its checksum, or, lacking one (older runs), cannot be deserialised, or when
        ``validate(tree)`` is false. A file that passes its checksum but does not fit
        ``template`` raises equinox's own error: it is intact, of another structure.
        """
        path = Path(meta["path"])
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DamagedCheckpoint(path, f"unreadable ({err.strerror})") from None
        checksum = meta.get("eqx_sha256")
        if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
            raise DamagedCheckpoint(
                path, f"damaged (its bytes do not match the checksum in {path.stem}.json)"
            )
        try:
            tree = eqx.tree_deserialise_leaves(io.BytesIO(data), template)
        except Exception as err:
            if checksum is not None:
                raise
            raise DamagedCheckpoint(
                path, f"damaged or not of this config ({type(err).__name__})"
            ) from None
        if validate is not None and not validate(tree):
            raise DamagedCheckpoint(path, "holds non-finite parameters")
        return tree

    def load_newest(
        self,
        template,
        validate: Callable | None = None,
        metas: list[dict] | None = None,
        set_aside: bool = False,
    ):
        """(metadata, pytree) of the newest (largest beta) intact checkpoint among ``metas``
        (default: all). Each damaged one newer than it is skipped with a one-line warning
        naming it and, with ``set_aside`` (a resuming writer), renamed to NAME.damaged so that
        training writes that beta afresh. None intact: one line (ConfigError)."""
        metas = self.checkpoints() if metas is None else metas
        damaged: list[DamagedCheckpoint] = []
        for meta in reversed(metas):
            try:
                tree = self.load_checkpoint(template, meta, validate)
            except DamagedCheckpoint as err:
                damaged.append(err)
                continue
            for err in damaged:
                warn_once(
                    f"{err}; skipped, using the newest intact checkpoint "
                    f"(beta = {meta['beta']:.6g})"
                )
                if set_aside:
                    self.set_aside_damaged((err.path, err.path.with_suffix(".json")))
            return meta, tree
        if not damaged:
            raise ConfigError(f"run directory {self.root}: no checkpoints yet")
        names = ", ".join(err.path.name for err in damaged)
        raise ConfigError(
            f"run directory {self.root}: no intact checkpoint ({damaged[0]}; damaged: {names})"
        )


def _run_name(name: str) -> bool:
    """Whether a run directory's own files may have this name (a leftover .tmp included)."""
    return name in RUN_NAMES or _is_tmp(name)


def _is_tmp(name: str) -> bool:
    """Whether ``name`` is that of an atomic write's temporary file (.NAME.XXXX.tmp)."""
    return name.startswith(".") and name.endswith(".tmp")


def _read_meta(json_path: Path) -> tuple[dict | None, str | None]:
    """(metadata, None) of a checkpoint's .json, or (None, what is wrong with it)."""
    try:
        meta = json.loads(json_path.read_bytes())
    except (OSError, ValueError):
        return None, "not readable JSON"
    if not isinstance(meta, dict):
        return None, "not a JSON object"
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        return None, f"missing {', '.join(repr(k) for k in missing)}"
    beta, nxt = meta["beta"], meta["next_beta"]
    if not is_finite(beta) or not 0 < beta <= 1:
        return None, f"beta: expected a number in (0, 1], got {beta!r}"
    if nxt is not None and (not is_finite(nxt) or not nxt > beta):
        return None, f"next_beta: expected null or a number > beta, got {nxt!r}"
    for key in ("index", "step"):
        if not is_int(meta[key]) or meta[key] < 0:
            return None, f"{key}: expected an integer >= 0, got {meta[key]!r}"
    return meta, None


# ----------------------------------------------------------------------------- checkpoint names

_LABEL_RE = re.compile(r"[01]\.\d{12}")


def ladder_label(beta: float) -> str:
    """A fixed-width name for ``beta`` in (0, 1]: ``f"{beta:.12f}"``, e.g. '0.010000000000'.

    Distinct for betas more than 1e-12 apart, and string order is beta order. A beta up to
    1e-12 (the label's resolution) above 1 is 1.
    """
    if not is_number(beta) or not 0.0 < float(beta) <= 1.0 + 1e-12:
        raise ValueError(f"ladder_label: expected beta in (0, 1], got {show(beta)}")
    label = f"{min(float(beta), 1.0):.12f}"
    if float(label) <= 0.0:
        raise ValueError(f"ladder_label: beta {show(beta)} rounds to 0 at 12 decimals")
    return label


def parse_ladder_label(label: str) -> float:
    """Inverse of ``ladder_label`` (up to the 12-decimal rounding)."""
    if not isinstance(label, str) or _LABEL_RE.fullmatch(label) is None:
        raise ConfigError(
            f"ladder label: expected a beta written as 0.dddddddddddd or 1.000000000000, "
            f"got {show(label)}"
        )
    beta = float(label)
    if not 0.0 < beta <= 1.0:
        raise ConfigError(f"ladder label: expected beta in (0, 1], got {label!r}")
    return beta
