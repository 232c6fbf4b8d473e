"""Is the learned q(Y|X) poor in a molecule's rare basins for want of training X there, or for
want of a larger network? Trains q(Y|X) alone, q(X) held fixed, and scores it per basin. Prints
markdown tables. (conditional_capacity.py compares losses on the run's own q(Y|X) by its
overall conditional ESS; this one compares new networks and where their X come from, per basin.)

    python benchmarks/conditional_network.py RUN [--arms run tune:q new:gaussian:256:2:q ...]
        [--updates 1500] [--batch 256] [--lr 1e-4] [--warmup 0] [--pool 60000] [--sets 3]
        [-n 20000] [--per-basin 32] [-k 32]

From a molecule run's newest checkpoint (beta 1) with a learned [conditional]; q(X) is never
changed. A pool of ``--pool`` draws of q(X) is labelled by the first residue's Ramachandran
basin; the first ``--per-basin`` X of each basin are held out for scoring. Each arm minimises
the conditional reverse KL (the objectives' ``conditional_terms``: one energy + force
evaluation per X) for ``--updates`` Adam steps of ``--batch`` X from the rest of the pool:

* ``run``: the run's q(Y|X) as it is (no training);
* ``tune:SAMPLING[:LOSS]``: the run's q(Y|X), trained further;
* ``new:KIND:WIDTH:DEPTH:SAMPLING[:LOSS]``: a new q(Y|X) of that ``[conditional]`` kind and
  network, started at the Laplace fit (``predict.fit_to_laplace``) of ``laplace_fits`` pool X;
* ``refit[:KEY=VALUE...]``: the run's q(Y|X) after the refit that training ships
  (``[training] refit_updates``, :mod:`coarseflow.training.refit`) with the run's [training]
  settings, refit_updates = ``--updates``, refit_learning_rate = ``--lr`` and any [training]
  KEY=VALUE (e.g. ``refit:clip_factor=1e6:skip_factor=1e7``); its X are fresh draws of q(X)
  and ``--batch`` is the run's batch_size.

LOSS is ``rkl`` (the default: the conditional reverse KL, one draw of Y at each of ``--batch``
X), ``a2xK``: the alpha = 2 divergence log E_q (p / q)^2 at each X, mass-covering, by its
reparameterised gradient 2 sum_j w_j^2 grad log w_j / sum_j w_j^2 over K draws of Y at each of
``--batch`` / K X (the same evaluations per update), or ``iwxK``: the importance-weighted bound
log (1/K) sum_j w_j at each X (maximised), by its doubly reparameterised gradient (Tucker, Lawson,
Gu and Maddison, ICLR 2019; ``objectives.conditional_importance_weighted``).

SAMPLING is ``q`` (X uniform over the pool, i.e. as q(X): what training gives), ``balanced``
(a basin uniformly at random, then X uniform within it) or ``mix`` (half of each). Equal
updates and evaluations for every trained arm. Scores: per basin, the conditional ESS of
``-k`` draws of q(Y|X) at each held-out X and the median u(X, Y) - u(X, Y*) (kT) (as in
conditional_polish.py), and one-shot ESS, Pareto k and the first residue's reweighted basin
populations against the reference, with z, over ``--sets`` sets of ``-n`` draws.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from conditional_by_basin import laplace_energies  # benchmarks/ (run as a script)
from conditional_polish import basin_conditional, mean_sd, one_shot, reference_population
from general_case import training_setting

from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.analysis.reports import is_one
from coarseflow.model.conditional import ConditionalSettings, make_conditional
from coarseflow.model.flow import split_trainable
from coarseflow.objectives import (
    conditional_importance_weighted,
    conditional_terms,
    masked_mean,
)
from coarseflow.predict.conditional import fit_to_laplace
from coarseflow.predict.draw import draw_samples
from coarseflow.reference import load_reference
from coarseflow.targets.molecule.registry import builtin_reference
from coarseflow.training.refit import refit_updates
from coarseflow.training.step import init
from coarseflow.workflow import load_run


def alpha2_surrogate(terms, draws: int):
    """A surrogate whose gradient is that of mean over X of log E_q (p / q)^2 at each X,
    from ``conditional_terms`` at each X repeated ``draws`` times (rows grouped by X): the
    reverse KL's per-draw surrogate s_j (gradient -grad log w_j) weighted by -2 w_j^2 /
    sum w^2 within the X (self-normalised; 0 where no draw is usable)."""
    log_w = terms.log_weights.reshape(-1, draws)
    usable = jnp.any(terms.ok.reshape(-1, draws), axis=1, keepdims=True)
    tilt = jnp.where(usable, jax.nn.softmax(jnp.where(usable, 2 * log_w, 0.0), axis=1), 0.0)
    s = jnp.where(terms.ok, terms.surrogate, 0.0).reshape(-1, draws)
    return -2.0 * jnp.mean(jnp.sum(jax.lax.stop_gradient(tilt) * s, axis=1))


def fine_tune(
    conditional,
    target,
    beta,
    draw_X,
    updates: int,
    lr: float,
    seed: int,
    loss_name="rkl",
    warmup: int = 0,
):
    """q(Y|X) after ``updates`` Adam steps on the conditional reverse KL (``rkl``), the
    alpha = 2 divergence or the importance-weighted bound with K draws per X (``a2xK``,
    ``iwxK``, at every K-th row of draw_X) at
    X = draw_X(key) (B, n_x); the learning rate rises linearly from 0 over the first
    ``warmup`` updates, then decays linearly to a tenth."""
    params, static = split_trainable(conditional)
    schedule = optax.linear_schedule(lr, lr / 10, updates - warmup)
    if warmup > 0:
        rise = optax.linear_schedule(0.0, lr, warmup)
        schedule = optax.join_schedules([rise, schedule], [warmup])
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    opt_state = optimizer.init(params)
    draws = 1 if loss_name == "rkl" else int(loss_name[3:])

    def loss(p, key, X):
        model = eqx.combine(p, static)
        if draws == 1:
            terms = conditional_terms(model, key, target, X, beta, 1e6)
            return masked_mean(terms.surrogate, terms.ok)
        if loss_name.startswith("iwx"):
            return conditional_importance_weighted(model, key, target, X, beta, draws, 1e6)[0]
        X = jnp.repeat(X[::draws], draws, axis=0)
        return alpha2_surrogate(conditional_terms(model, key, target, X, beta, 1e6), draws)

    @eqx.filter_jit
    def step(p, opt_state, key, X):
        value, grads = eqx.filter_value_and_grad(loss)(p, key, X)
        updates_, opt_state = optimizer.update(grads, opt_state, p)
        return eqx.apply_updates(p, updates_), opt_state, value

    key = jr.key(seed)
    for i in range(updates):
        key, k_x, k_y = jr.split(key, 3)
        params, opt_state, value = step(params, opt_state, k_y, draw_X(k_x))
        if i % 250 == 0 or i == updates - 1:
            print(f"  update {i}: loss {float(value):.3f}", flush=True)
    return eqx.combine(params, static)


def shipped_refit(flow, conditional, target, training, overrides: dict):
    """The run's q(Y|X) after training's own refit with [training] ``training`` and
    ``overrides``."""
    training = dataclasses.replace(training, **overrides)
    state, static = init((flow, conditional), training)
    last = collections.deque(refit_updates(state.params, static, target, training), maxlen=1)
    return eqx.combine(last[0][0], static)[1]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--warmup", type=int, default=0, help="tune / new arms: updates of linear warm-up"
    )
    parser.add_argument("--pool", type=int, default=60000, help="draws of q(X) to train on")
    parser.add_argument("--sets", type=int, default=3, help="one-shot sets of -n draws")
    parser.add_argument("-n", type=int, default=20000, help="one-shot draws per set")
    parser.add_argument("--per-basin", type=int, default=32, help="held-out X per basin")
    parser.add_argument("-k", type=int, default=32, help="Y draws per held-out X")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["run", "tune:q", "tune:balanced"],
        help="run | tune:{q,balanced,mix}[:LOSS] | new:KIND:WIDTH:DEPTH:{q,balanced,mix}[:LOSS]",
    )
    args = parser.parse_args(argv)

    loaded = load_run(args.run)
    config, target, flow, conditional, meta = loaded
    if conditional is None:
        raise SystemExit(f"{args.run}: needs a run with a learned [conditional]")
    if not is_one(meta["beta"]):
        raise SystemExit(f"{args.run}: its last checkpoint is at beta {meta['beta']}, not 1")
    name = config.target.get("reference")
    if name is None:
        raise SystemExit(f"{args.run}: its [target] names no reference")
    target.x_bijection()
    report = MoleculeReport(target)
    arrays = load_reference(builtin_reference(str(name)) or name)
    beta = jnp.asarray(meta["beta"])

    pool = draw_samples(
        jr.key(7),
        target,
        flow,
        meta["beta"],
        config.prediction,
        n=args.pool,
        conditional=conditional,
    )
    angles = report.observables(pool.x)
    basins = report.basin_sets()[0]
    labels = basins.labels(angles["phi"][:, 0], angles["psi"][:, 0])
    at_mode = laplace_energies(loaded)
    held_out, train_X = {}, {}
    for i, basin in enumerate(basins.names):
        idx = np.flatnonzero(labels == i)
        if len(idx):
            X = jnp.asarray(pool.X[idx[: args.per_basin]])
            held_out[basin] = (X, np.asarray(at_mode(X)))
        if len(idx) > args.per_basin:
            train_X[basin] = jnp.asarray(pool.X[idx[args.per_basin :]])
        print(f"{basin}: {len(idx)} of {args.pool} draws of q(X)", flush=True)
    everything = jnp.concatenate(list(train_X.values()))
    groups = list(train_X.values())

    def draw_q(key):
        return everything[jr.randint(key, (args.batch,), 0, everything.shape[0])]

    def draw_balanced(key):
        k_basin, k_x = jr.split(key)
        which = np.asarray(jr.randint(k_basin, (args.batch,), 0, len(groups)))
        keys = jr.split(k_x, len(groups))
        parts = [
            g[jr.randint(keys[j], (int(np.sum(which == j)),), 0, g.shape[0])]
            for j, g in enumerate(groups)
        ]
        return jnp.concatenate(parts)

    def draw_mix(key):
        k_which, k_q, k_b = jr.split(key, 3)
        return jnp.where(
            jr.bernoulli(k_which, 0.5, (args.batch, 1)), draw_q(k_q), draw_balanced(k_b)
        )

    draws = {"q": draw_q, "balanced": draw_balanced, "mix": draw_mix}
    models = {}
    for arm in args.arms:
        start = time.perf_counter()
        parts = arm.split(":")
        if arm == "run":
            models[arm] = conditional
            continue
        if parts[0] == "refit":
            print(f"training {arm}", flush=True)
            overrides = {"refit_updates": args.updates, "refit_learning_rate": args.lr}
            overrides |= dict(training_setting(p) for p in parts[1:])
            models[arm] = shipped_refit(flow, conditional, target, config.training, overrides)
            print(f"  {time.perf_counter() - start:.0f} s", flush=True)
            continue
        print(f"training {arm}", flush=True)
        if parts[0] == "tune":  # the run's q(Y|X), trained further
            model, draw_X = conditional, draws[parts[1]]
            loss_name = parts[2] if len(parts) > 2 else "rkl"
        else:  # new:KIND:WIDTH:DEPTH:X, a new one started at the Laplace fit
            kind, width, depth, x_mode = parts[1], int(parts[2]), int(parts[3]), parts[4]
            loss_name = parts[5] if len(parts) > 5 else "rkl"
            settings = ConditionalSettings(kind=kind, nn_width=width, nn_depth=depth)
            model = make_conditional(jr.key(0), target, settings)
            fit_X = everything[:: max(1, everything.shape[0] // settings.laplace_fits)]
            model = fit_to_laplace(
                model, target, fit_X[: settings.laplace_fits], beta, config.prediction
            )
            draw_X = draws[x_mode]
        models[arm] = fine_tune(
            model, target, beta, draw_X, args.updates, args.lr, 1, loss_name, args.warmup
        )
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)

    rows = []
    for mode, model in models.items():
        by_basin = {
            basin: basin_conditional(model, target, beta, X, u_mode, args.k)
            for basin, (X, u_mode) in held_out.items()
        }
        sets = [one_shot(model, loaded, report, arrays, args.n, 100 + s) for s in range(args.sets)]
        rows.append({"mode": mode, "by_basin": by_basin, "sets": sets})
        print(f"{mode}: one-shot ESS {', '.join(f'{s[0]:.3f}' for s in sets)}", flush=True)

    extra = args.updates * args.batch
    print(
        f"\n{args.run.name}: q(Y|X) fine-tuned {args.updates} x {args.batch} X "
        f"({extra:.2e} evaluations); {args.sets} sets of {args.n} one-shot draws\n"
    )
    print("| q(Y|X) | one-shot ESS | Pareto k |")
    print("|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {mean_sd([s[0] for s in r['sets']])} "
            f"| {mean_sd([s[1] for s in r['sets']])} |"
        )
    print(
        "\n| basin | q(Y|X) | conditional ESS | u(q's Y) - u(Y*), kT | reweighted | z | reference |"
    )
    print("|---|---|---|---|---|---|---|")
    for basin in held_out:
        for r in rows:
            ess, gap = r["by_basin"][basin]
            populations = [s[2][basin][0] for s in r["sets"]]
            z = [s[2][basin][1] for s in r["sets"]]
            print(
                f"| {basin} | {r['mode']} | {ess:.3f} | {gap:.2f} | {mean_sd(populations)} "
                f"| {', '.join(f'{v:+.1f}' for v in z)} "
                f"| {reference_population(arrays, report, basin):.4f} |"
            )
    return rows


if __name__ == "__main__":
    main()
