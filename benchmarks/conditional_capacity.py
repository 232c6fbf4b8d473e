"""Is a trained run's q(Y|X) limited by its form or by its training? Prints a table.

    python benchmarks/conditional_capacity.py RUN [--arms gaussian:rkl flow:fkl ...]
        [--updates 600] [--seeds 0 1 2] [-m 500] [-k 32]

q(X) of the run's newest checkpoint is held fixed. Its learned conditional is trained further
at that beta by the conditional reverse KL E_q(X) KL(q(Y|X) || p_beta(Y|X)) (the ``hybrid``
objective's part for q(Y|X); exact density, no chains; batch [training] batch_size, Adam with
the project's gradient guard) or by the forward KL E_q(X) KL(p_beta(Y|X) || q(Y|X)) (``fkl``:
``--draws`` Y per X, weights self-normalised within each X, energies only), from the same
start, in two forms:

* ``gaussian``: the run's own conditional, trained on;
* ``flow``: the same Gaussian followed by a conditional spline flow that starts as the identity
  ([conditional] kind = "flow", its knots / layers), so its first density is the Gaussian's.

Every ``--every`` updates the conditional ESS is measured as in ``weight_variance.py``: per X
(M draws of q(X)) the ESS fraction of K weights of q(Y|X); with q(X) fixed it is the part of
the one-shot ESS that q(Y|X) controls. A third loss, ``mcmc``, fits q(Y|X) by maximum
likelihood to the end states of ``--mcmc-steps`` MALA steps run in q's own latent from q(Y|X)
toward p_beta(Y|X) (mass-covering without weights). Energy + force evaluations are counted
where each loss makes them (one per Y for rkl and fkl, mcmc_steps + 1 per X for mcmc).
Several ``--seeds`` (of the training draws) give a spread; ``--ema`` measures the ESS at the
moving average of the parameters instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from coarseflow.model.conditional import ConditionalSettings, make_conditional
from coarseflow.objectives import conditional_terms, masked_mean
from coarseflow.optim import adam_with_skip_clip
from coarseflow.samplers.langevin import MALAState, mala_step
from coarseflow.workflow import load_run


def with_identity_spline(gaussian, target, settings: ConditionalSettings):
    """``gaussian`` (a trained kind-"gaussian" conditional) followed by a spline flow of
    ``settings`` that starts as the identity: the same density, more freedom."""
    flow = make_conditional(jr.key(settings.seed), target, settings)
    parts = lambda c: (c.net, c.loc, c.log_diag, c.lower)  # noqa: E731
    return eqx.tree_at(parts, flow, parts(gaussian))


def conditional_ess(conditional, flow, target, key, beta, m: int, k: int):
    """(M,) ESS fraction of K draws of q(Y|X) at each of M draws X of q(X)."""
    _, _, w = _within_x_draws(conditional, key, flow, target, beta, m, k)
    return 1.0 / jnp.sum(w.reshape(m, k) ** 2, axis=1) / k


def reverse_kl_loss(params, static, key, flow, target, beta, batch: int):
    """E_q(X) KL(q(Y|X) || p_beta(Y|X)), reparameterised: ``batch`` X, one Y each."""
    X = jax.lax.stop_gradient(flow.sample(jr.fold_in(key, 0), (batch,)))
    terms = conditional_terms(
        eqx.combine(params, static), jr.fold_in(key, 1), target, X, beta, 10.0
    )
    return masked_mean(terms.surrogate, terms.ok)


def reverse_kl_gradient(params, static, key, flow, target, beta, batch: int, draws: int, args):
    """(gradient, energy + force evaluations made: one per X)."""
    return _reverse_kl_gradient(params, static, key, flow, target, beta, batch), batch


@eqx.filter_jit
def _reverse_kl_gradient(params, static, key, flow, target, beta, batch: int):
    return jax.grad(reverse_kl_loss)(params, static, key, flow, target, beta, batch)


@eqx.filter_jit
def _within_x_draws(conditional, key, flow, target, beta, n_x: int, draws: int):
    """(X repeated (n_x draws, n_x), Y (n_x draws, n_y), weights (n_x draws,)): ``draws`` Y ~
    q(Y|X) for each of n_x X ~ q(X), weights p_beta(Y|X) / q(Y|X) normalised within each X."""
    X = flow.sample(jr.fold_in(key, 0), (n_x,))
    Xk = jnp.repeat(X, draws, axis=0)
    sample = conditional.sample_batch(jr.fold_in(key, 1), target, Xk, beta)
    u = jax.vmap(target.energy_xy)(Xk, sample.Y)
    ok = sample.valid & jnp.isfinite(u) & jnp.isfinite(sample.log_q)
    log_w = jnp.where(ok, -beta * u - sample.log_q, -jnp.inf).reshape(n_x, draws)
    return Xk, sample.Y, jax.nn.softmax(log_w, axis=1).reshape(-1)


@eqx.filter_jit
def _weighted_log_q_gradient(params, static, target, beta, Xk, Y, w, n_x: int):
    def loss(p):
        conditional = eqx.combine(p, static)
        log_q = jax.vmap(lambda x, y: conditional.log_prob(target, x, beta, y))(Xk, Y)
        return -jnp.sum(jnp.where(w > 0, w * log_q, 0.0)) / n_x

    return jax.grad(loss)(params)


def forward_kl_gradient(params, static, key, flow, target, beta, batch: int, draws: int, args):
    """The gradient of E_q(X) KL(p_beta(Y|X) || q(Y|X)) by self-normalised importance sampling
    within each X: ``batch // draws`` X, ``draws`` Y ~ q(Y|X) each (held fixed), weights
    normalised over the draws of the same X, so p_beta(X) is never needed; energies only.
    Drawing and differentiating are two compiled programs: as one, XLA's CPU runtime hangs
    (idle, every thread waiting) on this system, as it did on Session 12's forward term."""
    n_x = batch // draws
    Xk, Y, w = _within_x_draws(eqx.combine(params, static), key, flow, target, beta, n_x, draws)
    grads = _weighted_log_q_gradient(params, static, target, beta, Xk, Y, w, n_x)
    return grads, Xk.shape[0]  # one energy per draw


