"""Files written whole: ``atomic_write_bytes`` / ``atomic_write_text`` write a temporary file
beside the target and rename it over it, so a killed process never leaves a half-written file;
``strict_json`` writes JSON that every strict reader accepts (non-finite numbers as null).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


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
