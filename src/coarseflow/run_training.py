"""What ``coarseflow train`` does, as a function: :func:`train_from_config` trains a run
directory from its config, on one process or on several (process 0 owns the run and sends the
others the model and ladder state to start from).
"""

from __future__ import annotations

import dataclasses
import io
import json

import equinox as eqx

from coarseflow.checkpointing import RunRecorder, resume_point, train_into, training_programs
from coarseflow.config import Config, build_target, load_config
from coarseflow.errors import ConfigError
from coarseflow.parallel import broadcast_bytes, is_main_process, process_count
from coarseflow.progress import compiling
from coarseflow.run_folder import config_hash
from coarseflow.runs import RunDir
from coarseflow.training.health import Streaks
from coarseflow.training.ladder import LadderState, TrainResult, train
from coarseflow.training.step import TrainState
from coarseflow.training.step import init as init_train_state
from coarseflow.workflow import build_model, prepare_claimed


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
    config, target, flow, conditional = prepare_claimed(config, run, resume, init)
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
    start = None
    if ladder is not None:
        start = LadderState(
            TrainState(params, opt_state),
            **{k: v for k, v in ladder.items() if k not in ("state", "betas", "streaks")},
            betas=tuple(ladder["betas"]),
            streaks=Streaks(*ladder["streaks"]),
        )
        if start.finished(config.training):
            return TrainResult(flow, conditional, list(start.betas))
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
        config, target, flow, conditional = prepare_claimed(config, run, resume, init)
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
    if start is not None and start.finished(config.training):
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
