"""A molecule's files: trajectories written for molecular viewers, reference data read."""

from __future__ import annotations

import json
from pathlib import Path

import mdtraj
import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.targets.molecule.registry import builtin_reference


def write_trajectory(path, topology: mdtraj.Topology, positions: np.ndarray) -> list[Path]:
    """Write positions (N, n_atoms, 3) or (n_atoms, 3) in nm as a .pdb (all frames) or .dcd.

    For .dcd, a one-frame topology file ``path.with_suffix('.pdb')`` is written next to it (VMD
    / PyMOL / mdtraj need it to open the .dcd). Returns the paths written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pdb", ".dcd"):
        raise ConfigError(f"-o {path}: a trajectory must be .pdb or .dcd")
    xyz = np.asarray(positions, dtype=np.float32)
    if xyz.ndim == 2:
        xyz = xyz[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    traj = mdtraj.Trajectory(xyz, topology)
    traj.save(str(path), force_overwrite=True)
    written = [path]
    if suffix == ".dcd":
        top_path = path.with_suffix(".pdb")
        traj[0].save_pdb(str(top_path), force_overwrite=True)
        written.append(top_path)
    return written


def load_reference(reference: str, n_residues: int) -> dict[str, np.ndarray]:
    """The ``[target] reference`` file of a molecule with n_residues (phi, psi) residues.

    ``reference``: a path to an .npz, or a built-in molecule's name (its shipped reference).
    Returns read-only arrays: phi, psi (frames, n_residues) radians; rg (frames,) nm if the
    file has it; basins (names) and populations_err (len(basins),) if the file has both, as
    ``coarseflow reference`` writes them; chain (frames,) int64, each frame's ladder, if the file
    has it, with n_blocks () if its ``settings`` JSON names one (the reference's errors of every
    residue come from these: analysis.basin_statistics.reference_populations).
    """
    where = f"[target] reference '{reference}'"
    if not isinstance(reference, str) or not reference:
        raise ConfigError(f"{where}: expected a path to an .npz file or a built-in name")
    path = builtin_reference(reference) or Path(reference).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{where}: no such file (relative paths are relative to the current directory)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except Exception as err:
        raise ConfigError(f"{where}: cannot read it as an .npz file ({err})") from None
    missing = [k for k in ("phi", "psi") if k not in arrays]
    if missing:
        raise ConfigError(
            f"{where}: missing arrays {missing} (expected phi, psi in radians, optional rg in nm)"
        )
    out = {}
    for k in ("phi", "psi"):
        a = np.asarray(arrays[k], dtype=np.float64)
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] != n_residues or a.shape[0] == 0:
            raise ConfigError(
                f"{where}: {k} has shape {arrays[k].shape}; expected (frames,) or "
                f"(frames, {n_residues}) for this molecule's {n_residues} "
                "(phi, psi) residue(s)"
            )
        out[k] = a
    if out["phi"].shape != out["psi"].shape:
        raise ConfigError(f"{where}: phi and psi have different shapes")
    if "rg" in arrays:
        out["rg"] = np.asarray(arrays["rg"], dtype=np.float64).reshape(-1)
    names = np.asarray(arrays.get("basins", []), dtype=str).reshape(-1)
    if names.size and "populations_err" in arrays:
        err = np.asarray(arrays["populations_err"], dtype=np.float64).reshape(-1)
        if err.shape == names.shape:
            out["basins"], out["populations_err"] = names, err
    if "chain" in arrays:
        out |= _ladders(arrays, len(out["phi"]), where)
    for a in out.values():
        a.setflags(write=False)  # shared by every copy of the Molecule's static record
    return out


def _ladders(arrays: dict, n_frames: int, where: str) -> dict[str, np.ndarray]:
    """chain (n_frames,) int64 of a reference file's arrays, and n_blocks () where its
    settings JSON names it."""
    chain = np.asarray(arrays["chain"])
    if chain.shape != (n_frames,) or not np.issubdtype(chain.dtype, np.integer):
        raise ConfigError(
            f"{where}: chain has shape {chain.shape} and dtype {chain.dtype}; expected "
            f"({n_frames},) integers, each frame's ladder"
        )
    out = {"chain": chain.astype(np.int64)}
    try:
        settings = json.loads(str(arrays["settings"])) if "settings" in arrays else {}
    except ValueError:
        raise ConfigError(f"{where}: settings is not a JSON string") from None
    n_blocks = settings.get("n_blocks") if isinstance(settings, dict) else None
    if n_blocks is not None:
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 2:
            raise ConfigError(f"{where}: settings n_blocks: expected an integer >= 2")
        out["n_blocks"] = np.asarray(n_blocks, np.int64)
    return out
