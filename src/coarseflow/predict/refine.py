"""A learned model's samples refined: annealed importance sampling from q(X) q(Y|X) toward
p_beta in q's latent space (:func:`coarseflow.fab.latent_ais`), its MALA (or HMC) step size
chosen by a pilot."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from coarseflow.errors import ConfigError
from coarseflow.model.linear_map import check_linear_map, model_map
from coarseflow.parallel import check_divisible, shard_batch
from coarseflow.predict.conditional import with_polish
from coarseflow.predict.draw import Samples, _in_batches, batch_rows
from coarseflow.predict.settings import PredictionSettings
from coarseflow.progress import Progress
from coarseflow.targets.base import AbstractTarget

_PILOT_PATHS = 256


@eqx.filter_jit
def _refine_batch(
    flow, conditional, target, key, beta, n: int, n_steps: int, n_leapfrog: int, step_size, mesh
):
    from coarseflow.fab import latent_ais

    batch = latent_ais(
        flow,
        conditional,
        target=target,
        key=jr.fold_in(key, 0),
        beta=beta,
        n=n,
        n_steps=n_steps,
        step_size=step_size,
        toward="p",
        n_leapfrog=n_leapfrog,
    )
    # the end point, relabeled at random: p is the same for every relabeling
    perms = jnp.asarray(conditional.relabelings)
    Y = batch.Y[jnp.arange(n)[:, None], perms[jr.randint(jr.fold_in(key, 1), (n,), 0, len(perms))]]
    x = target.partition.merge(batch.X, Y)
    u = jax.vmap(target.energy)(x)
    log_w = jnp.where(
        jnp.isfinite(batch.log_weights) & jnp.isfinite(u), batch.log_weights, -jnp.inf
    )
    log_qX = flow.log_prob(batch.X)
    # the paths are independent: split over the mesh, XLA carries the split back through them
    return shard_batch((x, batch.X, log_qX, -beta * u - log_w, u, log_w, batch.acceptance), mesh)


def pilot_step(candidates: np.ndarray, acceptances: np.ndarray, target: float) -> float:
    """The step size at acceptance ``target``: log-linear interpolation between the two pilot
    ``candidates`` (increasing, (C,)) whose mean ``acceptances`` (C,) bracket it (acceptance
    falls as the step grows); the nearest candidate where none do. The candidates are a factor
    2 apart, and the nearest of them alone left the acceptance at 0.74 on alanine dipeptide."""
    above = np.flatnonzero(acceptances >= target)
    below = np.flatnonzero(acceptances < target)
    if above.size and below.size and above[-1] + 1 == below[0]:
        i = above[-1]
        a0, a1 = acceptances[i], acceptances[i + 1]
        fraction = (a0 - target) / (a0 - a1)
        return float(
            np.exp(np.log(candidates[i]) + fraction * np.log(candidates[i + 1] / candidates[i]))
        )
    return float(candidates[int(np.argmin(np.abs(acceptances - target)))])


def refine(
    key,
    target: AbstractTarget,
    flow,
    conditional,
    beta: float,
    settings: PredictionSettings,
    n: int | None = None,
    *,
    batch: int | None = None,
    progress: Progress | None = None,
    mesh=None,
) -> tuple[Samples, dict]:
    """N = ``n`` (default settings.n_samples) samples of p_beta by annealed importance sampling
    from q(X) q(Y|X) (a learned conditional) in q's latent space, ``settings.refine_steps``
    MALA steps per sample, or HMC steps of ``settings.refine_leapfrog`` leapfrog steps
    (:func:`coarseflow.fab.latent_ais` toward "p"). Each weight is unbiased for Z(beta),
    whatever the step size; the steps only lower their variance.

    Returns (Samples, info): log_q is the density the AIS weight implies, -beta u - log w
    (as for ``ais``), ais_acceptance each path's; info has ``refine_steps``,
    ``refine_leapfrog``, ``refine_step_size`` (chosen by a pilot, see PredictionSettings),
    ``refine_acceptance`` and ``refine_energy_evals`` (pilot included). ``batch``,
    ``progress``, ``mesh``: as :func:`~coarseflow.predict.draw.draw_samples`'s (each batch's
    paths split over the mesh).
    """
    if conditional is None:
        raise ConfigError(
            "[prediction] refine_steps: needs a learned q(Y|X) ([conditional] "
            "kind = 'gaussian' or 'flow')"
        )
    # the CLI's --refine-steps bypasses the config's check
    check_linear_map(model_map(conditional) is not None, "joint", target, settings.refine_steps)
    conditional = with_polish(conditional, settings)
    n = settings.n_samples if n is None else n
    rows = batch_rows(n, settings, batch)
    check_divisible(rows, mesh, "rows per batch (min([prediction] batch_size, n))")
    progress = Progress(n, "refine", show=False) if progress is None else progress
    steps, leapfrog = settings.refine_steps, settings.refine_leapfrog
    beta = jnp.asarray(beta)
    k_pilot, key = jr.split(key)
    candidates = settings.refine_step_size * 2.0 ** np.arange(-3, 3)
    with progress.compiling(f"the refinement's pilot (batch {_PILOT_PATHS})"):
        pilot = [
            float(
                np.mean(
                    _refine_batch(
                        flow,
                        conditional,
                        target,
                        jr.fold_in(k_pilot, i),
                        beta,
                        _PILOT_PATHS,
                        steps,
                        leapfrog,
                        jnp.asarray(h),
                        mesh,
                    )[-1]
                )
            )
            for i, h in enumerate(candidates)
        ]
    step = pilot_step(candidates, np.asarray(pilot), settings.refine_target_acceptance)
    x, X, log_qX, log_q, u, log_w, acceptance = _in_batches(
        n,
        rows,
        lambda i: _refine_batch(
            flow,
            conditional,
            target,
            jr.fold_in(key, i),
            beta,
            rows,
            steps,
            leapfrog,
            jnp.asarray(np.float64(step)),  # typed as the pilot's: one compilation
            mesh,
        ),
        progress,
        "the refinement",
    )
    # each path (pilot ones and the last batch's padding too): steps x leapfrog + 1
    # evaluations with gradient, each with the polish's at its X, and its end's energy
    drawn = -(-n // rows) * rows
    per_path = (steps * leapfrog + 1) * (1 + conditional.polish_evals) + 1
    evals = (len(candidates) * _PILOT_PATHS + drawn) * per_path
    info = {
        "refine_steps": steps,
        "refine_leapfrog": leapfrog,
        "refine_step_size": step,
        "refine_acceptance": float(np.mean(acceptance)),
        "refine_energy_evals": int(evals),
    }
    return Samples(
        x=x, X=X, log_qX=log_qX, log_q=log_q, energy=u, log_weights=log_w, ais_acceptance=acceptance
    ), info
