"""A finished run, refitted: the refit of q(Y|X) ([training] refit_updates) measured on runs
trained without one, without training their ladder again.

    python benchmarks/refit_run.py RUN --out OUT [--refit refit_updates=1500 ...]

OUT becomes a new run of RUN's config with the --refit settings added (only refit_* keys of
[training]), holding copies of RUN's checkpoints, metrics.jsonl and model.json; then
``coarseflow train --resume`` runs on it. The refit settings do not touch the ladder, which is
exactly what OUT's own config would have trained (resume is exact: tests/test_conditional.py),
so the resume does the refit only, through the same code as a run trained with it from the
start. Score OUT as any run, e.g. ``python benchmarks/conditional_polish.py OUT --polish 0 1``.
Prints the refit's evaluations, wall time and its loss (minus the bound) at its start and end.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path

from general_case import training_setting  # benchmarks/ (run as a script)

from coarseflow.config import load_config, parse_config
from coarseflow.run_folder import config_hash
from coarseflow.run_training import train_from_config
from coarseflow.runs import RunDir

DEFAULTS = {"refit_updates": 1500, "refit_draws": 64, "refit_learning_rate": 3e-5}


def refit_copy(run: Path, out: Path, settings: dict, progress: bool = True) -> dict:
    """Make ``out`` the run of ``run``'s config plus ``settings`` (refit_* keys) with
    ``run``'s checkpoints, then resume it; (refit updates, evaluations, wall time, first and
    last loss)."""
    wrong = [k for k in settings if not k.startswith("refit_")]
    if wrong:
        raise SystemExit(f"--refit: only refit_* settings of [training], got {wrong}")
    if out.exists():
        raise SystemExit(f"--out {out}: exists; choose a new folder")
    source = RunDir(run).require_existing()
    raw = copy.deepcopy(load_config(source.config_path).raw)
    raw.setdefault("training", {}).update(settings)
    config = parse_config(raw)
    if source.find_checkpoint().get("next_beta", 0.0) is not None:
        raise SystemExit(f"{run}: its ladder is not finished; resume it first")
    target = RunDir(out)
    target.claim(config_hash(config.raw), lambda path: config_hash(load_config(path).raw))
    try:
        shutil.copytree(source.checkpoint_dir, target.checkpoint_dir)
        for name in ("metrics.jsonl", "model.json"):
            shutil.copy2(source.root / name, target.root / name)
    finally:
        target.release()
    before = target.find_checkpoint()
    start = time.perf_counter()
    train_from_config(config, out, resume=True, progress=progress)
    after = target.find_checkpoint()
    refit = [r for r in target.read_metrics() if r.get("refit")]
    return {
        "updates": len(refit),
        "evals": after["energy_evals"] - before["energy_evals"],
        "wall_s": time.perf_counter() - start,
        "loss_first": refit[0]["loss"],
        "loss_last": after["refit_loss"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--refit",
        type=training_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a refit_* setting of [training] (repeatable); defaults {DEFAULTS}",
    )
    args = parser.parse_args(argv)
    settings = DEFAULTS | dict(args.refit)
    result = refit_copy(args.run, args.out, settings)
    print(
        f"{args.out}: {result['updates']} refit updates, {result['evals']:.3g} evaluations, "
        f"{result['wall_s']:.0f} s; loss (minus the bound) {result['loss_first']:.3f} -> "
        f"{result['loss_last']:.3f} (mean of the last 10)"
    )
    return result


if __name__ == "__main__":
    main()
