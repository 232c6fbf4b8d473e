"""The objectives of the general case side by side, several seeds each; prints a table.

    python benchmarks/general_case.py                                 # the synthetic systems
    python benchmarks/general_case.py --systems alanine_dipeptide_field --objectives joint
    python benchmarks/general_case.py --systems many_well_32 --seeds 0 1 2 --objectives joint
    python benchmarks/general_case.py --write docs/benchmarks.md

Each run trains the shipped config (configs/<system>.toml) with [training] objective set to
mean_force (the paper's: chains on Y|X, [conditional] kind = chains), joint, hybrid or fab (a
learned Gaussian q(Y|X)), and [training] seed = [model] seed = [conditional] seed = the seed, into
--out/<system>-<objective>-<seed>; then evaluates it on [prediction] n_samples samples. The
energy evaluations are those the training counted (updates and ladder samples; the Laplace fits
that start a learned conditional are not included); prediction adds one per sample with a
learned conditional, and the AIS cost ([prediction]) with the chains. Mean and spread over seeds
are in the last rows of each system.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shutil
import time
import tomllib
from pathlib import Path

import numpy as np
from _markdown import replace_section  # benchmarks/_markdown.py (run as a script)

from coarseflow.analysis.evaluation import evaluate_run
from coarseflow.config import parse_config
from coarseflow.run_training import train_from_config
from coarseflow.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("gmm_16d_unequal", "many_well_32", "alanine_dipeptide_field", "alanine_dipeptide")
OBJECTIVES = ("mean_force", "joint", "hybrid", "fab")
COLUMNS = (
    "evals",
    "train_s",
    "n_betas",
    "ess_fraction",
    "pareto_k",
    "log_Z_error",
    "err_raw",
    "err_reweighted",
    "log_Z",
    "log_Z_err",
    "rama_js_reweighted",
    "basin_max_z",
)


def variant(
    raw: dict,
    objective: str,
    seed: int,
    updates: dict,
    learned: str = "gaussian",
    network: tuple[int, int] | None = None,
) -> dict:
    raw = copy.deepcopy(raw)
    raw.setdefault("training", {}).update(updates)
    raw.setdefault("training", {})["objective"] = objective
    raw["training"]["seed"] = seed
    if objective == "fab":  # mass-covering already: no forward term
        raw["training"].pop("forward_kl_weight", None)
    raw.setdefault("model", {})["seed"] = seed
    kind = "chains" if objective == "mean_force" else learned
    raw["conditional"] = {**raw.get("conditional", {}), "kind": kind, "seed": seed}
    if network is not None and kind != "chains":
        raw["conditional"]["nn_width"], raw["conditional"]["nn_depth"] = network
    return raw


def run_one(raw: dict, out: Path, n_samples: int | None, resume: bool = False) -> dict:
    """Train into ``out`` (anew, or continuing its checkpoints with ``resume``) and score it.

    A resumed run's ``train_s`` is the wall time of this call's part only.
    """
    if out.exists() and not resume:
        shutil.rmtree(out)
    t0 = time.perf_counter()
    result = train_from_config(parse_config(raw), out, resume=resume, progress=False)
    train_s = time.perf_counter() - t0
    final = evaluate_run(out, n_samples=n_samples, progress=False)["final"]
    meta = RunDir(out).find_checkpoint()
    row = {
        "permutation": parse_config(raw).model.permutation,
        "evals": meta["energy_evals"],
        "train_s": train_s,
        "n_betas": len(result.betas),
        "ess_fraction": final["ess_fraction"],
        "pareto_k": final["pareto_k"],
    }
    if "log_Z_exact" in final:  # the synthetic systems: exact log Z and populations
        err = {k: final.get(k) for k in ("max_weight_error_raw", "max_right_well_error_raw")}
        err_rw = {
            k: final.get(k)
            for k in ("max_weight_error_reweighted", "max_right_well_error_reweighted")
        }
        row.update(
            log_Z_error=final["log_Z_estimate"] - final["log_Z_exact"],
            err_raw=next(v for v in err.values() if v is not None),
            err_reweighted=next(v for v in err_rw.values() if v is not None),
        )
    else:  # a molecule: log Z estimate, and the reference's divergences where it has one
        row.update(
            log_Z=final["log_Z_estimate"],
            log_Z_err=final.get("log_Z_estimate_err"),
            rama_js_reweighted=final.get("ramachandran_js_reweighted"),
            basin_max_z=max_basin_z(final),
        )
    return row


def max_basin_z(final: dict) -> float | None:
    """The largest |reweighted - reference| / combined error over the basins, or None."""
    z = []
    for key, value in final.items():
        if key.startswith("basin_") and key.endswith("_reference"):
            name = key[: -len("_reference")]
            err = math.hypot(
                final.get(name + "_reweighted_err", 0.0), final.get(name + "_reference_err", 0.0)
            )
            if name + "_reweighted" in final and err > 0:
                z.append(abs(final[name + "_reweighted"] - value) / err)
    return max(z) if z else None


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 1e4):
        return f"{v:.3g}" if isinstance(v, float) else f"{v:,}"
    return f"{v:.3f}"


def label(row: dict) -> str:
    """The objective, its --training settings, and the flow's permutations where they are
    flowjax's random ones."""
    return (
        row["objective"]
        + (
            f", {row['conditional']} q(Y|X)"
            if row.get("conditional", "gaussian") != "gaussian"
            else ""
        )
        + (f", network {row['network'][0]}x{row['network'][1]}" if row.get("network") else "")
        + "".join(f", {k} = {v}" for k, v in row.get("settings", {}).items())
        + (" (random perm.)" if row.get("permutation") == "random" else "")
    )


