"""train()'s record in a run directory: metrics.jsonl, one checkpoint per beta, and the state a
resumed run starts from. The application layer's side of
:class:`coarseflow.training.ladder.Callbacks`: training itself knows nothing of files."""

from __future__ import annotations

import equinox as eqx

from coarseflow.progress import compiling
from coarseflow.runs import RunDir, all_finite
from coarseflow.training.health import Streaks
from coarseflow.training.ladder import Callbacks, LadderState, TrainResult, train
from coarseflow.training.step import TrainState, init


class RunRecorder(Callbacks):
    """Appends the updates' records to ``run``'s metrics.jsonl and checkpoints every beta:
    (params, optimiser state) and the metadata a resume reads back (:func:`resume_point`)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_updates(self, records: list[dict]) -> None:
        self.run.append_metrics(records)

    def on_beta(self, beta: float, ladder: LadderState, summary: dict) -> None:
        self.run.save_checkpoint(
            beta,
            (ladder.state.params, ladder.state.opt_state),
            {
                "index": ladder.index - 1,
                "step": ladder.step,
                "next_beta": ladder.beta,
                "n_updates": summary["n_updates"],
                "wall_time": ladder.wall_time,
                "mean_energy": summary["mean_energy"],
                "chain_heating": summary["chain_heating"],
                "energy_evals": ladder.energy_evals,
                "fab_step_size": ladder.fab_step,
                "skipped_streak": ladder.streaks.skipped,
                "starved_streak": ladder.streaks.starved,
                "refitted": ladder.refitted,
            },
        )

    def on_refit(self, ladder: LadderState, summary: dict) -> None:
        """The refitted model in place of the last beta's checkpoint, its metadata kept and
        brought up to date."""
        meta = self.run.find_checkpoint()
        beta = meta["beta"]
        for key in ("path", "beta", "eqx_sha256"):
            meta.pop(key, None)
        self.run.save_checkpoint(
            beta,
            (ladder.state.params, ladder.state.opt_state),
            meta
            | summary
            | {
                "step": ladder.step,
                "wall_time": ladder.wall_time,
                "energy_evals": ladder.energy_evals,
                "refitted": True,
            },
        )


def resume_point(run: RunDir, model, training) -> LadderState | None:
    """The LadderState of ``run``'s newest intact checkpoint (damaged ones are set aside, and
    metrics.jsonl is cut back to the updates it covers), or None where it has none.

    ``model`` = (flow, conditional): the structure to load into (its trainable leaves are
    replaced)."""
    if not run.checkpoints():
        run.refuse_if_damaged()  # only damaged checkpoints: resuming would start afresh
        return None
    run.set_aside_damaged()
    template, _ = init(model, training)
    meta, (params, opt_state) = run.load_newest(
        (template.params, template.opt_state), lambda tree: all_finite(tree[0]), set_aside=True
    )
    run.truncate_metrics(meta["step"])
    return LadderState(
        TrainState(params, opt_state),
        meta["next_beta"],
        meta["index"] + 1,
        meta["step"],
        tuple(m["beta"] for m in run.checkpoints() if m["beta"] <= meta["beta"]),
        meta.get("energy_evals", 0),
        meta.get("wall_time", 0.0),
        meta.get("fab_step_size", training.fab_step_size),
        Streaks(meta.get("skipped_streak", 0), meta.get("starved_streak", 0)),
        meta.get("refitted", False),
    )


def train_into(
    run: RunDir,
    target,
    flow,
    schedule,
    training,
    chains,
    *,
    conditional=None,
    resume: bool = False,
    **kwargs,
) -> TrainResult:
    """:func:`coarseflow.training.ladder.train` recorded in ``run`` (locked meanwhile): every update
    in metrics.jsonl, every beta checkpointed. ``resume=True`` continues from the newest intact
    checkpoint; otherwise (or where there is none) metrics.jsonl starts empty, so the lines of a
    process killed before its first checkpoint go. ``kwargs``: train()'s."""
    with run.locked():  # reentrant: train_from_config holds it already
        start = resume_point(run, (flow, conditional), training) if resume else None
        if start is None:
            run.truncate_metrics(0)
        elif start.finished(training):
            flow, conditional = eqx.combine(
                start.state.params, init((flow, conditional), training)[1]
            )
            return TrainResult(flow, conditional, list(start.betas))
        programs = training_programs(training)
        with compiling("training", kwargs.get("progress", True), names=programs):
            return train(
                target,
                flow,
                schedule,
                training,
                chains,
                conditional=conditional,
                start=start,
                callbacks=RunRecorder(run),
                **kwargs,
            )


def training_programs(training) -> dict[str, str]:
    """train()'s jitted functions that take a molecule minutes to compile, in words: each
    compile of one is said as it starts and with its duration (progress.compiling), so the
    bar's minutes at 0 % are explained. A renamed one is only compiled without a word."""
    update = f"(batch {training.batch_size})"
    return {
        "_fab_batch": f"fab's AIS batch {update}",
        "_gradients": f"the update's gradient {update}",
        "_joint_forward": f"the forward term's gradient {update}",
        "_apply": "the optimiser step",
        "_energies_of_samples": f"the ladder's samples ({training.tempering_samples})",
        "_refit_update": f"the refit of q(Y|X) (batch {training.batch_size})",
    }
