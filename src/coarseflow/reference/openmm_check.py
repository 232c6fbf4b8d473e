"""The OpenMM cross-check of the JAX force field + integrator.

A shorter run of OpenMM's own LangevinMiddleIntegrator on the same System (:func:`openmm_check`)
checks the JAX force field + integrator: plain 300 K MD only equilibrates the left half of the
Ramachandran plane (phi < 0: C5, C7eq/PII, alpha_R) in a short run, so both are compared on
frames in that half (:data:`~coarseflow.reference.statistics.COMPARED`): mean potential energy
and radius of gyration over the half and within alpha_R and beta, and P(alpha_R | left half).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from coarseflow.analysis.observables import BASINS, basin_labels
from coarseflow.errors import ConfigError
from coarseflow.reference.molecule import ReferenceMolecule
from coarseflow.reference.settings import config_tables
from coarseflow.reference.statistics import COMPARED, basin_fractions, left_half_statistics


def openmm_check(
    config,
    n_steps: int,
    *,
    record_every: int = 25,
    burn_in_steps: int | None = None,
    time_step_ps: float = 0.001,
    friction_per_ps: float = 1.0,
    seed: int = 0,
    platform_name: str = "CPU",
    n_blocks: int = 10,
    molecule: ReferenceMolecule | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Plain Langevin MD with OpenMM's LangevinMiddleIntegrator on the same System at the target
    temperature: ``n_steps`` recorded steps after ``burn_in_steps`` (default n_steps // 10).

    ``config``: a Config or raw config dict with a [target] table (``molecule``, when given, is
    used instead). Returns a JSON-able dict: "openmm" with the :data:`COMPARED` statistics
    (each with a block standard error), basin populations over the run, steps/s and wall time.
    """
    import openmm
    from openmm import unit
    from tqdm.auto import tqdm

    mol = molecule if molecule is not None else ReferenceMolecule(config_tables(config)[0])
    if n_steps % record_every:
        raise ConfigError(
            f"openmm_check: n_steps ({n_steps}) must be a multiple of record_every ({record_every})"
        )
    burn_in = n_steps // 10 if burn_in_steps is None else burn_in_steps
    integrator = openmm.LangevinMiddleIntegrator(
        mol.temperature * unit.kelvin,
        friction_per_ps / unit.picosecond,
        time_step_ps * unit.picosecond,
    )
    integrator.setRandomNumberSeed(seed + 1)  # 0 would mean "pick a random seed"
    context = openmm.Context(
        mol.system, integrator, openmm.Platform.getPlatformByName(platform_name)
    )
    context.setPositions(mol.positions)
    context.setVelocitiesToTemperature(mol.temperature * unit.kelvin, seed + 1)
    start = time.perf_counter()
    integrator.step(burn_in)
    n_records = n_steps // record_every
    xyz = np.empty((n_records, mol.masses.size, 3))
    energy = np.empty(n_records)
    for k in tqdm(range(n_records), disable=not progress, desc="OpenMM check", unit="frame"):
        integrator.step(record_every)
        state = context.getState(getPositions=True, getEnergy=True)
        xyz[k] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        energy[k] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    wall = time.perf_counter() - start
    obs = mol.observe(xyz)  # NumPy in, NumPy out (float64)
    phi, psi = obs["phi"][:, 0], obs["psi"][:, 0]
    stats = left_half_statistics(
        phi[:, None], psi[:, None], energy[:, None], obs["rg"][:, None], n_blocks
    )
    pops = basin_fractions(basin_labels(phi, psi))
    return {
        "integrator": "LangevinMiddleIntegrator",
        "platform": platform_name,
        "temperature": mol.temperature,
        "time_step_ps": time_step_ps,
        "friction_per_ps": friction_per_ps,
        "burn_in_steps": burn_in,
        "n_steps": n_steps,
        "record_every": record_every,
        "wall_time_s": wall,
        "steps_per_s": (burn_in + n_steps) / wall,
        "populations": dict(zip((*BASINS, "other"), pops.tolist(), strict=True)),
        "openmm": stats,
    }


def compare_with_openmm(jax_stats: dict, openmm_stats: dict) -> dict[str, dict[str, float]]:
    """z = (jax - openmm) / sqrt(err_jax^2 + err_openmm^2) for each :data:`COMPARED` statistic
    of two :func:`~coarseflow.reference.statistics.left_half_statistics` results."""
    out = {}
    for name in COMPARED:
        a, ea = jax_stats[name], jax_stats[name + "_err"]
        b, eb = openmm_stats[name], openmm_stats[name + "_err"]
        scale = float(np.hypot(ea, eb))
        z = (a - b) / scale if scale > 0 else float("nan")
        out[name] = {"jax": a, "jax_err": ea, "openmm": b, "openmm_err": eb, "z": z}
    return out
