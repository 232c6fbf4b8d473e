"""Does fab train on the field's alanine dipeptide once the joint objective has warmed q up?

    python benchmarks/fab_warm_start.py --joint 600 --fab 200 [--conditional gaussian|flow]
        [--beta 0.05] [--fab-conditional alpha2|reverse_kl]

At ``--beta`` (default: the config's first beta, 0.05), ``--joint`` updates of the joint
objective, then ``--fab`` updates of fab with the replay buffer (2048 end points, a new AIS batch
every 4 updates), on the same parameters and optimiser state. Prints every 50th joint and every
20th fab update: the objective's value, the gradient's norm, whether the guard skipped it, the
batch's ESS fraction of q's draws against p_beta and fab's AIS acceptance (docs/benchmarks.md,
Session 13).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr

from coarseflow.config import build_target, load_config, parse_config
from coarseflow.training.step import (
    UpdateSettings,
    adapt_fab_step,
    init,
    start_beta,
    update_step,
)
from coarseflow.workflow import initial_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "alanine_dipeptide_field.toml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--joint", type=int, default=600)
    p.add_argument("--fab", type=int, default=200)
    p.add_argument("--conditional", default="gaussian", choices=("gaussian", "flow"))
    p.add_argument("--beta", type=float, default=None, help="default: the config's first beta")
    p.add_argument("--fab-conditional", default="alpha2", choices=("alpha2", "reverse_kl"))
    args = p.parse_args()

    raw = load_config(CONFIG).raw
    raw["conditional"] = {**raw.get("conditional", {}), "kind": args.conditional}
    raw["training"]["objective"] = "joint"
    config = parse_config(raw)
    target = build_target(config.target)
    joint = config.training
    fab = dataclasses.replace(
        joint,
        objective="fab",
        fab_buffer_size=2048,
        fab_reuse=4,
        fab_conditional=args.fab_conditional,
    )
    state, static = init(initial_model(config, target), joint)
    beta = config.tempering.first_beta() if args.beta is None else args.beta
    beta, one = jnp.asarray(beta), jnp.asarray(1.0)
    t0 = time.perf_counter()

    def show(tag, i, info):
        print(
            f"{tag} {i:4d}  {time.perf_counter() - t0:6.0f} s  loss {float(info.loss):10.4g}  "
            f"|g| {float(info.grad_norm):9.3g}  skipped {bool(info.skipped)!s:5}  "
            f"batch ESS {float(info.batch_ess):.4f}  acceptance {float(info.acceptance):.2f}",
            flush=True,
        )

    settings = UpdateSettings(joint, config.chains, config.prediction)
    for i in range(args.joint):
        state, info = update_step(state, static, jr.key(i), beta, one, one, target, settings)
        if i % 50 == 0 or i == args.joint - 1:
            show("joint", i, info)
    state, step = start_beta(state, target, fab), fab.fab_step_size
    settings = UpdateSettings(fab, config.chains, config.prediction)
    for i in range(args.fab):
        refresh = i % fab.fab_reuse == 0
        key = jr.key(10**6 + i)
        state, info = update_step(
            state, static, key, beta, one, jnp.asarray(step), target, settings, refresh
        )
        if refresh:
            step = adapt_fab_step(step, float(info.acceptance))
            if i % 20 == 0:
                show("fab", i, info)


if __name__ == "__main__":
    main()
