"""The reference file: an npz of arrays and JSON strings, written atomically, read without
pickles; its keys (:data:`NPZ_KEYS`) are described in :func:`coarseflow.reference.run_reference`.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from coarseflow.atomic_files import atomic_write_bytes

SHIPPED_REFERENCE = "alanine_dipeptide_reference.npz"
NPZ_KEYS = (
    "phi", "psi", "rg", "energy", "chain", "time_ps", "temperature", "temperatures",
    "basins", "populations", "populations_err", "populations_err_chains",
    "populations_err_blocks", "swap_acceptance", "wall_time_s", "n_energy_evals",
    "evals_per_s", "simulated_time_ns", "n_reverted", "cis", "inverted", "settings", "target",
    "openmm_check", "created", "machine",
)  # fmt: skip
JSON_KEYS = ("settings", "target", "openmm_check")  # stored as JSON strings


def write_reference(path: str | Path, arrays: dict[str, Any]) -> None:
    """Write arrays (name -> array; JSON_KEYS as JSON strings) to the npz ``path`` atomically."""
    atomic_write_bytes(Path(path), lambda f: np.savez_compressed(f, **arrays))
    os.chmod(path, 0o644)  # a data file, not a secret (the temporary file was 0600)


def load_reference(path: str | Path | None = None) -> dict[str, Any]:
    """The arrays of a reference npz (default: the shipped alanine dipeptide reference), with
    the JSON strings (settings, target, openmm_check) decoded and 0-d arrays as scalars."""
    if path is None:
        path = resources.files("coarseflow") / "data" / SHIPPED_REFERENCE
    with np.load(str(path), allow_pickle=False) as data:
        out: dict[str, Any] = {}
        for key in data.files:
            value = data[key]
            if key in JSON_KEYS:
                out[key] = json.loads(str(value))
            elif value.ndim == 0:
                out[key] = value.item()
            else:
                out[key] = value
    return out
