"""A run directory: resolved config, metrics.jsonl, one checkpoint per beta, samples, figures.

Checkpoints are equinox leaf serialisations (no pickle) plus a JSON metadata file, both written
atomically (temporary file + rename), so a killed run never leaves a half-written checkpoint.
The metadata holds the SHA-256 of the .eqx bytes, so a checkpoint damaged later (a truncated
copy, a full disk, a bit flip) is recognised, reported by name and skipped.

The folder itself, who owns it and its lock: :class:`coarseflow.run_folder.RunFolder`, which
``RunDir`` extends.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from coarseflow.atomic_files import atomic_write_bytes, atomic_write_text, strict_json
from coarseflow.checks import is_finite, is_int
from coarseflow.errors import ConfigError
from coarseflow.ladder_labels import ladder_label
from coarseflow.run_folder import RunFolder

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


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (NaN / inf: a broken model)."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in leaves)


class RunDir(RunFolder):
    """The files of one training run under ``root``."""

    def require_existing(self) -> RunDir:
        if not self.config_path.is_file():
            raise ConfigError(f"run directory {self.root}: no config.toml; is it a training run?")
        return self

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