def network_size(text: str) -> tuple[int, int]:
    """WIDTHxDEPTH (e.g. 512x3) as (width, depth)."""
    try:
        width, depth = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxDEPTH such as 512x3, got {text!r}"
        ) from None
    return width, depth


def training_setting(text: str) -> tuple[str, int | float | str]:
    """'key=value' of a --training option: a number where the value reads as one, else a string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        return key, value
    return key, int(number) if number.is_integer() and "." not in value else number


def table(rows: list[dict]) -> str:
    head = "| system | objective | seed | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        lines.append(
            f"| {r['system']} | {label(r)} | {r['seed']} | "
            + " | ".join(fmt(r.get(c)) for c in COLUMNS)
            + " |"
        )
    groups = sorted(
        {(r["system"], label(r)) for r in rows},
        key=lambda g: (SYSTEMS.index(g[0]) if g[0] in SYSTEMS else 99, g[1]),
    )
    for system, objective in groups:
        mine = [r for r in rows if (r["system"], label(r)) == (system, objective)]
        if len(mine) < 2:
            continue
        cells = []
        for c in COLUMNS:
            v = np.asarray([r[c] for r in mine if r.get(c) is not None], float)
            digits = 7 if c == "log_Z" else 3  # an absolute log Z: its spread is in the 3rd decimal
            cells.append(
                f"{np.mean(v):.{digits}g} ± {np.std(v, ddof=1):.2g}" if len(v) > 1 else "n/a"
            )
        lines.append(
            f"| **{system}** | **{objective}** | mean ± sd ({len(mine)}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS[:2]))
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=None, help="samples to evaluate (default: config)")
    for name in ("first_beta_updates", "updates_per_beta", "final_beta_updates"):
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            help=f"[training] {name} for every run (default: the config's)",
        )
    p.add_argument(
        "--training",
        type=training_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other [training] setting for every run, e.g. fab_buffer_size=2048 "
        "(repeatable; shown beside the objective in the table)",
    )
    p.add_argument(
        "--permutation",
        default=None,
        choices=("alternating", "random"),
        help="[model] permutation for every run (default: the config's)",
    )
    p.add_argument(
        "--conditional",
        default="gaussian",
        choices=("gaussian", "flow"),
        help="[conditional] kind of the learned objectives (mean_force keeps its chains)",
    )
    p.add_argument(
        "--network",
        type=network_size,
        default=None,
        metavar="WIDTHxDEPTH",
        help="[conditional] nn_width and nn_depth of the learned objectives, e.g. 512x3 "
        "(default: the config's)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "general_case")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue runs already under --out from their checkpoints (e.g. across sessions); "
        "train_s is then the wall time of this part only",
    )
    p.add_argument("--jsonl", type=Path, default=None, help="append every row here as it ends")
    p.add_argument("--write", type=Path, default=None, help="put the table into this markdown")
    p.add_argument(
        "--table-from",
        type=Path,
        default=None,
        help="no runs: tabulate the rows of a --jsonl file (runs of several sittings)",
    )
    args = p.parse_args()
    if args.table_from is not None:
        rows = [json.loads(line) for line in args.table_from.read_text().splitlines() if line]
        publish(table(rows), args.write)
        return
    updates = {
        k: getattr(args, k)
        for k in ("first_beta_updates", "updates_per_beta", "final_beta_updates")
        if getattr(args, k)
    }
    settings = dict(args.training)
    rows = []
    for system in args.systems:
        raw = tomllib.loads((ROOT / "configs" / f"{system}.toml").read_text())
        if args.permutation is not None:
            raw.setdefault("model", {})["permutation"] = args.permutation
        for objective in args.objectives:
            for seed in args.seeds:
                learned = objective != "mean_force" and args.conditional != "gaussian"
                sized = objective != "mean_force" and args.network is not None
                tag = f"-{args.conditional}" if learned else ""
                tag += f"-{args.network[0]}x{args.network[1]}" if sized else ""
                out = args.out / f"{system}-{objective}{tag}-{seed}"
                config = variant(
                    raw, objective, seed, {**updates, **settings}, args.conditional, args.network
                )
                row = {
                    "system": system,
                    "objective": objective,
                    "seed": seed,
                    **({"conditional": args.conditional} if learned else {}),
                    **({"network": list(args.network)} if sized else {}),
                    **({"settings": settings} if settings else {}),
                    **run_one(config, out, args.n, args.resume),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.jsonl is not None:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
    publish(table(rows), args.write)


def publish(text: str, write: Path | None) -> None:
    print(text)
    if write is not None:
        stamp = (
            f"{datetime.date.today()}, {platform.node() or 'machine'} ({os.cpu_count()} "
            f"CPU cores), `python benchmarks/general_case.py {' '.join(os.sys.argv[1:])}`"
        )
        replace_section(write, "general-case", stamp, text)


if __name__ == "__main__":
    main()
