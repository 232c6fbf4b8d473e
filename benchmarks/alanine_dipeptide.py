"""Alanine dipeptide end to end: train to beta = 1, compare with the replica-exchange reference.

    python benchmarks/alanine_dipeptide.py                         # configs/alanine_dipeptide.toml
    python benchmarks/alanine_dipeptide.py --config my.toml --write docs/benchmarks.md
    python benchmarks/alanine_dipeptide.py --set training.batch_size=64 --set chains.n_keep=10

Prints (and with --write records) the population of every Ramachandran basin (model raw and
reweighted, with the reweighted one's standard error, vs the reference with its uncertainty, and
z = difference / combined error), KL(reference || model) and Jensen-Shannon
divergence of the 64 x 64 (phi, psi) histogram (0.5 pseudo-counts per bin) raw and reweighted,
their noise floor (the same metrics between two independent halves of the reference, each
subsampled to the model's sample size, and, from an ESS of 2048, again to ESS frames: the floor
of the reweighted histogram), the ESS, the Rg histogram divergence, the chains' heating at
beta = 1 (should be ~0 kT), the wall time, the number of energy + force evaluations (counted from
the settings) and the hardware.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import shutil
import sys
import tomllib
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
from _markdown import replace_section  # benchmarks/_markdown.py (run as a script)

from coarseflow.analysis import metrics
from coarseflow.analysis.molecule_report import MoleculeReport
from coarseflow.analysis.observables import BASINS, basin_population_errors, basin_populations
from coarseflow.config import load_config, parse_config
from coarseflow.predict.draw import draw_samples
from coarseflow.reference import load_reference
from coarseflow.run_training import train_from_config
from coarseflow.runs import RunDir
from coarseflow.workflow import load_run

ROOT = Path(__file__).resolve().parents[1]
ANGLES = ((-math.pi, math.pi), (-math.pi, math.pi))


def apply_overrides(raw: dict, sets: list[str]) -> dict:
    """'section.key=value' sets one key; 'section=value' (an inline table) replaces the section.
    Values are TOML."""
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        value = tomllib.loads(f"v = {value}")["v"]
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return raw


def evaluations(raw: dict, updates: int, n_betas: int, n_predict: int) -> int:
    """Energy + force evaluations implied by the settings (chains, warm starts, prediction)."""
    ch, tr, pr = raw.get("chains", {}), raw.get("training", {}), raw.get("prediction", {})
    steps = ch.get("n_burn", 50) + ch.get("n_keep", 25) * ch.get("thin", 1)
    per_step = ch.get("hmc_leapfrog", 5) if ch.get("kernel", "mala") == "hmc" else 1
    per_x = ch.get("warm_start_steps", 20) + ch.get("n_chains", 4) * steps * per_step
    # a Hessian counted as n_y = 51 gradients; AIS (the default conditional) adds its steps
    per_y = pr.get("minimize_steps", 200) + 51 * (pr.get("newton_steps", 5) + 1)
    if pr.get("conditional", "auto") in ("auto", "ais"):
        per_y += pr.get("ais_steps", 100) * pr.get("ais_paths", 16)
    train = updates * tr.get("batch_size", 128) * per_x
    if tr.get("forward_kl_weight", 0.0) > 0:
        train += updates * tr.get("batch_size", 128) * per_y
    tempering = n_betas * tr.get("tempering_samples", 512) * per_x
    return int(train + tempering + n_predict * per_y)


def _without(argv: list[str], *options: str) -> list[str]:
    """argv less the given options and their values (for the command recorded in the table)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(o + "=" for o in options)):
            out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "alanine_dipeptide.toml"))
    p.add_argument("--set", action="append", default=[], help="section.key=value override")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "alanine_dipeptide"))
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--init",
        metavar="RUN",
        help="start from the flow of RUN's last checkpoint (coarseflow train --init)",
    )
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate the finished run in --out with this config's "
        "[prediction] (e.g. other weights)",
    )
    p.add_argument("-n", type=int, default=10000, help="model samples for the comparison")
    p.add_argument("--write", help="markdown file whose section --section is replaced")
    p.add_argument("--section", default="alanine", help="marker name of that section")
    args = p.parse_args()

    raw = apply_overrides(tomllib.loads(Path(args.config).read_text()), args.set)
    out = Path(args.out)
    if args.evaluate_only:
        n_betas = len(RunDir(out).require_existing().checkpoints())
    else:
        if out.exists() and not args.resume:
            shutil.rmtree(out)
        n_betas = len(
            train_from_config(parse_config(raw), out, resume=args.resume, init=args.init).betas
        )
    meta = RunDir(out).find_checkpoint()
    # training time at the last checkpoint, summed over the processes of a resumed run
    train_s = meta["wall_time"]
    _, target, flow, conditional, _ = load_run(out)
    # [prediction] of the given config, not the run's (--evaluate-only: other weights)
    prediction = parse_config(raw).prediction
    s = draw_samples(jr.key(7), target, flow, 1.0, prediction, n=args.n, conditional=conditional)
    obs = MoleculeReport(target).observables(s.x)
    phi, psi, rg = obs["phi"][:, 0], obs["psi"][:, 0], obs["rg"]
    # raw statistics use every sample; a zero weight (log w = -inf: a path that started outside
    # its domain) only drops out of the reweighted ones
    ok = np.isfinite(phi) & np.isfinite(psi) & np.isfinite(rg)
    w = np.asarray(metrics.normalized_weights(np.where(ok, s.log_weights, -np.inf)))
    model = np.stack([phi, psi], 1)[ok]

    ref = load_reference()
    rphi, rpsi = np.ravel(ref["phi"]), np.ravel(ref["psi"])
    reference = np.stack([rphi, rpsi], 1)
    half = len(reference) // 2
    rng = np.random.default_rng(0)
    m = min(int(ok.sum()), half)
    a = reference[:half][rng.choice(half, m, replace=False)]
    b = reference[half:][rng.choice(len(reference) - half, m, replace=False)]
    floor_kl, floor_js = metrics.histogram_kl_js(a, b, 64, ANGLES)
    # the reweighted histogram rests on about ESS samples: the floor at that many frames says how
    # much of its divergence the weights' noise alone explains. Not below 2048 frames: there the
    # 0.5 pseudo-counts of the 4096 bins outweigh the frames, and the "floor" falls toward 0 as
    # the ESS does (0.03 at 65 frames, below the 0.06 at 20,000)
    ess = float(metrics.ess(s.log_weights))
    m_ess = int(round(ess))
    if m_ess >= 2048:
        ess_kl, ess_js = metrics.histogram_kl_js(a[:m_ess], b[:m_ess], 64, ANGLES)
        floor_at_ess = (
            f" ({ess_kl:.4f} with {m_ess} = ESS frames)",
            f" ({ess_js:.4f} with {m_ess})",
        )
    else:
        floor_at_ess = ("", "")
    kl_raw, js_raw = metrics.histogram_kl_js(reference, model, 64, ANGLES)
    kl_rew, js_rew = metrics.histogram_kl_js(reference, model, 64, ANGLES, weights_b=w[ok])
    rg_range = (float(np.percentile(ref["rg"], 0.1)), float(np.percentile(ref["rg"], 99.9)))
    rg_tv_raw = metrics.histogram_tv(rg[ok], np.ravel(ref["rg"]), 60, rg_range)
    rg_tv_rew = metrics.histogram_tv(rg[ok], np.ravel(ref["rg"]), 60, rg_range, weights=w[ok])

    pops_raw = basin_populations(phi[ok], psi[ok])
    pops_rew = basin_populations(phi[ok], psi[ok], w[ok])
    errs_rew = basin_population_errors(phi[ok], psi[ok], w[ok])
    pops_ref = basin_populations(rphi, rpsi)
    errs = dict(
        zip(
            (*BASINS, "other"),
            np.ravel(ref.get("populations_err", np.full(len(BASINS) + 1, np.nan))).tolist(),
            strict=True,
        )
    )
    # z: the reweighted population's distance from the reference in their combined errors
    lines = ["| basin | reference | model raw | model reweighted | z |", "|---|---|---|---|---|"]
    for name in (*BASINS, "other"):
        z = (pops_rew[name] - pops_ref[name]) / max(math.hypot(errs_rew[name], errs[name]), 1e-12)
        lines.append(
            f"| {name} | {pops_ref[name]:.4f} ± {errs[name]:.4f} | {pops_raw[name]:.4f} "
            f"| {pops_rew[name]:.4f} ± {errs_rew[name]:.4f} | {z:+.1f} |"
        )
    trained = {**load_config(RunDir(out).config_path).raw, "prediction": raw.get("prediction", {})}
    n_eval = evaluations(trained, meta["step"], n_betas, args.n)
    heating = meta.get("chain_heating")  # None for runs trained before it was logged
    heating = "" if heating is None else f", chain heating at beta = 1 {heating:+.2f} kT"
    lines += [
        "",
        "| metric | raw | reweighted | noise floor (two reference halves) |",
        "|---|---|---|---|",
        f"| KL(ref ‖ model), 64x64 phi/psi | {kl_raw:.4f} | {kl_rew:.4f} | {floor_kl:.4f}"
        f"{floor_at_ess[0]} |",
        f"| JS, 64x64 phi/psi | {js_raw:.4f} | {js_rew:.4f} | {floor_js:.4f}{floor_at_ess[1]} |",
        f"| TV of Rg histogram (60 bins) | {rg_tv_raw:.4f} | {rg_tv_rew:.4f} | |",
        "",
        f"ESS {ess:.1f} of {len(s.x)} "
        f"({float(metrics.ess_fraction(s.log_weights)):.4f}), Pareto k "
        f"{metrics.pareto_k(s.log_weights):.2f}; "
        f"{n_betas} betas, {meta['step']} updates{heating}, training wall time {train_s:.0f} s; "
        f"about {n_eval:.3g} energy + force evaluations; model samples {int(ok.sum())} "
        f"({int(np.sum(w > 0))} with weight > 0), "
        f"reference frames {len(reference)} (noise floor with {m} frames per half); "
        f"devices: {', '.join(str(d) for d in jax.devices())}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        stamp = (
            f"Measured {datetime.date.today()} on {os.cpu_count()} CPU cores "
            f"({platform.machine()}). Command: `python benchmarks/alanine_dipeptide.py "
            f"{shlex.join(_without(sys.argv[1:], '--write', '--section'))}`."
        )
        replace_section(args.write, args.section, stamp, table)


if __name__ == "__main__":
    main()
