"""``coarseflow reference CONFIG``: the replica-exchange run of the config's molecule, its
statistics and OpenMM cross-check, the npz and the printed summary."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coarseflow.analysis.basin_statistics import reference_populations
from coarseflow.analysis.ramachandran import GENERAL
from coarseflow.errors import ConfigError
from coarseflow.parallel import check_divisible
from coarseflow.progress import compiling
from coarseflow.reference.molecule import ReferenceMolecule
from coarseflow.reference.npz import write_reference
from coarseflow.reference.openmm_check import compare_with_openmm, openmm_check
from coarseflow.reference.settings import (
    QUICK_SETTINGS,
    ReferenceSettings,
    config_tables,
    settings_from_config,
)
from coarseflow.reference.statistics import (
    left_half_statistics,
    population_record,
    residue_populations,
)
from coarseflow.samplers.replica_exchange import run_replica_exchange, temperature_ladder


def _machine(mesh=None) -> str:
    """The machine and JAX device(s), recorded in the npz."""
    device = jax.devices()[0]
    count = "" if mesh is None else f", {mesh.size} devices"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores visible, JAX {jax.__version__} "
        f"on {device.platform} ({device.device_kind}{count})"
    )


def _replica_exchange(mol, temperatures, settings, dtype, progress: bool, mesh=None):
    """run_replica_exchange on ``mol`` with [reference]'s settings, its chains split over
    ``mesh``."""
    return run_replica_exchange(
        mol.forcefield_jax.energy,
        mol.observe,
        jnp.asarray(mol.positions, dtype),
        jnp.asarray(mol.masses, dtype),
        temperatures,
        n_chains=settings.n_chains,
        time_step=settings.time_step_ps,
        friction=settings.friction_per_ps,
        n_steps=settings.n_steps,
        burn_in_steps=settings.burn_in_steps,
        record_every=settings.record_every,
        exchange_every=settings.exchange_every,
        key=jax.random.key(settings.seed),
        progress=progress,
        mesh=mesh,
    )


def run_reference(
    config,
    out_path: str | Path,
    progress: bool = True,
    *,
    settings: ReferenceSettings | None = None,
    mesh=None,
) -> dict[str, Any]:
    """Replica-exchange reference of the molecule in ``config`` written to ``out_path`` (npz).

    ``mesh``: the devices the independent chains are split over
    (:func:`coarseflow.parallel.data_mesh`; [reference] n_chains a multiple of their number);
    the run equals one device's up to rounding.

    ``config``: a Config, or a raw config dict, with a [target] table (kind = "molecule"; keys
    pdb, forcefield, temperature are used, others ignored) and a [reference] table, parsed into
    :class:`ReferenceSettings` (every key checked) unless ``settings`` is given.

    npz keys (frames = recorded steps x chains of the target temperature, time-major):
    phi, psi (frames,) rad for one phi/psi pair, else (frames, m); rg (frames,) nm (all atoms,
    unweighted, as mdtraj.compute_rg); energy (frames,) kJ/mol; chain (frames,) int16 ladder
    index; time_ps (frames,) production time; temperature () K; temperatures (R,) K ladder;
    basins (B+1,) names, "other" last; populations, populations_err, populations_err_chains,
    populations_err_blocks (B+1,) of the first phi/psi pair in the general basins (BASINS);
    swap_acceptance (R-1,); wall_time_s, n_energy_evals, evals_per_s, simulated_time_ns (all
    walkers), n_reverted; cis, inverted (frames,) bool: a peptide bond cis (|omega| < 90 deg),
    a C-alpha of inverted chirality; settings, target, openmm_check (JSON strings); created
    (ISO date), machine. Float data are float32.

    Returns the summary: a JSON-able dict of the scalars, populations (the npz's) and the OpenMM
    comparison, "residues" (every phi/psi residue's populations in its class's basins,
    statistics.residue_populations), with a printable table under "table".
    """
    settings = settings_from_config(config, settings)
    check_divisible(settings.n_chains, mesh, "[reference] n_chains")
    if settings.dtype == "float64" and not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)
    target = config_tables(config)[0]
    mol = ReferenceMolecule(target)
    if settings.n_replicas > 1 and not settings.t_max > mol.temperature:
        raise ConfigError(
            f"[reference] t_max: expected a temperature above the target's "
            f"{mol.temperature} K, got {settings.t_max}"
        )
    temperatures = temperature_ladder(mol.temperature, settings.t_max, settings.n_replicas)
    dtype = jnp.float32 if settings.dtype == "float32" else jnp.float64

    # the bar counts steps from the start: the block's compile is said above it
    words = {"block": f"the replica-exchange block ({len(temperatures)} x {settings.n_chains})"}
    with compiling("replica exchange", progress, names=words):
        result = _replica_exchange(mol, temperatures, settings, dtype, progress, mesh)
    rec = result.records
    phi, psi = rec["phi"], rec["psi"]  # (n_records, C, m)
    energy, rg = rec["energy"], rec["rg"]  # (n_records, C)
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(energy))):
        raise RuntimeError("reference: non-finite phi/psi or energy recorded; reduce time_step_ps")
    n_records, n_chains = energy.shape
    m = phi.shape[-1]
    if m == 0:
        raise ConfigError(f"[target] pdb: {mol.pdb_path} has no residue with both phi and psi")
    frames = n_records * n_chains
    chain = np.tile(np.arange(n_chains, dtype=np.int16), n_records)  # time-major, as phi / psi
    phi_f, psi_f = phi.reshape(frames, m), psi.reshape(frames, m)
    # the npz's populations: the first (phi, psi) pair's (alanine dipeptide's only one) in the
    # general basins, what its readers expect; every residue's in its own class's: "residues"
    pop = reference_populations(GENERAL, phi_f[:, 0], psi_f[:, 0], chain, settings.n_blocks)
    residues = residue_populations(mol, phi_f, psi_f, chain, settings.n_blocks)
    jax_left = left_half_statistics(phi[..., 0], psi[..., 0], energy, rg, settings.n_blocks)

    check: dict[str, Any] = {}  # filled after the replica exchange is on disk
    dt = settings.time_step_ps
    n_walkers = settings.n_replicas * n_chains
    simulated_ns = n_walkers * (settings.burn_in_steps + settings.n_steps) * dt / 1000.0
    summary = {
        "molecule": str(mol.pdb_path.name),
        "temperature": mol.temperature,
        "temperatures": result.temperatures.tolist(),
        **population_record(GENERAL.names, pop),
        "residues": residues,
        "swap_acceptance": result.swap_acceptance.tolist(),
        "wall_time_s": result.wall_time_s,
        "n_energy_evals": result.n_energy_evals,
        "evals_per_s": result.n_energy_evals / result.wall_time_s,
        "simulated_time_ns": simulated_ns,
        "target_time_ns": n_chains * (settings.n_steps * dt) / 1000.0,
        "n_frames": frames,
        "n_reverted": result.n_reverted,
        "cis_fraction": float(np.mean(rec["cis"])),
        "inverted_fraction": float(np.mean(rec["inverted"])),
        "minimized_energy": mol.minimized_energy,
        "jax_left_half": jax_left,
        "openmm_check": check,
    }
    summary["table"] = format_summary(summary)

    def flat(a):  # (frames,) for one residue, as the npz has always stored it
        return a[:, 0] if m == 1 else a

    arrays = {
        "phi": flat(phi_f).astype(np.float32),
        "psi": flat(psi_f).astype(np.float32),
        "rg": rg.reshape(frames).astype(np.float32),
        "energy": energy.reshape(frames).astype(np.float32),
        "cis": rec["cis"].reshape(frames).astype(bool),
        "inverted": rec["inverted"].reshape(frames).astype(bool),
        "chain": chain,
        "time_ps": np.repeat(
            (np.arange(1, n_records + 1) * settings.record_every * dt).astype(np.float32),
            n_chains,
        ),
        "temperature": np.float64(mol.temperature),
        "temperatures": result.temperatures,
        "basins": np.array(GENERAL.names),
        "populations": pop.populations,
        "populations_err": pop.err,
        "populations_err_chains": pop.err_chains,
        "populations_err_blocks": pop.err_blocks,
        "swap_acceptance": result.swap_acceptance.astype(np.float64),
        "wall_time_s": np.float64(result.wall_time_s),
        "n_energy_evals": np.int64(result.n_energy_evals),
        "evals_per_s": np.float64(summary["evals_per_s"]),
        "simulated_time_ns": np.float64(simulated_ns),
        "n_reverted": np.int64(result.n_reverted),
        "settings": np.array(json.dumps(dataclasses.asdict(settings))),
        "target": np.array(json.dumps(target)),
        "openmm_check": np.array(json.dumps(check)),
        "created": np.array(datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")),
        "machine": np.array(_machine(mesh)),
    }
    write_reference(out_path, arrays)
    # the replica exchange is safe on disk before the OpenMM trajectory, which on a larger
    # peptide can take as long again (capped Ala3: 16,000 frames at 1-10 per s on 2 shared cores)
    if settings.openmm_check_steps:
        check = openmm_check(
            config,
            settings.openmm_check_steps,
            record_every=settings.record_every,
            time_step_ps=settings.time_step_ps,
            friction_per_ps=settings.friction_per_ps,
            seed=settings.seed,
            platform_name=settings.openmm_platform,
            n_blocks=settings.n_blocks,
            molecule=mol,
            progress=progress,
        )
        check["jax"] = jax_left
        check["comparison"] = compare_with_openmm(jax_left, check["openmm"])
        summary["openmm_check"] = check
        summary["table"] = format_summary(summary)
        arrays["openmm_check"] = np.array(json.dumps(check))
        write_reference(out_path, arrays)
    return summary


def _population_lines(title: str, record: dict) -> list[str]:
    """``title``, then a row per basin of a population_record: population ± larger standard
    error (between chains, between blocks)."""
    lines = [
        title,
        f"  {'basin':<10} {'population':>10} {'± err':>8} {'(chains':>8} {'blocks)':>8}",
    ]
    for name, p in record["populations"].items():
        lines.append(
            f"  {name:<10} {p:>10.4f} {record['populations_err'][name]:>8.4f} "
            f"{record['populations_err_chains'][name]:>8.4f} "
            f"{record['populations_err_blocks'][name]:>8.4f}"
        )
    return lines


def format_summary(summary: dict) -> str:
    """The summary as a text table: every residue's basin populations (± larger standard
    error), swap acceptance, cost, and the OpenMM comparison when present."""
    lines = [
        f"reference: {summary['molecule']} at {summary['temperature']:g} K, ladder "
        + ", ".join(f"{t:.0f}" for t in summary["temperatures"])
        + " K"
    ]
    first = summary["residues"][0]
    # the npz's populations are the first residue's in the general basins: shown apart only
    # where its own class is another
    if first["class"] != GENERAL.kind:
        title = f"{first['residue']} in the general basins (the npz's populations)"
        lines += _population_lines(title, summary)
    for r in summary["residues"]:
        lines += _population_lines(f"{r['residue']} ({r['class']} residue basins)", r)
    lines.append(
        f"frames with a cis peptide bond: {summary['cis_fraction']:.4f}; with an "
        f"inverted C-alpha: {summary['inverted_fraction']:.4f}"
    )
    lines.append("swap acceptance: " + ", ".join(f"{a:.2f}" for a in summary["swap_acceptance"]))
    lines.append(
        f"{summary['n_energy_evals']:,} energy+force evaluations in "
        f"{summary['wall_time_s']:.0f} s ({summary['evals_per_s']:.0f}/s); "
        f"{summary['simulated_time_ns']:.2f} ns simulated in all, "
        f"{summary['target_time_ns']:.2f} ns at the target temperature; "
        f"{summary['n_frames']} frames"
    )
    comparison = summary.get("openmm_check", {}).get("comparison")
    if comparison:
        check = summary["openmm_check"]
        lines.append(
            f"OpenMM check ({check['n_steps']} steps, {check['steps_per_s']:.0f} "
            "steps/s), left half of the Ramachandran plane:"
        )
        for name, c in comparison.items():
            lines.append(
                f"  {name:<20} JAX {c['jax']:.4f} ± {c['jax_err']:.4f}   OpenMM "
                f"{c['openmm']:.4f} ± {c['openmm_err']:.4f}   z = {c['z']:+.2f}"
            )
        if len(summary["residues"]) > 1:
            lines.append(MANY_RESIDUES_CHECK)
    return "\n".join(lines)


MANY_RESIDUES_CHECK = (
    "  (several residues: one OpenMM trajectory stays in its start's states of the other "
    "residues, on which these statistics also depend, so a large z here says that the "
    "trajectory is trapped, not that the force fields differ; docs/reference.md)"
)


def reference_main(
    config_path: str | Path, out: str | Path | None = None, quick: bool = False, mesh=None
) -> dict[str, Any]:
    """``coarseflow reference CONFIG [-o OUT]``: load the config, run, write, print the table.

    out defaults to ``<config stem>_reference.npz`` beside the config; ``quick`` replaces the
    settings by :data:`QUICK_SETTINGS` (a smoke test of seconds); ``mesh``: the devices the
    chains are split over. Returns the summary.
    """
    from coarseflow.config import load_config

    config_path = Path(config_path)
    config = load_config(config_path)
    settings = QUICK_SETTINGS if quick else None
    out = (
        Path(out) if out is not None else config_path.with_name(f"{config_path.stem}_reference.npz")
    )
    summary = run_reference(config, out, settings=settings, mesh=mesh)
    print(summary["table"])
    print(f"written: {out}")
    return summary
