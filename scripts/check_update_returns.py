"""Does one training update of a config return? A watchdog for the CPU hang of Session 12.

    python scripts/check_update_returns.py configs/alanine_dipeptide_field.toml \
        --set objective=joint --set forward_kl_weight=3 --conditional gaussian --batch 256

builds the config's target and model, runs ``--updates`` updates at beta0 with [training]
batch_size = --batch, and prints each one's wall time. If an update has not returned after
--timeout seconds, it prints every thread's stack and exits with status 3. On 2 CPU cores
with jaxlib 0.10.2 (2026-12-06), while update_step was one compiled program, the field's
alanine dipeptide with the joint objective and its forward term often never returned from the
first update at batch 128 or 256 (every thread waiting, no CPU used: 12 of 17 tries); with
the forward term's gradient in a program of its own it returned every time (docs/benchmarks.md,
Session 12). One fab update at 256 did not return within 150 s and was not retried.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import sys
import threading
import time


def _watchdog(seconds: float) -> threading.Timer:
    """A timer that, unless cancelled, prints every thread's stack and exits with status 3."""

    def fire():
        print(f"no return after {seconds:g} s; the stacks:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [training] setting (number or word), repeatable",
    )
    p.add_argument("--conditional", default=None, help="[conditional] kind")
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from coarseflow.config import build_target, load_config, parse_config
    from coarseflow.training.step import UpdateSettings, init, update_step
    from coarseflow.workflow import initial_model

    raw = load_config(args.config).raw
    if args.conditional is not None:
        raw["conditional"] = {**raw.get("conditional", {}), "kind": args.conditional}
    for text in args.set:
        key, _, value = text.partition("=")
        try:
            raw["training"][key] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            raw["training"][key] = value
    config = parse_config(raw)
    training = dataclasses.replace(config.training, batch_size=args.batch)
    target = build_target(config.target)
    model = initial_model(config, target)
    state, static = init(model, training)
    settings = UpdateSettings(training, config.chains, config.prediction)
    beta = jnp.asarray(config.tempering.first_beta())
    for i in range(args.updates):
        watchdog = _watchdog(args.timeout)
        t0 = time.perf_counter()
        state, info = update_step(
            state,
            static,
            jr.key(i),
            beta,
            jnp.asarray(1.0),
            jnp.asarray(training.fab_step_size),
            target,
            settings,
        )
        jax.block_until_ready(info)
        watchdog.cancel()
        print(
            f"update {i}: {time.perf_counter() - t0:.2f} s, loss {float(info.loss):.4g}", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
