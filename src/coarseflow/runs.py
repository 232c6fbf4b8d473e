"""A run directory: resolved config, metrics.jsonl, one checkpoint per beta, samples, figures.

Checkpoints are equinox leaf serialisations (no pickle) plus a JSON metadata file, both written
atomically (temporary file + rename), so a killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import equinox as eqx

from coarseflow.errors import ConfigError
from coarseflow.tempering import ladder_label


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

    config_path = property(lambda self: self.root / "config.toml")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    checkpoint_dir = property(lambda self: self.root / "checkpoints")
    figures_dir = property(lambda self: self.root / "figures")
    samples_dir = property(lambda self: self.root / "samples")
    summary_path = property(lambda self: self.root / "summary.json")

    def require_existing(self) -> RunDir:
        if not self.config_path.is_file():
            raise ConfigError(f"run directory {self.root}: no config.toml; is it a training run?")
        return self

    # metrics ---------------------------------------------------------------------------------
    def append_metrics(self, records: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records with step < last_step (those a checkpoint already covers)."""
        kept = [r for r in self.read_metrics() if r["step"] < last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # checkpoints -----------------------------------------------------------------------------
    def checkpoint_paths(self, beta: float) -> tuple[Path, Path]:
        # the label has a decimal point, so build names by string, not with_suffix
        stem = f"beta_{ladder_label(beta)}"
        return self.checkpoint_dir / f"{stem}.eqx", self.checkpoint_dir / f"{stem}.json"

    def save_checkpoint(self, beta: float, tree, meta: dict) -> Path:
        """Write the pytree ``tree`` and ``meta`` (JSON-able; gets 'beta') for this beta."""
        eqx_path, json_path = self.checkpoint_paths(beta)
        atomic_write_bytes(eqx_path, lambda f: eqx.tree_serialise_leaves(f, tree))
        # metadata last: a checkpoint counts as written once its .json exists
        atomic_write_text(json_path, json.dumps({**meta, "beta": float(beta)}, indent=1))
        return eqx_path

    def checkpoints(self) -> list[dict]:
        """Metadata of every complete checkpoint, in increasing beta, with 'path' added."""
        found = []
        for json_path in sorted(self.checkpoint_dir.glob("beta_*.json")):
            eqx_path = json_path.parent / (json_path.name[: -len(".json")] + ".eqx")
            if eqx_path.exists():
                meta = json.loads(json_path.read_text())
                found.append({**meta, "path": str(eqx_path)})
        return sorted(found, key=lambda m: m["beta"])

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

    def load_checkpoint(self, template, meta: dict):
        return eqx.tree_deserialise_leaves(meta["path"], template)
