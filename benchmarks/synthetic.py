"""Train the paper's synthetic systems with and without tempering; print and record a table.

    python benchmarks/synthetic.py                       # all systems, print the table
    python benchmarks/synthetic.py --write docs/benchmarks.md
    python benchmarks/synthetic.py --systems double_well --variants tempered

Each run trains the shipped config (configs/<system>.toml) into --out/<system>-<variant>, then
evaluates every checkpoint. 'untempered' trains at beta = 1 only, for as many updates as the
tempered ladder used in total (the same budget).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import time
import tomllib
from pathlib import Path

from _markdown import replace_section  # benchmarks/_markdown.py (run as a script)

from coarseflow.analysis.evaluation import evaluate_run
from coarseflow.config import parse_config
from coarseflow.run_training import train_from_config
from coarseflow.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("double_well", "gmm_2d", "gmm_10d")
VARIANTS = ("tempered", "untempered")


def untempered(raw: dict, total_updates: int) -> dict:
    raw = copy.deepcopy(raw)
    raw["tempering"] = {"kind": "explicit", "betas": [1.0]}
    raw["training"]["first_beta_updates"] = int(total_updates)
    return raw


def run_one(raw: dict, out: Path) -> dict:
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    result = train_from_config(parse_config(raw), out, progress=False)
    train_s = time.perf_counter() - t0
    summary = evaluate_run(out, progress=False)
    steps = RunDir(out).find_checkpoint()["step"]
    return {"summary": summary, "train_s": train_s, "betas": result.betas, "updates": steps}


def row(system: str, variant: str, r: dict) -> dict:
    final, per_beta = r["summary"]["final"], r["summary"]["per_beta"]
    out = {
        "system": system,
        "variant": variant,
        "n_betas": len(r["betas"]),
        "updates": r["updates"],
        "train_s": r["train_s"],
        "ess_fraction": final["ess_fraction"],
    }
    if system == "double_well":
        inter = [m for m in per_beta if m["beta"] < 1 - 1e-9]
        out |= {
            "mass_raw": final["right_well_mass_raw"],
            "mass_reweighted": final["right_well_mass_reweighted"],
            "mass_exact": final["right_well_mass_exact"],
            "err_raw": final["right_well_error_raw"],
            "err_reweighted": final["right_well_error_reweighted"],
            "worst_intermediate_err_raw": max(
                (m["right_well_error_raw"] for m in inter), default=float("nan")
            ),
            "worst_intermediate_err_reweighted": max(
                (m["right_well_error_reweighted"] for m in inter), default=float("nan")
            ),
            "tv_raw": final["tv_x1_raw"],
        }
    else:
        out |= {
            "components_found": final["components_found"],
            "max_weight_err_raw": final["max_weight_error_raw"],
            "max_weight_err_reweighted": final["max_weight_error_reweighted"],
            "worst_tv_raw": final["worst_marginal_tv_raw"],
            "worst_tv_reweighted": final["worst_marginal_tv_reweighted"],
            "kl_q_p": final["kl_q_p"],
        }
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(rows: list[dict]) -> str:
    lines = []
    for system in dict.fromkeys(r["system"] for r in rows):
        sub = [r for r in rows if r["system"] == system]
        keys = list(sub[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in sub]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks"))
    p.add_argument("--write", help="markdown file whose synthetic section is replaced")
    args = p.parse_args()

    rows = []
    for system in args.systems:
        raw = tomllib.loads((ROOT / "configs" / f"{system}.toml").read_text())
        tempered = None
        for variant in args.variants:
            if variant == "tempered":
                tempered = run_one(raw, Path(args.out) / f"{system}-tempered")
                r = tempered
            else:
                budget = (
                    tempered["updates"]
                    if tempered
                    else raw["training"].get("first_beta_updates", 500) * 5
                )
                r = run_one(untempered(raw, budget), Path(args.out) / f"{system}-untempered")
            rows.append(row(system, variant, r))
            print(markdown([rows[-1]]), flush=True)

    table = markdown(rows)
    stamp = (
        f"Measured {datetime.date.today()} on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), no GPU. Command: "
        f"`python benchmarks/synthetic.py --systems {' '.join(args.systems)} "
        f"--variants {' '.join(args.variants)}`."
    )
    print(table)
    if args.write:
        replace_section(args.write, "synthetic", stamp, table)


if __name__ == "__main__":
    main()