@eqx.filter_jit
def _chain_draws(conditional, key, flow, target, beta, n_x: int, n_steps: int, step_size):
    """(X (n_x, n_x dims), Y (n_x, n_y), mean acceptance ()): ``n_steps`` MALA steps on
    p_beta(Y|X) from Y ~ q(Y|X), in q's own latent eps (where q(Y|X) is N(0, I), so one step
    size suits every coordinate and every X), at n_x X ~ q(X)."""
    X = flow.sample(jr.fold_in(key, 0), (n_x,))
    eps0 = jr.normal(jr.fold_in(key, 1), (n_x, conditional.n_y), X.dtype)

    def one(k, x, eps):
        gaussian = conditional._gaussian(target, x, beta)

        def evaluate(e):
            def log_pull(e):  # log p_beta(Y(e)|X) + log|dY/de| up to a constant
                Y, log_q0, valid = conditional.transform(target, x, beta, e, gaussian)
                value = -beta * target.energy_xy(x, Y) - log_q0 + jnp.sum(-0.5 * e**2)
                return jnp.where(valid, value, -jnp.inf)

            value, grad = jax.value_and_grad(log_pull)(e)
            return MALAState(e, value, grad, ())

        def body(state, k):
            return mala_step(k, state, evaluate, step_size)

        state, acc = jax.lax.scan(body, evaluate(eps), jr.split(k, n_steps))
        return conditional.transform(target, x, beta, state.z, gaussian).Y, jnp.mean(acc)

    Y, acc = jax.vmap(one)(jr.split(jr.fold_in(key, 2), n_x), X, eps0)
    return X, Y, jnp.mean(acc)


def mcmc_fit_gradient(params, static, key, flow, target, beta, batch: int, draws: int, args):
    """The gradient of -E log q(Y|X) at Y moved toward p_beta(Y|X) by ``args.mcmc_steps``
    MALA steps from q(Y|X) (maximum likelihood on the chains' end states: mass-covering, no
    weights, so nothing collapses at few draws; q = p_beta(Y|X) is its fixed point). ``batch``
    X, one chain each; (mcmc_steps + 1) energy + force evaluations per X. Drawing and
    differentiating are two programs, as in :func:`forward_kl_gradient`."""
    X, Y, _ = _chain_draws(
        eqx.combine(params, static),
        key,
        flow,
        target,
        beta,
        batch,
        args.mcmc_steps,
        args.mcmc_step_size,
    )
    w = jnp.full(batch, 1.0 / batch)
    grads = _weighted_log_q_gradient(params, static, target, beta, X, Y, w, 1)
    return grads, batch * (args.mcmc_steps + 1)  # each chain's start and every step


GRADIENTS = {"rkl": reverse_kl_gradient, "fkl": forward_kl_gradient, "mcmc": mcmc_fit_gradient}


