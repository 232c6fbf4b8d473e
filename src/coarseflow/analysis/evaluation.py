"""Evaluate every checkpoint of a run against the target's references; write summary and figures."""

from __future__ import annotations

from pathlib import Path

import jax.random as jr
import numpy as np
from tqdm.auto import tqdm

from coarseflow.analysis import metrics, plots
from coarseflow.predict import Samples, draw_samples, log_partition_estimate, refine
from coarseflow.runs import RunDir
from coarseflow.targets import DoubleWell, GaussianMixture, ManyWell


def _is_one(beta: float) -> bool:
    return abs(beta - 1.0) < 1e-9


def reference_metrics(target, samples: Samples, beta: float) -> dict:
    """Metrics of one checkpoint: ESS and, where the target has exact references, errors.

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
        "log_Z_estimate": log_partition_estimate(lw),
        "n_nonfinite_energy": int(np.sum(~np.isfinite(samples.energy))),
    }
    if np.any(np.isfinite(samples.ais_acceptance)):
        out["ais_acceptance"] = float(np.nanmean(samples.ais_acceptance))
    X = samples.X
    if isinstance(target, DoubleWell):
        right = X[:, 0] > 0
        exact = target.well_mass(beta)
        lo, hi = target.x_bounds()

        def density(g):
            return target.marginal_density(g, beta)

        out |= {
            "right_well_mass_raw": float(np.mean(right)),
            "right_well_mass_reweighted": float(np.sum(w * right)),
            "right_well_mass_exact": float(exact),
            "right_well_error_raw": float(abs(np.mean(right) - exact)),
            "right_well_error_reweighted": float(abs(np.sum(w * right) - exact)),
            "tv_x1_raw": metrics.histogram_tv(X[:, 0], density, 200, (lo[0], hi[0])),
            "tv_x1_reweighted": metrics.histogram_tv(X[:, 0], density, 200, (lo[0], hi[0]),
                                                     weights=w),
            "log_Z_exact": float(target.log_partition(beta)),
        }
    elif isinstance(target, GaussianMixture):
        k = target.n_components
        labels = np.asarray(target.component_of(X))
        raw = metrics.mode_masses(labels, k)
        rew = metrics.mode_masses(labels, k, weights=w)
        out |= {"component_masses_raw": raw.tolist(), "component_masses_reweighted": rew.tolist()}
        if _is_one(beta):
            exact = np.asarray(target.component_weights)
            ref = np.asarray(target.sample(jr.key(12345), len(X)))[:, : target.n_x]
            tv_raw = [metrics.histogram_tv(X[:, i], ref[:, i], 100) for i in range(target.n_x)]
            tv_rew = [metrics.histogram_tv(X[:, i], ref[:, i], 100, weights=w)
                      for i in range(target.n_x)]
            log_p = np.asarray(target.log_marginal(X))
            out |= {
                "component_weights_exact": exact.tolist(),
                "components_found": int(np.sum(raw > 0.2 * exact)),
                "max_weight_error_raw": float(np.max(np.abs(raw - exact))),
                "max_weight_error_reweighted": float(np.max(np.abs(rew - exact))),
                "worst_marginal_tv_raw": float(max(tv_raw)),
                "worst_marginal_tv_reweighted": float(max(tv_rew)),
                "kl_q_p": float(np.mean(samples.log_qX - log_p)),
                "log_Z_exact": float(target.log_partition(1.0)),
            }
    elif isinstance(target, ManyWell):
        right = X > 0  # (N, m): which well each coordinate is in
        exact = target.well_mass(beta)
        log_z = float(target.log_partition(beta))
        out |= {
            "right_well_mass_exact": float(exact),
            "max_right_well_error_raw": float(np.max(np.abs(np.mean(right, axis=0) - exact))),
            "max_right_well_error_reweighted": float(np.max(np.abs(w @ right - exact))),
            "log_Z_exact": log_z,
            "log_Z_error": float(out["log_Z_estimate"] - log_z),  # signed: estimate - exact
        }
    if hasattr(target, "observables_metrics"):
        out |= target.observables_metrics(samples, w, beta)
    return out


def _figures(run: RunDir, target, by_beta: dict[float, Samples]) -> list[Path]:
    figs = [plots.plot_training_curves(run.figures_dir / "training.png", run.read_metrics())]
    final_beta = max(by_beta)
    final = by_beta[final_beta]
    w_final = np.asarray(metrics.normalized_weights(final.log_weights))
    if isinstance(target, DoubleWell):
        lo, hi = target.x_bounds()
        figs.append(plots.plot_marginals_per_beta(
            run.figures_dir / "marginals_per_beta.png",
            {b: s.X[:, 0] for b, s in by_beta.items()},
            target.marginal_density,
            range=(float(lo[0]), float(hi[0])),
        ))
    elif isinstance(target, GaussianMixture):
        ref = np.asarray(target.sample(jr.key(12345), len(final.X)))[:, :2]
        contour = (lambda g: np.asarray(target.log_marginal(g))) if target.n_x == 2 else None
        figs.append(plots.plot_2d(run.figures_dir / "x_2d.png", final.X[:, :2], contour, ref,
                                  title=f"q(X) at beta = {final_beta:.3g} (first two X)"))
        figs.append(plots.plot_2d(run.figures_dir / "x_2d_reweighted.png", final.X[:, :2],
                                  contour, ref, weights=w_final,
                                  title="reweighted"))
    if hasattr(target, "plot_figures"):
        figs += target.plot_figures(run.figures_dir, by_beta)
    return figs


def evaluate_run(path, *, n_samples: int | None = None, seed: int = 1,
                 progress: bool = True, refine_steps: int | None = None) -> dict:
    """Metrics for every checkpoint of run ``path``; writes summary.json and figures/*.png.

    The last checkpoint gets ``n_samples`` (default: [prediction] n_samples), the ones before it
    at most [prediction] ladder_samples. With a learned conditional and ``refine_steps``
    (default: [prediction] refine_steps) > 0, the last one's samples refined by AIS toward p
    (``predict.refine``) are evaluated too, under "refined".
    """
    run = RunDir(path).require_existing()
    with run.locked():  # it writes summary.json and figures/: one writer at a time
        return _evaluate(run, n_samples, seed, progress, refine_steps)


def _evaluate(run: RunDir, n_samples: int | None, seed: int, progress: bool,
              refine_steps: int | None) -> dict:
    """evaluate_run, with ``run`` locked."""
    from coarseflow.workflow import run_flows, with_refine_steps, write_summary

    config, target, flows = run_flows(run.root)
    prediction = with_refine_steps(config.prediction, refine_steps)
    n_final = config.prediction.n_samples if n_samples is None else n_samples
    n_ladder = min(n_final, config.prediction.ladder_samples or n_final)
    per_beta, by_beta = [], {}
    for i, (meta, (flow, conditional)) in enumerate(tqdm(flows, desc="evaluate",
                                                          disable=not progress)):
        n = n_final if i == len(flows) - 1 else n_ladder
        s = draw_samples(jr.key(seed), flow, target, meta["beta"], config.prediction, n=n,
                         conditional=conditional)
        per_beta.append(reference_metrics(target, s, meta["beta"]) | {
            "index": meta["index"], "step": meta["step"], "wall_time": meta["wall_time"],
            # energy + gradient evaluations of training up to this checkpoint (None: not logged)
            "energy_evals": meta.get("energy_evals"),
            # kT; absent from checkpoints written before it was logged
            "chain_heating": meta.get("chain_heating")})
        by_beta[meta["beta"]] = s
    meta, (flow, conditional) = flows[-1]
    if conditional is not None and prediction.refine_steps > 0:
        # the sampled model refined by AIS toward p: its own ESS, Pareto k, log Z, errors
        beta = meta["beta"]
        refined, info = refine(jr.key(seed), flow, conditional, target, beta, prediction,
                               n=n_final)
        per_beta[-1]["refined"] = reference_metrics(target, refined, beta) | info
    figures = _figures(run, target, by_beta)
    summary = {
        "final": per_beta[-1],
        "per_beta": per_beta,
        "figures": [str(f) for f in figures],
        "summary_path": str(run.summary_path),
    }
    write_summary(run, summary)
    return summary
