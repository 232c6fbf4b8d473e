"""A run's model and its files, as functions: the model built from a config (build_flow,
build_model, initial_model), the checks and records of a run's start (check_start,
record_config), its checkpoints loaded (load_run, run_flows) and its summary.json written.
Training (``coarseflow train``) is :mod:`coarseflow.run_training`; sampling (``coarseflow
sample``) :mod:`coarseflow.sample_outputs`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax.random as jr

from coarseflow.atomic_files import atomic_write_text, strict_json
from coarseflow.config import Config, build_target, load_config, to_toml
from coarseflow.errors import ConfigError
from coarseflow.model.conditional import make_conditional
from coarseflow.model.flow import make_flow, split_trainable
from coarseflow.predict.conditional import fit_to_laplace
from coarseflow.runs import DamagedCheckpoint, RunDir, all_finite, warn_once


def build_flow(config: Config, target):
    """The untrained q(X) of a run: ``model.flow.make_flow`` with [model] and its seed."""
    return make_flow(jr.key(config.model.seed), target, config.model)


def build_model(config: Config, target):
    """(flow q(X), learned conditional q(Y|X) or None), untrained: the structure of a run."""
    conditional = make_conditional(jr.key(config.conditional.seed), target, config.conditional)
    return build_flow(config, target), conditional


MODEL_MARKER = "model.json"  # how the run's flow was built, beyond config.toml


def as_trained(config: Config, run: RunDir) -> Config:
    """``config`` with [model] permutation as the run was trained: a run whose checkpoints
    predate model.json (before 2026-12-04) had flowjax's random permutations; its checkpoints
    hold only the trained parameters, so the structure must be rebuilt the same way."""
    if not run.checkpoints() or (run.root / MODEL_MARKER).exists():
        return config
    model = dataclasses.replace(config.model, permutation="random")
    return dataclasses.replace(config, model=model)


def _checkpoint_loader(config: Config, model):
    """A function (run, metadata) -> the (flow, conditional) of that checkpoint, in
    ``model``'s structure; a damaged checkpoint (or one of NaN / inf parameters) raises
    runs.DamagedCheckpoint naming its file."""
    params, static = split_trainable(model)
    template = (params, config.training.optimizer().init(params))

    def load(run: RunDir, meta: dict | None):
        """``meta`` None: the newest intact checkpoint, skipping damaged ones with a warning."""
        if meta is None:
            meta, (loaded, _) = run.load_newest(template, _finite_params)
        else:
            loaded, _ = run.load_checkpoint(template, meta, _finite_params)
        return meta, eqx.combine(loaded, static)

    return load


def _finite_params(tree) -> bool:
    """Whether a loaded (params, optimiser state) has finite parameters: training never
    writes NaN / inf ones (the gradient guard skips such updates), so they mean damage."""
    return all_finite(tree[0])


def initial_model(config: Config, target, init=None):
    """(flow, conditional) to start training from: fresh ones from [model] and [conditional]
    (the conditional fitted to Laplace fits of p(Y|X) at X from the untrained flow, at the
    ladder's first beta), or, with ``init`` (a run directory), that one's parameters at its
    last checkpoint in this config's structure."""
    flow, conditional = build_model(config, target)
    if init is None:
        if conditional is not None:
            X = flow.sample(jr.key(config.conditional.seed + 1), (config.conditional.laplace_fits,))
            conditional = fit_to_laplace(
                conditional, target, X, config.tempering.first_beta(), config.prediction
            )
        return flow, conditional
    return _init_checkpoint(config, (flow, conditional), init)[1]


def _init_checkpoint(config: Config, model, init) -> tuple[dict, tuple]:
    """(metadata, model) of run ``init``'s newest intact checkpoint, in ``model``'s structure."""
    run = RunDir(init).require_existing()
    try:
        return _checkpoint_loader(config, model)(run, None)
    except ConfigError:
        raise
    except Exception as err:  # equinox reports a shape or structure mismatch in many ways
        raise ConfigError(
            f"--init {init}: its checkpoint does not fit this config's [model] "
            f"and [target] ({type(err).__name__})"
        ) from None


def prepare_claimed(config: Config, run: RunDir, resume: bool, init):
    """(config as trained, target, flow, conditional) to train into the owned and locked
    ``run``, after its checks; config.toml, model.json and init.json written."""
    check_start(config, run, resume)
    config = as_trained(config, run) if resume else config
    target = build_target(config.target)
    if init is None:
        flow, conditional = initial_model(config, target)
    else:
        init_meta, (flow, conditional) = _init_checkpoint(config, build_model(config, target), init)
    record_config(config, run, resume)
    if init is not None:
        atomic_write_text(
            run.root / "init.json",
            json.dumps(
                {
                    "run": str(Path(init).resolve()),
                    "beta": init_meta["beta"],
                    "step": init_meta["step"],
                }
            ),
        )
    return config, target, flow, conditional


def check_start(config: Config, run: RunDir, resume: bool) -> None:
    """Refuse to train into the owned ``run`` over its checkpoints unless resuming, and to
    resume it with another config than its config.toml."""
    if run.checkpoints() and not resume:
        raise ConfigError(
            f"run directory {run.root} already has checkpoints; "
            "pass --resume to continue it or choose another --out"
        )
    if resume and run.config_path.exists():
        if load_config(run.config_path).raw != config.raw:
            raise ConfigError(
                f"--resume: the config differs from {run.config_path}; resume with the same config"
            )


def record_config(config: Config, run: RunDir, resume: bool) -> None:
    """``run``'s config.toml, and its model.json where it starts afresh."""
    atomic_write_text(run.config_path, to_toml(config.raw))
    if not (resume and run.checkpoints()):
        atomic_write_text(
            run.root / MODEL_MARKER, json.dumps({"flow_permutation": config.model.permutation})
        )


def _open_run(path):
    """(run, config, target, load) of run ``path``: ``load(run, meta)`` gives a checkpoint's
    (meta, (flow, conditional)), all in one structure built once."""
    run = RunDir(path).require_existing()
    config = as_trained(load_config(run.config_path), run)
    target = build_target(config.target)
    return run, config, target, _checkpoint_loader(config, build_model(config, target))


def run_flows(path, betas: list[float] | None = None):
    """(config, target, [(metadata, (flow, conditional)), ...]) for the checkpoints of
    ``betas`` (default: all intact ones, each damaged one skipped with a warning naming it);
    the conditional is None unless learned. A named beta whose checkpoint is damaged: one line.

    The target and the flow's structure are built once and every checkpoint's parameters are
    loaded into that one structure, so jitted functions compile once for all checkpoints.
    """
    run, config, target, load = _open_run(path)
    if betas is not None:
        return config, target, [load(run, run.find_checkpoint(b)) for b in betas]
    flows, damaged = [], []
    for meta in run.checkpoints():
        try:
            flows.append(load(run, meta))
        except DamagedCheckpoint as err:
            damaged.append(err)
    if not flows and not damaged:
        raise ConfigError(
            f"run directory {run.root}: no intact checkpoint (none written, or "
            "every one damaged: see the warnings)"
        )
    if not flows:
        names = ", ".join(err.path.name for err in damaged)
        raise ConfigError(
            f"run directory {run.root}: no intact checkpoint ({damaged[0]}; damaged: {names})"
        )
    for err in damaged:
        warn_once(f"{err}; skipped")
    return config, target, flows


class LoadedRun(NamedTuple):
    """A run directory's checkpoint as :func:`load_run` returns it: the run's config, its
    target, the flow, the learned conditional (None with the chains) and the checkpoint's
    metadata (its beta, step, ...)."""

    config: Config
    target: object
    flow: eqx.Module
    conditional: eqx.Module | None
    meta: dict


def load_run(path, beta: float | None = None) -> LoadedRun:
    """The checkpoint of ``beta`` (default: the newest intact one, damaged newer ones skipped
    with a warning) of run ``path``, with its config and target."""
    run, config, target, load = _open_run(path)
    meta = None if beta is None else run.find_checkpoint(beta)
    meta, (flow, conditional) = load(run, meta)
    return LoadedRun(config, target, flow, conditional, meta)


def write_summary(run: RunDir, summary: dict) -> Path:
    """``summary`` as the run's summary.json (strict JSON, written atomically); its path."""
    atomic_write_text(run.summary_path, strict_json(summary, indent=1))
    return run.summary_path
