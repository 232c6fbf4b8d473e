"""``train``: the walk along the tempering ladder around :func:`update_step`, the model's
samples at each beta that choose the next one, and Callbacks, through which it reports (the
application layer records metrics and checkpoints: :mod:`coarseflow.checkpointing`)."""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from coarseflow.errors import ConfigError
from coarseflow.model.linear_map import check_linear_map, model_map, sample_energies
from coarseflow.parallel import check_divisible, replicate, shard_batch, to_host
from coarseflow.predict.settings import PredictionSettings
from coarseflow.samplers.conditional import ChainSettings
from coarseflow.targets.base import AbstractTarget
from coarseflow.tempering.schedules import AbstractSchedule
from coarseflow.training.health import (
    Streaks,
    TrainingStopped,
    check_energy_finite,
    heating_warning,
    stop_reason,
)
from coarseflow.training.losses import chain_states
from coarseflow.training.refit import refit_updates
from coarseflow.training.settings import TrainingSettings
from coarseflow.training.step import (
    TrainState,
    UpdateSettings,
    adapt_fab_step,
    end_beta,
    init,
    start_beta,
    update_step,
)

METRICS_FLUSH = 25  # updates between writes to metrics.jsonl (resume truncates past the checkpoint)


def _float_or_none(value) -> float | None:
    """JSON-friendly: NaN becomes None."""
    return None if np.isnan(value) else float(value)


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


@eqx.filter_jit
def _energies_of_samples(flow, conditional, key, beta, target, chains, n: int, mesh):
    X = shard_batch(flow.sample(jr.fold_in(key, 0), (n,)), mesh)
    if conditional is not None:
        Y = conditional.sample_batch(jr.fold_in(key, 1), target, X, beta).Y
        return sample_energies(conditional, target, X, Y), jnp.asarray(n)  # u(W R) with a map
    mf = chain_states(jr.fold_in(key, 1), target, X, beta, chains)
    return jax.vmap(target.energy_xy)(X, mf.y_last[:, 0]), jnp.sum(mf.n_evals) + n


def model_energies(
    flow, key, beta, target, chains, n: int, batch_size: int, conditional=None, mesh=None
) -> tuple[np.ndarray, int]:
    """(reduced energies u(X, Y) (n,), energy evaluations made) with X ~ q(X) and Y from the
    learned ``conditional``, or from the conditional chains when it is None; each batch split
    over ``mesh``'s devices."""
    beta = jnp.asarray(beta)  # traced, as in update_step: a float would recompile per beta
    out, evals = [], 0
    for i, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        u, k = _energies_of_samples(
            flow, conditional, jr.fold_in(key, i), beta, target, chains, m, mesh
        )
        out.append(to_host(u))  # split over processes in a run of several
        evals += int(k)
    return np.concatenate(out), evals


class TrainResult(NamedTuple):
    """What :func:`train` returns: the trained flow q(X), the learned q(Y|X) (None when the
    chains give Y | X) and the betas trained, in order."""

    flow: eqx.Module
    conditional: eqx.Module | None  # the learned q(Y|X), None with the chains
    betas: list[float]


class LadderState(NamedTuple):
    """Where a walk along the ladder stands after a beta: what a checkpoint holds and a resumed
    run starts from (``train(start=...)``).

    ``beta``: the next beta to train (None: the ladder is done), ``index`` its place on the
    ladder; ``step``: updates made; ``betas``: the betas reached; ``energy_evals``: energy +
    gradient evaluations of all updates and ladder samples; ``wall_time``: seconds of training
    (all processes); ``fab_step``: fab's adapted MALA step size; ``streaks``: for stop_reason;
    ``refitted``: whether q(Y|X) was refitted after the ladder (``[training] refit_updates``).
    """

    state: TrainState
    beta: float | None
    index: int = 0
    step: int = 0
    betas: tuple[float, ...] = ()
    energy_evals: int = 0
    wall_time: float = 0.0
    fab_step: float = 0.3
    streaks: Streaks = Streaks()
    refitted: bool = False

    def finished(self, training: TrainingSettings) -> bool:
        """Whether nothing is left to train: the ladder done, and the refit too if any."""
        return self.beta is None and (self.refitted or not training.refit_updates)


