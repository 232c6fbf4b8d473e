"""How samples and their weights are drawn: PredictionSettings, the ``[prediction]`` table."""

from __future__ import annotations

from dataclasses import dataclass

_CONDITIONALS = ("auto", "exact", "laplace", "ais")


@dataclass(frozen=True)
class PredictionSettings:
    """``conditional``: auto (exact when the target has one, else ais), exact, laplace or ais.

    ``ais_steps`` and ``ais_step_size``: the annealing path of ``ais`` (MALA steps, and their
    step in the whitened coordinates, where the Laplace fit is a standard normal).
    ``ais_paths``: paths per X. They share the Laplace fit (most of the cost for a molecule), and
    averaging their weights lowers the variance of each X's weight and keeps X whose single path
    would start outside its domain (weight zero).
    ``ladder_samples`` (default: ``n_samples``): samples drawn to evaluate each checkpoint below
    the last one, which only has to show how q changed along the ladder; the last checkpoint, the
    model one samples, is evaluated with ``n_samples``.
    ``refine_steps`` > 0 (a learned conditional only):
    :func:`~coarseflow.predict.refine.refine` the samples by AIS from q toward p_beta in that
    many MALA steps per sample, in q's latent space, with the step size at
    ``refine_target_acceptance`` (0.6; optimal for sampling in high dimension: about 0.57 for
    MALA, 0.65 for HMC), interpolated between the pilot's ``refine_step_size`` x 2^(-3 ... 2)
    (256 paths each).
    ``refine_leapfrog`` > 1: each step is an HMC step of that many leapfrog steps instead of
    one MALA step (refine_steps x refine_leapfrog evaluations per sample).
    ``polish_steps`` > 0 (a learned conditional only): at each X, the learned q(Y|X)'s mean is
    moved that many Newton-like steps toward the mode of p_beta(Y|X) before Y is drawn
    (:meth:`~coarseflow.model.conditional.LearnedConditional.polished`): a deterministic
    function of X, so the density stays exact; polish_steps + 1 more energy + force
    evaluations per X (per point of a refinement's path).
    """

    n_samples: int = 10000
    ladder_samples: int | None = None
    conditional: str = "auto"
    minimize_steps: int = 200
    minimize_lr: float = 0.01
    newton_steps: int = 5
    ais_steps: int = 100
    ais_step_size: float = 0.8
    ais_paths: int = 4
    batch_size: int = 1000
    refine_steps: int = 0
    refine_step_size: float = 0.2
    refine_leapfrog: int = 1
    refine_target_acceptance: float = 0.6
    polish_steps: int = 0

    def __post_init__(self):
        from coarseflow import checks

        checks.choice("[prediction] conditional", self.conditional, _CONDITIONALS)
        for name in ("n_samples", "batch_size", "ais_paths", "refine_leapfrog"):
            checks.integer(f"[prediction] {name}", getattr(self, name), 1)
        if self.ladder_samples is not None:
            checks.integer("[prediction] ladder_samples", self.ladder_samples, 1)
        for name in ("minimize_steps", "newton_steps", "ais_steps", "refine_steps", "polish_steps"):
            checks.integer(f"[prediction] {name}", getattr(self, name), 0)
        for name in ("minimize_lr", "ais_step_size", "refine_step_size"):
            checks.number(f"[prediction] {name}", getattr(self, name), 0.0)
        checks.number(
            "[prediction] refine_target_acceptance",
            self.refine_target_acceptance,
            0.0,
            1.0,
            high_open=True,
        )