def train_arm(conditional, flow, target, beta, args, seed: int, lr: float, batch: int, gradient):
    """[(updates, energy evals, conditional ESS mean, q10, seconds)] along the training by
    ``gradient`` (one of GRADIENTS; the optimiser's step is a compiled program of its own)."""
    optimiser = adam_with_skip_clip(lr)
    params, static = eqx.partition(conditional, eqx.is_inexact_array)
    opt_state = optimiser.init(params)

    decay = args.ema

    @eqx.filter_jit
    def apply(params, opt_state, average, grads):
        updates, opt_state = optimiser.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        average = jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p, average, params)
        return params, opt_state, average

    def step(params, opt_state, average, key):
        grads, evals = gradient(params, static, key, flow, target, beta, batch, args.draws, args)
        return *apply(params, opt_state, average, grads), evals

    rows, start, evals = [], time.perf_counter(), 0
    key = jr.key(seed)
    average = params  # the parameters' exponential moving average (--ema; 0: the parameters)
    for i in range(args.updates + 1):
        if i % args.every == 0:
            e = np.asarray(
                conditional_ess(
                    eqx.combine(average, static), flow, target, jr.key(10_000), beta, args.m, args.k
                )
            )
            rows.append(
                (
                    i,
                    evals,
                    float(e.mean()),
                    float(np.quantile(e, 0.1)),
                    time.perf_counter() - start,
                )
            )
            print(f"  update {i}: conditional ESS {e.mean():.3f}", flush=True)
        if i < args.updates:
            params, opt_state, average, made = step(params, opt_state, average, jr.fold_in(key, i))
            evals += made
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["gaussian:rkl", "flow:rkl"],
        help="FORM:LOSS, FORM gaussian | flow, LOSS rkl (reverse KL) | fkl (forward KL) | "
        "mcmc (maximum likelihood on MALA chains' end states)",
    )
    parser.add_argument("--draws", type=int, default=8, help="fkl: draws of Y per X")
    parser.add_argument("--mcmc-steps", type=int, default=10, help="mcmc: MALA steps per X")
    parser.add_argument(
        "--mcmc-step-size", type=float, default=0.5, help="mcmc: MALA step in q's latent"
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="measure the ESS at the exponential moving average of the parameters with this "
        "decay per update (0: at the parameters themselves)",
    )
    parser.add_argument("--lr", type=float, default=None, help="default: the run's final one")
    parser.add_argument("-m", type=int, default=500, help="X draws for the ESS")
    parser.add_argument("-k", type=int, default=32, help="Y draws per X for the ESS")
    args = parser.parse_args(argv)

    config, target, flow, conditional, meta = load_run(args.run)
    if conditional is None or conditional.spline is not None:
        raise SystemExit(f"{args.run}: needs a run with [conditional] kind = 'gaussian'")
    training = config.training
    lr = args.lr or training.learning_rate * training.lr_final_fraction
    beta = jnp.asarray(meta["beta"])
    flow_settings = ConditionalSettings(
        kind="flow",
        nn_width=config.conditional.nn_width,
        nn_depth=config.conditional.nn_depth,
        seed=config.conditional.seed,
    )
    results = {}
    for arm in args.arms:
        form, loss = arm.split(":")
        start = (
            conditional
            if form == "gaussian"
            else with_identity_spline(conditional, target, flow_settings)
        )
        for seed in args.seeds:
            print(f"{arm}, seed {seed}:", flush=True)
            results[arm, seed] = train_arm(
                start, flow, target, beta, args, seed, lr, training.batch_size, GRADIENTS[loss]
            )
    print(
        f"\n{args.run.name}, beta {meta['beta']:g}, lr {lr:g}, ema {args.ema:g}, "
        f"batch {training.batch_size}, "
        f"ESS of {args.k} draws of q(Y|X) at each of {args.m} X\n"
    )
    print("| arm | updates | energy evals | conditional ESS (mean ± sd over seeds) | q10 |")
    print("|---|---|---|---|---|")
    for arm in args.arms:
        per_seed = np.array([results[arm, s] for s in args.seeds])  # (seeds, rows, 5)
        for j in range(per_seed.shape[1]):
            i, evals = int(per_seed[0, j, 0]), int(per_seed[0, j, 1])
            mean, q10 = per_seed[:, j, 2], per_seed[:, j, 3]
            sd = mean.std(ddof=1) if len(mean) > 1 else 0.0
            print(f"| {arm} | {i} | {evals:,} | {mean.mean():.3f} ± {sd:.3f} | {q10.mean():.3f} |")


if __name__ == "__main__":
    main()