class Callbacks:
    """What train() reports, for the application layer to record (e.g. a run directory's
    metrics.jsonl and checkpoints: :mod:`coarseflow.checkpointing`). The defaults do nothing."""

    def on_updates(self, records: list[dict]) -> None:
        """Per-update records (step, beta, loss, ...), every METRICS_FLUSH updates and at the
        end of each beta."""

    def on_beta(self, beta: float, ladder: LadderState, summary: dict) -> None:
        """After each beta: ``ladder`` is the state to resume from (its ``beta`` the next one);
        ``summary``: that beta's n_updates, mean_energy, chain_heating."""

    def on_refit(self, ladder: LadderState, summary: dict) -> None:
        """After the refit of q(Y|X) (``ladder.refitted``): the state to keep in place of the
        last beta's; ``summary``: refit_updates, refit_loss (that of the last 10 updates)."""


def train(
    target: AbstractTarget,
    flow,
    schedule: AbstractSchedule,
    training: TrainingSettings,
    chains: ChainSettings,
    *,
    conditional=None,
    prediction: PredictionSettings = PredictionSettings(),
    start: LadderState | None = None,
    callbacks: Callbacks | None = None,
    progress: bool = True,
    max_betas: int | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train ``flow`` (and a learned ``conditional``) along the ladder of ``schedule``; return
    them with the betas reached.

    ``conditional``: a learned q(Y|X) (:mod:`coarseflow.model.conditional`) trained with the
    flow when ``training.objective`` is joint, hybrid or fab; None for mean_force.
    ``start``: a LadderState to continue from (a checkpoint's; the model's fixed part is taken
    from ``flow`` and ``conditional``), which gives exactly the result of an uninterrupted run:
    the random keys of each beta derive from (seed, index of the beta). ``callbacks`` receive
    the metrics and, after every beta, the state to resume from. ``max_betas`` stops after that
    many betas (for tests and budgets; the refit below is after them). ``mesh``: the devices
    every update's batch is split over (:func:`coarseflow.parallel.data_mesh`; None: one
    device). Raises TrainingStopped, after that beta's ``on_beta``, when ``stop_reason`` says
    training is going nowhere. After the last beta, ``training.refit_updates`` updates refit
    the conditional (:mod:`coarseflow.training.refit`); a start whose ladder is done but not
    refitted does only that.
    """
    if (conditional is None) != (training.objective == "mean_force"):
        raise ConfigError(
            f"[training] objective = {training.objective!r} needs "
            + (
                "a learned [conditional] kind (gaussian or flow)"
                if conditional is None
                else "[conditional] kind = 'chains' "
                "(the learned conditional would not be trained); use 'joint', "
                "'hybrid' or 'fab'"
            )
        )
    check_linear_map(model_map(conditional) is not None, training.objective, target)
    if training.refit_updates and model_map(conditional) is not None:
        raise ConfigError(
            "[training] refit_updates: the refit of q(Y|X) does not train a learnable map "
            "([conditional] linear_map); set one of them off"
        )
    check_divisible(training.batch_size, mesh, "[training] batch_size")
    state, static = init((flow, conditional), training)
    if start is None:
        start = LadderState(state, schedule.first_beta(), fab_step=training.fab_step_size)
        check_energy_finite(flow, target, jr.fold_in(jr.key(training.seed), -1 % 2**31))
    # a checkpoint of any device count resumes on this one: its state goes to every device
    start = start._replace(state=replicate(start.state, mesh))
    ladder, callbacks = start, Callbacks() if callbacks is None else callbacks
    settings = UpdateSettings(training, chains, prediction, mesh)
    # the bar's n is the last beta reached (a resumed run starts where it stopped)
    bar = tqdm(
        total=1.0,
        initial=ladder.betas[-1] if ladder.betas else 0.0,
        disable=not progress,
        desc="beta",
        unit="",
        leave=True,
        bar_format="{l_bar}{bar}| beta {n:.4f}/1 [{elapsed}<{remaining}]",
    )
    t0 = time.perf_counter() - ladder.wall_time
    while ladder.beta is not None:
        ladder = _train_beta(ladder, static, target, schedule, settings, callbacks, t0)
        bar.update(ladder.betas[-1] - bar.n)
        reason = stop_reason(
            ladder.streaks, training.batch_size, schedule, list(ladder.betas), ladder.beta
        )
        if reason is not None:  # after on_beta's checkpoint: the user can sample or resume
            bar.close()
            raise TrainingStopped(
                f"training stopped after beta = {ladder.betas[-1]:.6g} (checkpoint saved): {reason}"
            )
        if max_betas is not None and ladder.index >= max_betas:
            break
    bar.close()
    stopped = max_betas is not None and ladder.index >= max_betas  # before the refit, too
    if ladder.beta is None and training.refit_updates and not ladder.refitted and not stopped:
        ladder = _refit(ladder, static, target, training, mesh, callbacks, t0, progress)
    return TrainResult(*eqx.combine(ladder.state.params, static), list(ladder.betas))


def _train_beta(
    ladder: LadderState,
    static,
    target,
    schedule,
    settings: UpdateSettings,
    callbacks: Callbacks,
    t0: float,
) -> LadderState:
    """The updates at ``ladder.beta``, then the ladder's samples there and the next beta."""
    training, chains, _, mesh = settings
    state = start_beta(ladder.state, target, training)
    beta, index, step = ladder.beta, ladder.index, ladder.step
    evals, fab_step, streaks = ladder.energy_evals, ladder.fab_step, ladder.streaks
    n_updates = training.updates_at(index, beta)
    root_key = jr.key(training.seed)
    beta_key = jr.fold_in(root_key, index)
    records, heating = [], []
    for i in range(n_updates):
        lr_factor = training.lr_factor(i, n_updates)
        state, info = update_step(
            state,
            static,
            jr.fold_in(beta_key, i),
            jnp.asarray(beta),
            jnp.asarray(lr_factor),
            jnp.asarray(fab_step),
            target,
            settings,
            i % training.fab_reuse == 0,
        )
        info = jax.device_get(info)
        if training.objective == "fab":
            fab_step = adapt_fab_step(fab_step, float(info.acceptance))
        evals += int(info.energy_evals)
        streaks = streaks.after(bool(info.skipped), int(info.n_used), training.batch_size)
        heating.append(float(info.chain_heating))
        records.append(
            {
                "step": step,
                "beta": float(beta),
                "loss": float(info.loss),
                "grad_norm": float(info.grad_norm),
                "skipped": bool(info.skipped),
                "n_used": int(info.n_used),
                "acceptance": float(info.acceptance),
                "mean_energy": float(info.mean_energy),
                "batch_ess": _float_or_none(info.batch_ess),
                "chain_heating": _float_or_none(info.chain_heating),
                "lr": training.learning_rate * lr_factor,
                "energy_evals": evals,
                "wall_time": time.perf_counter() - t0,
            }
        )
        step += 1
        if len(records) >= METRICS_FLUSH:
            callbacks.on_updates(records)  # visible while a long beta trains
            records = []
    state = end_beta(state)  # the model of this beta: the parameters' average, if any
    flow, conditional = eqx.combine(state.params, static)
    energies, ladder_evals = model_energies(
        flow,
        jr.fold_in(root_key, 2**20 + index),
        beta,
        target,
        chains,
        training.tempering_samples,
        training.batch_size,
        conditional,
        mesh,
    )
    next_beta = schedule.next_beta(beta, energies)
    ladder = LadderState(
        state,
        next_beta,
        index + 1,
        step,
        (*ladder.betas, float(beta)),
        evals + ladder_evals,
        time.perf_counter() - t0,
        fab_step,
        streaks,
    )
    callbacks.on_updates(records)
    callbacks.on_beta(
        float(beta),
        ladder,
        {
            "n_updates": n_updates,
            "mean_energy": float(np.nanmean(energies)),
            "chain_heating": _finite_mean(heating),
        },
    )
    warning = heating_warning(beta, heating)
    if warning is not None:
        tqdm.write(warning, file=sys.stderr)
    return ladder


