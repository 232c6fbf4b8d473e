"""How long and how hard to train at each beta: TrainingSettings, and the optimiser it builds
(Adam behind the gradient guard, its learning rate decaying within a beta)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import optax

from coarseflow.errors import ConfigError
from coarseflow.optim import adam_with_skip_clip

OBJECTIVES = ("mean_force", "joint", "hybrid", "fab")
FAB_CONDITIONALS = ("alpha2", "reverse_kl")  # what trains q(Y|X) under fab


@dataclass(frozen=True)
class TrainingSettings:
    """How long and how hard to train at each beta.

    ``lr_final_fraction``: the learning rate decays linearly within each beta from
    ``learning_rate`` to ``learning_rate * lr_final_fraction`` (1 keeps it constant). Late in a
    beta the Monte Carlo noise of the mean force, not the bias, dominates the error of each
    update; a smaller step averages it out instead of letting mode weights random-walk.

    ``final_beta_updates`` (default: ``updates_per_beta``): updates at beta = 1, the beta whose
    model is sampled. Along the ladder each beta only has to bring q close enough for the next;
    at beta = 1 the importance weights' spread, and so the ESS, depends on how closely q(X)
    matches p(X). Where the mean force is noisy, more updates there also give the mode weights
    longer to drift (alanine dipeptide on a CPU budget: docs/benchmarks.md).

    ``force_clip``: each sample's mean force is capped at this multiple of the batch's median
    force norm (``objectives.clip_forces``): a steric clash then cannot drown the batch.

    ``forward_kl_weight`` (lambda, default 0: the paper's pure reverse KL) adds
    lambda * KL(p || q), estimated by self-normalised importance weights of the batch's all-atom
    samples (Y from q(Y|X): the target's exact conditional or a Laplace fit, as in [prediction]).
    The reverse KL moves mass between well-separated modes only through the rare samples that
    land between them; with Adam's per-parameter step sizes that weak, noisy signal lets mode
    weights random-walk once modes are sharp. The forward term pulls each mode's weight toward
    its importance-weighted estimate, which stays accurate while the ESS is reasonable.
    With a learned conditional the term is on the joint, with its exact density.

    ``objective``: ``mean_force`` (the paper's: q(X) by the MCMC mean force), ``joint`` (the
    reparameterised reverse KL of q(X) q(Y|X), no chains) or ``hybrid`` (q(X) by the mean
    force of chains started from q(Y|X), q(Y|X) by its conditional reverse KL on the same X).
    ``fab``: the alpha = 2 divergence of q(X) q(Y|X), estimated by AIS from q toward
    p_beta^2 / q (:mod:`coarseflow.fab`; mass-covering), ``fab_steps`` MALA steps of size
    ``fab_step_size`` per path in q's latent space. The last three need a learned
    ``[conditional]``. ``fab_buffer_size`` (0: none) keeps the end points of the last
    fab_buffer_size / batch_size AIS batches of a beta in FAB's prioritised replay buffer
    (:class:`coarseflow.fab.ReplayBuffer`); each update then learns from batch_size entries
    drawn from it, and a new AIS batch is made every ``fab_reuse`` updates: the energy
    evaluations per update fall by that factor. ``fab_conditional``: what trains q(Y|X) under
    fab: "alpha2" (fab's loss on the joint, FAB as published) or "reverse_kl" (fab's loss on
    q(X) only, q(Y|X) by its conditional reverse KL at the end points' X, as in hybrid). On
    alanine dipeptide "alpha2" fits q(Y|X) to the one end point that holds most of the weight
    and diverges (docs/benchmarks.md, Session 13); Y|X is unimodal, so the reverse KL loses
    nothing there.

    ``average_decay`` (0: off): within each beta, an exponential moving average of the
    parameters, average <- d average + (1 - d) params after every update, started at the
    beta's first parameters; at the end of the beta the model becomes that average (the next
    beta starts from it, the ladder's samples and the checkpoint are its). At a constant
    learning rate Adam's iterates jitter around the optimum by about the learning rate per
    parameter and update, and importance weights feel that jitter (docs/benchmarks.md,
    Session 16); the average of the last ~1 / (1 - d) updates does not. 0.99 averages over
    about 100 updates.

    ``conditional_learning_rate`` (default: none): the learned q(Y|X) gets an Adam and a gradient
    guard of its own at this rate, q(X) keeps ``learning_rate`` (both decay as above). Adam's
    first steps move every parameter by about the learning rate in the sign of its gradient; in
    the 512 x 3 network of capped Ala3's 93-dimensional q(Y|X) that coherent step at 3e-4 put
    its draws into clashes within two updates, and the run starved (docs/benchmarks.md,
    Session 25). One guard for both also let the conditional's clash gradients (norm ~1e6) set
    the scale against which q(X)'s were judged.

    ``refit_updates`` (0: none): after the ladder, that many updates of the learned q(Y|X)
    alone at beta = 1, q(X) fixed, on the importance-weighted bound with ``refit_draws`` draws
    of Y at each of batch_size / refit_draws X (batch_size evaluations per update; objectives'
    ``conditional_importance_weighted``), each gradient normalised, by Adam at
    ``refit_learning_rate`` decaying as in a beta
    (:mod:`coarseflow.training.refit`). The bound is mass-covering: q(Y|X) trained by a
    reverse KL has tails too light for importance weights (docs/benchmarks.md, Session 23).
    """

    batch_size: int = 128
    learning_rate: float = 1e-3
    updates_per_beta: int = 100
    first_beta_updates: int = 500
    final_beta_updates: int | None = None
    lr_final_fraction: float = 0.1
    tempering_samples: int = 512
    forward_kl_weight: float = 0.0
    objective: str = "mean_force"
    force_clip: float = 10.0
    fab_steps: int = 8
    fab_step_size: float = 0.3
    fab_buffer_size: int = 0
    fab_reuse: int = 1
    fab_conditional: str = "alpha2"
    average_decay: float = 0.0
    conditional_learning_rate: float | None = None
    refit_updates: int = 0
    refit_draws: int = 64
    refit_learning_rate: float = 3e-5
    skip_window: int = 50
    skip_factor: float = 10.0
    clip_factor: float = 3.0
    seed: int = 0

    def __post_init__(self):
        from coarseflow import checks

        def key(name):
            return f"[training] {name}"

        for name in (
            "batch_size",
            "updates_per_beta",
            "first_beta_updates",
            "tempering_samples",
            "fab_steps",
            "fab_reuse",
        ):
            checks.integer(key(name), getattr(self, name), 1)
        checks.integer(key("fab_buffer_size"), self.fab_buffer_size, 0)
        self._check_conditional_training()
        if self.fab_buffer_size % self.batch_size:
            raise checks.fail(
                key("fab_buffer_size"),
                f"a multiple of batch_size = {self.batch_size}",
                self.fab_buffer_size,
            )
        if self.fab_buffer_size and self.objective != "fab":
            raise ConfigError(
                "[training] fab_buffer_size: the replay buffer is fab's; "
                f"objective is {self.objective!r} (set it to 0)"
            )
        if self.fab_reuse > 1 and not self.fab_buffer_size:
            raise ConfigError(
                "[training] fab_reuse: reusing AIS batches needs the replay "
                "buffer; set fab_buffer_size (e.g. 8 x batch_size)"
            )
        # the gradient guard's first 10 norms only calibrate it (optim.adam_with_skip_clip)
        checks.integer(key("skip_window"), self.skip_window, 10)
        if self.final_beta_updates is not None:
            checks.integer(key("final_beta_updates"), self.final_beta_updates, 1)
        checks.number(key("learning_rate"), self.learning_rate, 0.0, 1.0)
        checks.number(key("lr_final_fraction"), self.lr_final_fraction, 0.0, 1.0)
        checks.number(key("forward_kl_weight"), self.forward_kl_weight, 0.0, 1e6, low_open=False)
        checks.number(
            key("average_decay"), self.average_decay, 0.0, 1.0, low_open=False, high_open=True
        )
        for name in ("force_clip", "fab_step_size"):
            checks.number(key(name), getattr(self, name), 0.0)
        checks.choice(key("objective"), self.objective, OBJECTIVES)
        checks.choice(key("fab_conditional"), self.fab_conditional, FAB_CONDITIONALS)
        if self.fab_conditional != "alpha2" and self.objective != "fab":
            raise ConfigError(
                f"[training] fab_conditional: says how fab trains q(Y|X); objective is "
                f"{self.objective!r} (leave it out)"
            )
        checks.seed(key("seed"), self.seed)
        if self.objective == "fab" and self.forward_kl_weight > 0:
            raise ConfigError(
                "[training] forward_kl_weight: fab's loss is mass-covering "
                "already and takes no forward term; set it to 0"
            )
        clip = checks.number(key("clip_factor"), self.clip_factor, 1.0)
        if not (checks.is_finite(self.skip_factor) and self.skip_factor > clip):
            raise checks.fail(
                key("skip_factor"), f"a finite number > clip_factor = {clip:g}", self.skip_factor
            )

    def _check_conditional_training(self) -> None:
        from coarseflow import checks

        checks.integer("[training] refit_updates", self.refit_updates, 0)
        checks.integer("[training] refit_draws", self.refit_draws, 2)
        checks.number("[training] refit_learning_rate", self.refit_learning_rate, 0.0, 1.0)
        if self.conditional_learning_rate is not None:
            checks.number(
                "[training] conditional_learning_rate", self.conditional_learning_rate, 0.0, 1.0
            )
            if self.objective == "mean_force":
                raise ConfigError(
                    "[training] conditional_learning_rate: the rate of a learned q(Y|X); "
                    "objective is 'mean_force' (the chains give Y|X): leave it out"
                )
        if not self.refit_updates:
            return
        if self.objective == "mean_force":
            raise ConfigError(
                "[training] refit_updates: refits a learned q(Y|X); objective is "
                "'mean_force' (the chains give Y|X): set it to 0"
            )
        if self.batch_size % self.refit_draws:
            raise checks.fail(
                "[training] refit_draws",
                f"a divisor of batch_size = {self.batch_size}",
                self.refit_draws,
            )

    def updates_at(self, index: int, beta: float) -> int:
        """Updates at the ``index``-th beta of the ladder, ``beta``."""
        if index == 0:
            return self.first_beta_updates
        if beta >= 1.0 and self.final_beta_updates is not None:
            return self.final_beta_updates
        return self.updates_per_beta

    def optimizer(
        self, learning_rate: float | None = None
    ) -> optax.GradientTransformationExtraArgs:
        """Adam at ``learning_rate`` (default: ``self.learning_rate``) behind the gradient
        guard, its steps scaled by the ``lr_factor`` that each update passes (the decay within
        a beta, :func:`lr_factor`). Without ``learning_rate`` and with a
        ``conditional_learning_rate``, the model's parameters (flow, conditional) are two
        groups, each with its own Adam and guard."""

        def guarded_adam(rate):
            return adam_with_skip_clip(
                rate,
                window=self.skip_window,
                skip_factor=self.skip_factor,
                clip_factor=self.clip_factor,
            )

        if learning_rate is not None or self.conditional_learning_rate is None:
            rate = self.learning_rate if learning_rate is None else learning_rate
            return optax.chain(guarded_adam(rate), scale_by_lr_factor())
        parts = {
            "flow": guarded_adam(self.learning_rate),
            "conditional": guarded_adam(self.conditional_learning_rate),
        }
        return optax.chain(optax.partition(parts, _model_parts), scale_by_lr_factor())

    def lr_factor(self, i: int, n_updates: int) -> float:
        """The learning rate's factor at update ``i`` of a beta's ``n_updates``: linear from 1
        to ``lr_final_fraction``."""
        frac = i / max(n_updates - 1, 1)
        return 1.0 - (1.0 - self.lr_final_fraction) * frac


def _model_parts(params) -> tuple:
    """The group of every leaf of the model's parameters (flow, conditional)."""
    flow, conditional = params
    return jax.tree.map(lambda _: "flow", flow), jax.tree.map(lambda _: "conditional", conditional)


def scale_by_lr_factor() -> optax.GradientTransformationExtraArgs:
    """Updates times the extra argument ``lr_factor`` (traced: one compile for every factor).
    Stateless, so a checkpoint's optimiser state has the same leaves as without it."""

    def update(updates, state, params=None, *, lr_factor=1.0, **extra_args):
        return jax.tree.map(lambda u: lr_factor * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)
