"""What ``coarseflow sample`` does, as functions: :func:`sample_run` draws from a run's
checkpoint; the files of one draw (.npz; .pdb / .dcd for a molecule, with the weights beside)
are checked before it and written after it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.random as jr
import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.predict.draw import Samples, draw_samples
from coarseflow.predict.refine import refine
from coarseflow.predict.settings import PredictionSettings
from coarseflow.progress import Progress
from coarseflow.workflow import load_run


def sample_run(
    path,
    *,
    n: int | None = None,
    beta: float | None = None,
    seed: int = 0,
    refine_steps: int | None = None,
    progress: bool = False,
    outputs=(),
    mesh=None,
):
    """(target, Samples, beta) drawn from the checkpoint of ``beta`` of run ``path``; refined
    by AIS toward p_beta (``predict.refine``) when ``refine_steps`` (default: [prediction]
    refine_steps) > 0 and the run has a learned conditional. Sample i is the same for every
    n > i. ``progress``: the compiling stage and a bar on stderr. ``outputs``: the files they
    are for, checked against the target (:func:`check_sample_outputs`) before drawing.
    ``mesh``: the devices the draws (or the refinement's AIS paths) are split over."""
    config, target, flow, conditional, meta = load_run(path, beta)
    check_sample_outputs(outputs, target)
    prediction = with_refine_steps(config.prediction, refine_steps)
    n = config.prediction.n_samples if n is None else n
    bar = Progress(n, "sample", show=progress)
    if conditional is not None and prediction.refine_steps > 0:
        samples, _ = refine(
            jr.key(seed),
            target,
            flow,
            conditional,
            meta["beta"],
            prediction,
            n=n,
            progress=bar,
            mesh=mesh,
        )
    else:
        samples = draw_samples(
            jr.key(seed),
            target,
            flow,
            meta["beta"],
            config.prediction,
            n=n,
            conditional=conditional,
            progress=bar,
            mesh=mesh,
        )
    bar.close()
    return target, samples, meta["beta"]


def with_refine_steps(prediction: PredictionSettings, refine_steps: int | None):
    """``prediction`` with ``refine_steps`` when given (checked like the config's)."""
    if refine_steps is None:
        return prediction
    return dataclasses.replace(prediction, refine_steps=refine_steps)


SAMPLE_SUFFIXES = (".npz", ".pdb", ".dcd")


def check_sample_outputs(paths, target) -> list[Path]:
    """``paths`` as the files of one draw: each a .npz, .pdb or .dcd (the last two for a
    molecule), none named twice. Checked before the draw, which can take minutes."""
    paths = [Path(p) for p in paths]
    for path in paths:
        suffix = path.suffix.lower()
        if suffix not in SAMPLE_SUFFIXES:
            raise ConfigError(f"-o {path}: expected a .npz, .pdb or .dcd file name")
        if suffix != ".npz" and not hasattr(target, "write_trajectory"):
            raise ConfigError(
                f"-o {path}: {suffix} is for molecules; {type(target).__name__} samples go to .npz"
            )
    seen = set()
    for path in paths:
        if path.resolve() in seen:
            raise ConfigError(f"-o {path}: named twice")
        seen.add(path.resolve())
    return paths


def write_sample_files(paths, target, samples: Samples, beta: float) -> list[Path]:
    """Every file of ``paths`` (.npz / .pdb / .dcd) from the one draw ``samples``, frame i of
    each being sample i; a trajectory's weights beside it (:func:`weights_path`). A .dcd's
    one-frame topology .pdb is written first, so a .pdb asked for by the same name keeps
    every frame. Returns the paths written."""
    paths = check_sample_outputs(paths, target)
    written: list[Path] = []
    for path in sorted(paths, key=lambda p: p.suffix.lower() != ".dcd"):
        for p in _write_one(path, target, samples, beta):
            if p not in written:
                written.append(p)
    return written


def write_samples(path, target, samples: Samples, beta: float) -> Path:
    """Write samples as .npz (x, log_weights, X, energy, beta); molecules also as .pdb/.dcd,
    with the weights beside (:func:`weights_path`)."""
    path = Path(path)
    check_sample_outputs([path], target)
    _write_one(path, target, samples, beta)
    return path


def _write_one(path: Path, target, samples: Samples, beta: float) -> list[Path]:
    if path.suffix.lower() == ".npz":
        x = samples.x
        if hasattr(target, "full_positions"):
            x = np.asarray(target.full_positions(x))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            x=x,
            log_weights=samples.log_weights,
            X=samples.X,
            energy=samples.energy,
            beta=np.float64(beta),
        )
        return [path]
    written = list(target.write_trajectory(path, samples.x))
    return written + [write_weights(weights_path(path), samples, beta)]


def weights_path(trajectory) -> Path:
    """Where a trajectory's weights go: out.pdb and out.dcd -> out.weights.txt (one file for
    both: they are the same draw)."""
    return Path(trajectory).with_suffix(".weights.txt")


def write_weights(path, samples: Samples, beta: float) -> Path:
    """One line per frame: frame, log_weight (-beta u - log q, unnormalised; -inf: weight
    zero), weight (normalised to sum 1), u (reduced energy, kT), for np.loadtxt."""
    lw = np.asarray(samples.log_weights, float)
    finite = np.isfinite(lw)
    w = np.zeros_like(lw)
    if finite.any():
        w[finite] = np.exp(lw[finite] - lw[finite].max())
        w /= w.sum()
    frames = np.arange(len(lw))
    np.savetxt(
        path,
        np.column_stack([frames, lw, w, np.asarray(samples.energy, float)]),
        fmt=["%d", "%.17g", "%.17g", "%.17g"],
        header=f"weights of the frames of the same-named .pdb / .dcd, beta = {beta:.12g}\n"
        "frame log_weight weight u_kT",
    )
    return Path(path)