def _refit(ladder, static, target, training, mesh, callbacks, t0, progress) -> LadderState:
    """The refit of q(Y|X) after the ladder, its updates recorded as a beta's are (their
    records say ``"refit": true``); the state after it goes to ``on_refit``."""
    params, step, evals = ladder.state.params, ladder.step, ladder.energy_evals
    records, losses, n = [], [], training.refit_updates
    updates = refit_updates(params, static, target, training, mesh)
    for i, done in enumerate(tqdm(updates, total=n, disable=not progress, desc="refit q(Y|X)")):
        params, info = done
        evals += int(info.energy_evals)
        losses.append(float(info.loss))
        records.append(
            {
                "step": step,
                "beta": ladder.betas[-1],
                "loss": float(info.loss),
                "grad_norm": float(info.grad_norm),
                "skipped": bool(info.skipped),
                "n_used": int(info.n_used),
                "lr": training.refit_learning_rate * training.lr_factor(i, n),
                "energy_evals": evals,
                "wall_time": time.perf_counter() - t0,
                "refit": True,
            }
        )
        step += 1
        if len(records) >= METRICS_FLUSH:
            callbacks.on_updates(records)
            records = []
    callbacks.on_updates(records)
    ladder = ladder._replace(
        state=ladder.state._replace(params=params),
        step=step,
        energy_evals=evals,
        wall_time=time.perf_counter() - t0,
        refitted=True,
    )
    callbacks.on_refit(ladder, {"refit_updates": n, "refit_loss": _finite_mean(losses[-10:])})
    return ladder
