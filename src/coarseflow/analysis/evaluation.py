"""Evaluate every checkpoint of a run against the target's references; write summary and figures."""

from __future__ import annotations

from pathlib import Path

import jax.random as jr
import numpy as np

from coarseflow.analysis import metrics, plots
from coarseflow.analysis.reports import report_for
from coarseflow.atomic_files import atomic_write_bytes
from coarseflow.parallel import check_divisible
from coarseflow.predict.draw import Samples, draw_samples, log_partition_estimate
from coarseflow.predict.refine import refine
from coarseflow.progress import Progress
from coarseflow.runs import RunDir

# the last checkpoint's evaluated samples, kept for the HTML report (coarseflow/report.py)
SAMPLES_NAME = "evaluation.npz"


def reference_metrics(target, samples: Samples, beta: float) -> dict:
    """Metrics of one checkpoint: ESS and, where the target has exact references, errors
    (the target's report, ``reports.report_for``).

    'raw' numbers use the one-shot samples as they are; 'reweighted' ones use the normalised
    importance weights (self-normalised importance sampling).
    """
    lw = samples.log_weights
    w = np.asarray(metrics.normalized_weights(lw))
    out = {
        "beta": float(beta),
        "n_samples": int(len(lw)),
        "ess": float(metrics.ess(lw)),
        "ess_fraction": float(metrics.ess_fraction(lw)),
        "pareto_k": metrics.pareto_k(lw),
        "max_weight_ratio": metrics.max_weight_ratio(lw),
        # -inf: zero weight (infinite energy, Y outside its domain); NaN: a broken sample
        "n_nonfinite_log_weights": int(np.sum(~np.isfinite(lw))),
        "log_Z_estimate": log_partition_estimate(lw),
        "log_Z_estimate_err": metrics.log_partition_stderr(lw),
        "n_nonfinite_energy": int(np.sum(~np.isfinite(samples.energy))),
    }
    if np.any(np.isfinite(samples.ais_acceptance)):
        out["ais_acceptance"] = float(np.nanmean(samples.ais_acceptance))
    return out | report_for(target).metrics(samples, w, beta)


def evaluation_samples_path(run: RunDir) -> Path:
    """Where evaluation keeps the last beta's samples for the report: RUN/samples/evaluation.npz."""
    return run.samples_dir / SAMPLES_NAME


def _save_samples(run: RunDir, samples: Samples, beta: float) -> Path:
    """The samples (x, X, log_weights, energy) and beta, atomically: the report reads them
    instead of drawing again (a molecule's AIS takes minutes)."""
    arrays = {
        "x": samples.x,
        "X": samples.X,
        "log_weights": samples.log_weights,
        "energy": samples.energy,
        "beta": np.float64(beta),
    }
    path = evaluation_samples_path(run)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return path


def _figures(run: RunDir, target, by_beta: dict[float, Samples]) -> list[Path]:
    figs = [plots.plot_training_curves(run.figures_dir / "training.png", run.read_metrics())]
    return figs + report_for(target).figures(run.figures_dir, by_beta)


def evaluate_run(
    path,
    *,
    n_samples: int | None = None,
    seed: int = 1,
    progress: bool = True,
    refine_steps: int | None = None,
    mesh=None,
) -> dict:
    """Metrics for every checkpoint of run ``path``; writes summary.json and figures/*.png.

    The last checkpoint gets ``n_samples`` (default: [prediction] n_samples), the ones before it
    at most [prediction] ladder_samples. With a learned conditional and ``refine_steps``
    (default: [prediction] refine_steps) > 0, the last one's samples refined by AIS toward p
    (``predict.refine``) are evaluated too, under "refined", and drawn in figures/refined/.
    ``mesh``: the devices each batch of draws is split over
    (:func:`coarseflow.parallel.data_mesh`; its rows, min([prediction] batch_size,
    ``n_samples``), a multiple of their number; not the refinement's AIS). The samples equal
    one device's up to rounding.
    """
    run = RunDir(path).require_existing()
    with run.locked():  # it writes summary.json and figures/: one writer at a time
        return _evaluate(run, n_samples, seed, progress, refine_steps, mesh)


def _evaluate(
    run: RunDir, n_samples: int | None, seed: int, progress: bool, refine_steps: int | None, mesh
) -> dict:
    """evaluate_run, with ``run`` locked."""
    from coarseflow.sample_outputs import with_refine_steps
    from coarseflow.workflow import run_flows, write_summary

    config, target, flows = run_flows(run.root)
    prediction = with_refine_steps(config.prediction, refine_steps)
    n_final = config.prediction.n_samples if n_samples is None else n_samples
    n_ladder = min(n_final, config.prediction.ladder_samples or n_final)
    per_beta, by_beta = [], {}
    # one batch shape for every checkpoint (the ladder's fewer samples cut from it): the
    # sampler compiles once, not again for each n
    rows = min(config.prediction.batch_size, n_final)
    check_divisible(rows, mesh, "rows per batch (min([prediction] batch_size, n))")
    refining = flows[-1][1][1] is not None and prediction.refine_steps > 0
    total = n_ladder * (len(flows) - 1) + n_final * (1 + refining)
    bar = Progress(total, "evaluate", show=progress)
    for i, (meta, (flow, conditional)) in enumerate(flows):
        n = n_final if i == len(flows) - 1 else n_ladder
        s = draw_samples(
            jr.key(seed),
            target,
            flow,
            meta["beta"],
            config.prediction,
            n=n,
            conditional=conditional,
            batch=rows,
            progress=bar,
            mesh=mesh,
        )
        per_beta.append(
            reference_metrics(target, s, meta["beta"])
            | {
                "index": meta["index"],
                "step": meta["step"],
                "wall_time": meta["wall_time"],
                # energy + gradient evaluations of training up to this checkpoint (None: not logged)
                "energy_evals": meta.get("energy_evals"),
                # kT; absent from checkpoints written before it was logged
                "chain_heating": meta.get("chain_heating"),
            }
        )
        by_beta[meta["beta"]] = s
    meta, (flow, conditional) = flows[-1]
    if refining:
        # the sampled model refined by AIS toward p: its own ESS, Pareto k, log Z, errors
        beta = meta["beta"]
        refined, info = refine(
            jr.key(seed),
            target,
            flow,
            conditional,
            beta,
            prediction,
            n=n_final,
            progress=bar,
            mesh=mesh,
        )
        per_beta[-1]["refined"] = reference_metrics(target, refined, beta) | info
    bar.close()
    figures = _figures(run, target, by_beta)
    if refining:  # the last beta's figures again, of the refined samples
        figures += report_for(target).figures(run.figures_dir / "refined", {beta: refined})
    samples_path = _save_samples(run, by_beta[meta["beta"]], meta["beta"])
    summary = {
        "final": per_beta[-1],
        "per_beta": per_beta,
        "figures": [str(f) for f in figures],
        "summary_path": str(run.summary_path),
        "samples_path": str(samples_path),
    }
    write_summary(run, summary)
    return summary
