"""What the CLI does, as functions: train from a config, load a checkpoint, sample, evaluate."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax.random as jr
import numpy as np

from coarseflow.atomic_files import atomic_write_text, strict_json
from coarseflow.checkpointing import RunRecorder, resume_point, train_into, training_programs
from coarseflow.config import Config, build_target, load_config, to_toml
from coarseflow.errors import ConfigError
from coarseflow.model.conditional import make_conditional
from coarseflow.model.flow import make_flow, split_trainable
from coarseflow.parallel import broadcast_bytes, is_main_process, process_count
from coarseflow.predict.conditional import fit_to_laplace
from coarseflow.predict.draw import Samples, draw_samples
from coarseflow.predict.refine import refine
from coarseflow.predict.settings import PredictionSettings
from coarseflow.progress import Progress, compiling
from coarseflow.run_folder import config_hash
from coarseflow.runs import DamagedCheckpoint, RunDir, all_finite, warn_once
from coarseflow.training.health import Streaks
from coarseflow.training.ladder import LadderState, TrainResult, train
from coarseflow.training.step import TrainState
from coarseflow.training.step import init as init_train_state


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


def train_from_config(
    config: Config,
    out,
    *,
    resume: bool = False,
    progress: bool = True,
    max_betas: int | None = None,
    init=None,
    mesh=None,
) -> TrainResult:
    """Train into run directory ``out``; refused if it has checkpoints, unless resuming.

    ``out`` must be new, empty or a run of this same config (``RunDir.claim``: never a user's
    folder, never a run of another config); it is locked while training, so a second writer
    is refused. ``init`` (a run directory): start from its newest intact checkpoint's flow
    (with a fresh optimiser) instead of an untrained one, e.g. to continue a finished run
    along another ladder. It is recorded in ``out``/init.json; a resumed run continues from
    its own checkpoints. ``mesh``: the devices each update's batch is split over
    (:func:`coarseflow.parallel.data_mesh`; None: one device).

    In a run of several processes (:func:`coarseflow.parallel.initialize`) every process calls
    it with the same arguments and ``mesh`` over all their devices: process 0 claims, locks
    and writes ``out`` (the others write nothing, take no lock and need not see the folder) and
    sends them the model and ladder state to start from, so a run resumes on any number of
    processes and devices.
    """
    if process_count() > 1:
        return _train_processes(config, out, resume, progress, max_betas, init, mesh)
    run = RunDir(out)
    run.claim(config_hash(config.raw), lambda path: config_hash(load_config(path).raw))
    try:
        return _train_claimed(config, run, resume, progress, max_betas, init, mesh)
    finally:
        run.release()


def _train_claimed(
    config: Config, run: RunDir, resume: bool, progress: bool, max_betas: int | None, init, mesh
) -> TrainResult:
    """train_from_config once ``run`` is owned and locked."""
    config, target, flow, conditional = _prepare_claimed(config, run, resume, init)
    return train_into(
        run,
        target,
        flow,
        config.tempering,
        config.training,
        config.chains,
        conditional=conditional,
        resume=resume,
        prediction=config.prediction,
        progress=progress,
        max_betas=max_betas,
        mesh=mesh,
    )


def _prepare_claimed(config: Config, run: RunDir, resume: bool, init):
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


# ------------------------------------------------------------------------- several processes


def _train_processes(
    config: Config, out, resume: bool, progress: bool, max_betas: int | None, init, mesh
) -> TrainResult:
    """train_from_config in a run of several processes (see there)."""
    if is_main_process():
        run = RunDir(out)
        try:
            run.claim(config_hash(config.raw), lambda path: config_hash(load_config(path).raw))
        except BaseException as err:
            _send_start(error=err)
            raise
        try:
            return _train_main(config, run, resume, progress, max_betas, init, mesh)
        finally:
            run.release()
    # the others: the structure from the config, its values from process 0
    header, data = _receive_start()
    if "error" in header:
        raise ConfigError(header["error"])
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, permutation=header["permutation"])
    )
    target = build_target(config.target)
    template, static = init_train_state(build_model(config, target), config.training)
    params, opt_state = eqx.tree_deserialise_leaves(
        io.BytesIO(data), (template.params, template.opt_state)
    )
    flow, conditional = eqx.combine(params, static)
    ladder = header["ladder"]
    if ladder is not None and ladder["beta"] is None:  # the ladder was finished
        return TrainResult(flow, conditional, list(ladder["betas"]))
    start = None
    if ladder is not None:
        start = LadderState(
            TrainState(params, opt_state),
            **{k: v for k, v in ladder.items() if k not in ("state", "betas", "streaks")},
            betas=tuple(ladder["betas"]),
            streaks=Streaks(*ladder["streaks"]),
        )
    return train(
        target,
        flow,
        config.tempering,
        config.training,
        config.chains,
        conditional=conditional,
        prediction=config.prediction,
        start=start,
        progress=False,
        max_betas=max_betas,
        mesh=mesh,
    )


def _train_main(
    config: Config, run: RunDir, resume: bool, progress: bool, max_betas: int | None, init, mesh
) -> TrainResult:
    """Process 0's part of _train_processes, with ``run`` claimed: what train_into does, with
    the start sent to the other processes before training."""
    try:
        config, target, flow, conditional = _prepare_claimed(config, run, resume, init)
        start = resume_point(run, (flow, conditional), config.training) if resume else None
        if start is None:
            run.truncate_metrics(0)
    except BaseException as err:
        _send_start(error=err)
        raise
    state, static = init_train_state((flow, conditional), config.training)
    if start is not None:
        state = start.state
    ladder = None if start is None else {**start._asdict(), "state": None}
    _send_start(config.model.permutation, ladder, (state.params, state.opt_state))
    if start is not None and start.beta is None:  # the ladder was finished
        return TrainResult(*eqx.combine(start.state.params, static), list(start.betas))
    with compiling("training", progress, names=training_programs(config.training)):
        return train(
            target,
            flow,
            config.tempering,
            config.training,
            config.chains,
            conditional=conditional,
            prediction=config.prediction,
            start=start,
            callbacks=RunRecorder(run),
            progress=progress,
            max_betas=max_betas,
            mesh=mesh,
        )


def _send_start(permutation: str | None = None, ladder=None, tree=None, *, error=None) -> None:
    """Process 0: to every other process, the flow's permutation, the ladder state (None: a
    fresh start) without its arrays and the (parameters, optimiser state) to start from; or
    the error that stopped process 0 (its message; "process 0 failed" for a bug), so that
    the others stop too instead of waiting for it."""
    if error is not None:
        message = str(error) if isinstance(error, ConfigError) else None
        header = {"error": message or f"process 0 failed ({type(error).__name__}: {error})"}
        broadcast_bytes(json.dumps(header).encode() + b"\n")
        return
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    header = {"permutation": permutation, "ladder": ladder}
    broadcast_bytes(json.dumps(header).encode() + b"\n" + buffer.getvalue())


def _receive_start() -> tuple[dict, bytes]:
    """The other processes: (header, serialised arrays) of process 0's :func:`_send_start`."""
    header, _, data = broadcast_bytes(None).partition(b"\n")
    return json.loads(header), data


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


def write_summary(run: RunDir, summary: dict) -> Path:
    """``summary`` as the run's summary.json (strict JSON, written atomically); its path."""
    atomic_write_text(run.summary_path, strict_json(summary, indent=1))
    return run.summary_path
