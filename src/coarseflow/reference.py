"""Ground truth for a molecule without trusting the flow: ``coarseflow reference CONFIG``.

All-atom replica exchange (parallel tempering) with BAOAB Langevin dynamics on the pure-JAX force
field (:mod:`coarseflow.samplers.replica_exchange`), many independent ladders in parallel, on GPU
when there is one. Plain Langevin dynamics at the target temperature does not cross the phi ~ 0
barrier of alanine dipeptide on any affordable time scale (a 100 ns OpenMM run never reached
alpha_L); exchanges with hotter rungs carry configurations over it.

Uncertainties. The C chains are C independent replica-exchange simulations (exchanges happen only
within a chain's own ladder), all started from the same minimised structure and decorrelated by
the burn-in. A basin population is reported as the mean over all recorded frames of the target
temperature with two standard errors: between chains (std over the C per-chain populations /
sqrt(C)) and between ``n_blocks`` contiguous blocks in time (all chains pooled per block); the
quoted error ``populations_err`` is the larger of the two.

A shorter run of OpenMM's own LangevinMiddleIntegrator on the same System (:func:`openmm_check`)
checks the JAX force field + integrator: plain 300 K MD only equilibrates the left half of the
Ramachandran plane (phi < 0: C5, C7eq/PII, alpha_R) in a short run, so both are compared on
frames in that half (:data:`COMPARED`): mean potential energy and radius of gyration over the
half and within alpha_R and beta, and P(alpha_R | left half).

Output: an npz written atomically (see :func:`run_reference` for its keys); no pickles.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coarseflow.analysis.observables import (
    BASINS,
    basin_labels,
    dihedral,
    phi_psi_indices,
    radius_of_gyration,
)
from coarseflow.errors import ConfigError
from coarseflow.runs import atomic_write_bytes
from coarseflow.samplers.replica_exchange import run_replica_exchange, temperature_ladder

LEFT_BASINS = ("C5", "C7eq/PII", "alpha_R")  # phi < 0 (and the wrapped beta region)
SHIPPED_REFERENCE = "alanine_dipeptide_reference.npz"
NPZ_KEYS = (
    "phi", "psi", "rg", "energy", "chain", "time_ps", "temperature", "temperatures",
    "basins", "populations", "populations_err", "populations_err_chains",
    "populations_err_blocks", "swap_acceptance", "wall_time_s", "n_energy_evals",
    "evals_per_s", "simulated_time_ns", "n_reverted", "cis", "inverted", "settings", "target",
    "openmm_check", "created", "machine",
)  # fmt: skip


@dataclass(frozen=True)
class ReferenceSettings:
    """Settings of the reference sampler (the [reference] table of a config).

    n_replicas: rungs R of the geometric temperature ladder from the target temperature to
    t_max (K); 1 = plain Langevin dynamics at the target temperature. n_chains: independent
    ladders C. time_step_ps: BAOAB time step (ps; no constraints, hydrogens present, so 1 fs).
    friction_per_ps: Langevin friction (1/ps). n_steps: production steps per walker, after
    burn_in_steps unrecorded ones; both multiples of record_every. record_every: steps between
    recorded frames of the target temperature. exchange_every: steps between swap rounds.
    n_blocks: time blocks for block-average errors. seed: PRNG seed. openmm_check_steps: length
    of the OpenMM cross-check at the target temperature (0 = skip; a multiple of record_every).
    openmm_platform: "CPU" or "Reference". dtype: "float32" or "float64" for the JAX run.
    The defaults are those of the shipped alanine dipeptide reference.
    """

    n_replicas: int = 8
    t_max: float = 1000.0
    n_chains: int = 16
    time_step_ps: float = 0.001
    friction_per_ps: float = 1.0
    n_steps: int = 300_000
    burn_in_steps: int = 10_000
    record_every: int = 25
    exchange_every: int = 50
    n_blocks: int = 10
    seed: int = 0
    openmm_check_steps: int = 400_000
    openmm_platform: str = "CPU"
    dtype: str = "float32"

    def __post_init__(self):
        def fail(key, expected):
            raise ConfigError(
                f"[reference] {key}: expected {expected}, got {getattr(self, key)!r}"
            )

        from coarseflow import checks

        for key, minimum in (
            ("n_replicas", 1), ("n_chains", 1), ("n_steps", 1), ("burn_in_steps", 0),
            ("record_every", 1), ("exchange_every", 1), ("n_blocks", 2),
            ("openmm_check_steps", 0),
        ):  # fmt: skip
            checks.integer(f"[reference] {key}", getattr(self, key), minimum, 10**12)
        checks.seed("[reference] seed", self.seed)
        for key, high in (("t_max", 1e5), ("time_step_ps", 0.005), ("friction_per_ps", 1e4)):
            checks.number(f"[reference] {key}", getattr(self, key), 0.0, high)
        for key in ("n_steps", "burn_in_steps", "openmm_check_steps"):
            if getattr(self, key) % self.record_every:
                fail(key, f"a multiple of record_every ({self.record_every})")
        if self.n_steps // self.record_every < self.n_blocks:
            fail("n_steps", f"at least n_blocks * record_every = "
                 f"{self.n_blocks * self.record_every} (one frame per block)")
        if self.openmm_platform not in ("CPU", "Reference"):
            fail("openmm_platform", "'CPU' or 'Reference'")
        if self.dtype not in ("float32", "float64"):
            fail("dtype", "'float32' or 'float64'")


QUICK_SETTINGS = ReferenceSettings(
    n_replicas=2, t_max=400.0, n_chains=2, n_steps=200, burn_in_steps=40, record_every=10,
    exchange_every=10, n_blocks=2, openmm_check_steps=200,
)
"""A smoke-test run (seconds): ``reference_main(..., quick=True)``."""


# ---- the molecule ------------------------------------------------------------------------------


def openmm_minimise(system, positions, max_iterations: int) -> tuple[np.ndarray, float]:
    """A brief minimisation with OpenMM's L-BFGS (Reference platform, tolerance 1 kJ/mol/nm).

    positions: (n_atoms, 3) nm. Returns the minimised positions (n_atoms, 3) nm and the
    potential energy there (kJ/mol).
    """
    import openmm
    from openmm import unit

    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.asarray(positions, dtype=np.float64) * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, max_iterations)
    state = context.getState(getPositions=True, getEnergy=True)
    return (np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)),
            state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


class _Molecule:
    """What the reference needs of a [target] table with kind = "molecule": the files are those
    a :class:`coarseflow.targets.molecule.Molecule` of the table reads (its registry), the
    structure is minimised by OpenMM, all atoms move."""

    def __init__(self, table: dict[str, Any]):
        kind = table.get("kind")
        if kind != "molecule":
            raise ConfigError(
                f"[target] kind: `coarseflow reference` needs kind = \"molecule\", got {kind!r}"
            )
        from coarseflow.targets.molecule.registry import forcefield_files, resolve_pdb

        self.pdb_path = Path(resolve_pdb(table.get("pdb", "alanine_dipeptide"))[0])
        # None: the default of the file (build_system)
        self.forcefield = forcefield_files(table.get("forcefield"))
        temperature = table.get("temperature", 300.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
            temperature > 0
        ):
            raise ConfigError(f"[target] temperature: expected a number > 0 (K), "
                              f"got {temperature!r}")
        self.temperature = float(temperature)

        import mdtraj
        from openmm import unit

        from coarseflow.forcefield import build_system, forcefield_from_system

        topology, positions, system = build_system(self.pdb_path, self.forcefield)
        self.topology, self.system = topology, system
        self.mdtraj_topology = mdtraj.Topology.from_openmm(topology)
        self.masses = np.array(
            [system.getParticleMass(i).value_in_unit(unit.dalton)
             for i in range(system.getNumParticles())]
        )
        self.forcefield_jax = forcefield_from_system(system)
        self.phi_atoms, self.psi_atoms = phi_psi_indices(self.mdtraj_topology)
        self.omega_atoms, self.chiral_atoms = _omega_and_chiral_indices(self.mdtraj_topology)
        self.positions, self.minimized_energy = openmm_minimise(system, positions, 1000)
        self.chirality = np.sign(_chiral_volumes(self.positions, self.chiral_atoms))

    def observe(self, positions):
        """positions (..., n_atoms, 3) nm -> {"phi": (..., m), "psi": (..., m) rad, "rg": (...)
        nm, "cis": (...) bool, any peptide bond cis (|omega| < 90 deg), "inverted": (...) bool,
        any C-alpha with the opposite chirality of the minimised structure}."""
        xp = jnp if isinstance(positions, jax.Array) else np
        omega = dihedral(positions, self.omega_atoms)
        volumes = _chiral_volumes(positions, self.chiral_atoms)
        return {
            "phi": dihedral(positions, self.phi_atoms),
            "psi": dihedral(positions, self.psi_atoms),
            "rg": radius_of_gyration(positions),
            "cis": xp.any(xp.abs(omega) < 0.5 * np.pi, axis=-1),
            "inverted": xp.any(volumes * self.chirality < 0, axis=-1),
        }


def _omega_and_chiral_indices(topology) -> tuple[np.ndarray, np.ndarray]:
    """(omega (k, 4), chiral (c, 4)) atom indices of an mdtraj Topology.

    omega: every peptide bond C_i - N_{i+1} within a chain, as (CA_i or CH3 of ACE, C_i,
    N_{i+1}, CA_{i+1} or C of NME). chiral: (CA, N, C, CB) of every residue with those atoms.
    """
    omega, chiral = [], []
    for chain in topology.chains:
        names = [{a.name: a.index for a in r.atoms} for r in chain.residues]
        for cur, nxt in zip(names[:-1], names[1:], strict=True):
            first = cur.get("CA", cur.get("CH3"))
            last = nxt.get("CA", nxt.get("C"))
            if "C" in cur and "N" in nxt and first is not None and last is not None:
                omega.append((first, cur["C"], nxt["N"], last))
        for res in names:
            if all(k in res for k in ("CA", "N", "C", "CB")):
                chiral.append((res["CA"], res["N"], res["C"], res["CB"]))
    return np.asarray(omega, np.int64).reshape(-1, 4), np.asarray(chiral, np.int64).reshape(-1, 4)


def _chiral_volumes(positions, atoms: np.ndarray):
    """Signed volumes (..., c) (N - CA) . ((C - CA) x (CB - CA)) in nm^3; sign = handedness."""
    xp = jnp if isinstance(positions, jax.Array) else np
    centre = positions[..., atoms[:, 0], :]
    a, b, c = (positions[..., atoms[:, k], :] - centre for k in (1, 2, 3))
    return xp.sum(a * xp.cross(b, c), axis=-1)


# ---- statistics --------------------------------------------------------------------------------


def _basin_fractions(labels: np.ndarray) -> np.ndarray:
    """labels (...,) -> fraction in each basin (n_basins + 1,), "other" last."""
    labels = np.asarray(labels).reshape(-1)
    return np.bincount(labels, minlength=len(BASINS) + 1) / max(labels.size, 1)


def population_statistics(labels: np.ndarray, n_blocks: int) -> dict[str, np.ndarray]:
    """Basin populations of labels (n_records, C) (one basin label per frame and chain).

    Returns populations (B+1,) over all frames ("other" last) and their standard errors:
    ``err_chains`` (std over the C chains / sqrt(C); NaN for C = 1), ``err_blocks`` (std over
    n_blocks contiguous time blocks of all chains / sqrt(n_blocks)) and ``err`` = the larger.
    """
    labels = np.asarray(labels)
    n_records, n_chains = labels.shape
    pops = _basin_fractions(labels)
    if n_chains > 1:
        per_chain = np.stack([_basin_fractions(labels[:, c]) for c in range(n_chains)])
        err_chains = per_chain.std(axis=0, ddof=1) / np.sqrt(n_chains)
    else:
        err_chains = np.full_like(pops, np.nan)
    blocks = np.array_split(np.arange(n_records), n_blocks)
    per_block = np.stack([_basin_fractions(labels[b]) for b in blocks])
    err_blocks = per_block.std(axis=0, ddof=1) / np.sqrt(n_blocks)
    return {"populations": pops, "err_chains": err_chains, "err_blocks": err_blocks,
            "err": np.fmax(err_chains, err_blocks)}


def block_mean(values: np.ndarray, mask: np.ndarray, n_blocks: int) -> tuple[float, float]:
    """Mean of values (n_records, C) over frames where mask, and its block standard error
    (std of the means of n_blocks contiguous time blocks, chains pooled, / sqrt(n_blocks))."""
    values, mask = np.asarray(values, np.float64), np.asarray(mask, bool)
    mean = float(values[mask].mean()) if mask.any() else float("nan")
    means = [values[b][mask[b]].mean() for b in np.array_split(np.arange(len(values)), n_blocks)
             if mask[b].any()]
    err = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")
    return mean, err


COMPARED = ("energy", "energy_alpha_R", "energy_beta", "rg", "rg_alpha_R", "rg_beta",
            "p_alpha_R_given_left")
"""Statistics compared between the JAX reference and OpenMM: mean potential energy (kJ/mol) and
radius of gyration (nm) over the left half of the Ramachandran plane, within alpha_R and within
beta = C5 + C7eq/PII (these equilibrate within picoseconds), and P(alpha_R | left half)."""


def _left_half_stats(phi, psi, energy, rg, n_blocks) -> dict[str, float]:
    """The :data:`COMPARED` statistics, each with a block standard error ("<name>_err"), of
    frames (n_records, C) of phi, psi (rad), energy (kJ/mol) and rg (nm)."""
    labels = basin_labels(phi, psi)
    left = np.isin(labels, [BASINS.index(b) for b in LEFT_BASINS])
    alpha_r = labels == BASINS.index("alpha_R")
    beta = np.isin(labels, [BASINS.index("C5"), BASINS.index("C7eq/PII")])
    out = {"n_frames": int(labels.size), "fraction_left": float(left.mean())}
    for name, values, mask in (
        ("energy", energy, left), ("energy_alpha_R", energy, alpha_r),
        ("energy_beta", energy, beta), ("rg", rg, left), ("rg_alpha_R", rg, alpha_r),
        ("rg_beta", rg, beta), ("p_alpha_R_given_left", alpha_r.astype(np.float64), left),
    ):  # fmt: skip
        out[name], out[name + "_err"] = block_mean(values, mask, n_blocks)
    return out


# ---- OpenMM cross-check ------------------------------------------------------------------------


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
    molecule: _Molecule | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Plain Langevin MD with OpenMM's LangevinMiddleIntegrator on the same System at the target
    temperature: ``n_steps`` recorded steps after ``burn_in_steps`` (default n_steps // 10).

    ``config``: a Config or raw config dict with a [target] table. Returns a JSON-able dict:
    "openmm" with the :data:`COMPARED` statistics (each with a block standard error), basin
    populations over the run, steps/s and wall time.
    """
    import openmm
    from openmm import unit
    from tqdm.auto import tqdm

    mol = molecule if molecule is not None else _Molecule(_tables(config)[0])
    if n_steps % record_every:
        raise ConfigError(f"openmm_check: n_steps ({n_steps}) must be a multiple of "
                          f"record_every ({record_every})")
    burn_in = n_steps // 10 if burn_in_steps is None else burn_in_steps
    integrator = openmm.LangevinMiddleIntegrator(
        mol.temperature * unit.kelvin, friction_per_ps / unit.picosecond,
        time_step_ps * unit.picosecond,
    )
    integrator.setRandomNumberSeed(seed + 1)  # 0 would mean "pick a random seed"
    context = openmm.Context(mol.system, integrator,
                             openmm.Platform.getPlatformByName(platform_name))
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
    stats = _left_half_stats(phi[:, None], psi[:, None], energy[:, None], obs["rg"][:, None],
                             n_blocks)
    pops = _basin_fractions(basin_labels(phi, psi))
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


def _compare(jax_stats: dict, openmm_stats: dict) -> dict[str, dict[str, float]]:
    """z = (jax - openmm) / sqrt(err_jax^2 + err_openmm^2) for each left-half statistic."""
    out = {}
    for name in COMPARED:
        a, ea = jax_stats[name], jax_stats[name + "_err"]
        b, eb = openmm_stats[name], openmm_stats[name + "_err"]
        scale = float(np.hypot(ea, eb))
        z = (a - b) / scale if scale > 0 else float("nan")
        out[name] = {"jax": a, "jax_err": ea, "openmm": b, "openmm_err": eb, "z": z}
    return out


# ---- the reference run -------------------------------------------------------------------------


def _settings(config, settings: ReferenceSettings | None) -> ReferenceSettings:
    if settings is not None:
        return settings
    from coarseflow.config import settings_from_table

    return settings_from_table(ReferenceSettings, _tables(config)[1], "reference")


def _tables(config) -> tuple[dict, dict]:
    """([target] table, [reference] table) of a Config or of a raw config dict."""
    if isinstance(config, dict):
        target, reference = config.get("target"), config.get("reference", {})
    else:
        target, reference = getattr(config, "target", None), getattr(config, "reference", {})
    if not isinstance(target, dict):
        raise ConfigError("config: a [target] table with kind = \"molecule\" is required")
    return dict(target), dict(reference)


def _machine() -> str:
    device = jax.devices()[0]
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores visible, JAX {jax.__version__} "
            f"on {device.platform} ({device.device_kind})")


def run_reference(
    config,
    out_path: str | Path,
    progress: bool = True,
    *,
    settings: ReferenceSettings | None = None,
) -> dict[str, Any]:
    """Replica-exchange reference of the molecule in ``config`` written to ``out_path`` (npz).

    ``config``: a Config, or a raw config dict, with a [target] table (kind = "molecule"; keys
    pdb, forcefield, temperature are used, others ignored) and a [reference] table, parsed into
    :class:`ReferenceSettings` (every key checked) unless ``settings`` is given.

    npz keys (frames = recorded steps x chains of the target temperature, time-major):
    phi, psi (frames,) rad for one phi/psi pair, else (frames, m); rg (frames,) nm (all atoms,
    unweighted, as mdtraj.compute_rg); energy (frames,) kJ/mol; chain (frames,) int16 ladder
    index; time_ps (frames,) production time; temperature () K; temperatures (R,) K ladder;
    basins (B+1,) names, "other" last; populations, populations_err, populations_err_chains,
    populations_err_blocks (B+1,); swap_acceptance (R-1,); wall_time_s, n_energy_evals,
    evals_per_s, simulated_time_ns (all walkers), n_reverted; cis, inverted (frames,) bool:
    a peptide bond cis (|omega| < 90 deg), a C-alpha of inverted chirality; settings, target,
    openmm_check (JSON strings); created (ISO date), machine. Float data are float32.

    Returns the summary: a JSON-able dict of the scalars, populations and the OpenMM comparison,
    with a printable table under "table".
    """
    settings = _settings(config, settings)
    if settings.dtype == "float64" and not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)
    target = _tables(config)[0]
    mol = _Molecule(target)
    if settings.n_replicas > 1 and not settings.t_max > mol.temperature:
        raise ConfigError(f"[reference] t_max: expected a temperature above the target's "
                          f"{mol.temperature} K, got {settings.t_max}")
    temperatures = temperature_ladder(mol.temperature, settings.t_max, settings.n_replicas)
    dtype = jnp.float32 if settings.dtype == "float32" else jnp.float64

    result = run_replica_exchange(
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
    )
    rec = result.records
    phi, psi = rec["phi"], rec["psi"]  # (n_records, C, m)
    energy, rg = rec["energy"], rec["rg"]  # (n_records, C)
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(energy))):
        raise RuntimeError("reference: non-finite phi/psi or energy recorded; reduce "
                           "time_step_ps")
    n_records, n_chains = energy.shape
    m = phi.shape[-1]
    if m == 0:
        raise ConfigError(f"[target] pdb: {mol.pdb_path} has no residue with both phi and psi")
    # basins: of the first (phi, psi) pair (alanine dipeptide's only one)
    labels = basin_labels(phi[..., 0], psi[..., 0])
    pop = population_statistics(labels, settings.n_blocks)
    jax_left = _left_half_stats(phi[..., 0], psi[..., 0], energy, rg, settings.n_blocks)

    check: dict[str, Any] = {}
    if settings.openmm_check_steps:
        check = openmm_check(
            config, settings.openmm_check_steps, record_every=settings.record_every,
            time_step_ps=settings.time_step_ps, friction_per_ps=settings.friction_per_ps,
            seed=settings.seed, platform_name=settings.openmm_platform,
            n_blocks=settings.n_blocks, molecule=mol, progress=progress,
        )
        check["jax"] = jax_left
        check["comparison"] = _compare(jax_left, check["openmm"])

    names = (*BASINS, "other")
    frames = n_records * n_chains
    dt = settings.time_step_ps
    n_walkers = settings.n_replicas * n_chains
    simulated_ns = n_walkers * (settings.burn_in_steps + settings.n_steps) * dt / 1000.0
    summary = {
        "molecule": str(mol.pdb_path.name),
        "temperature": mol.temperature,
        "temperatures": result.temperatures.tolist(),
        "populations": dict(zip(names, pop["populations"].tolist(), strict=True)),
        "populations_err": dict(zip(names, pop["err"].tolist(), strict=True)),
        "populations_err_chains": dict(zip(names, pop["err_chains"].tolist(), strict=True)),
        "populations_err_blocks": dict(zip(names, pop["err_blocks"].tolist(), strict=True)),
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

    def flat(a):
        return a.reshape(frames) if m == 1 else a.reshape(frames, m)

    arrays = {
        "phi": flat(phi).astype(np.float32),
        "psi": flat(psi).astype(np.float32),
        "rg": rg.reshape(frames).astype(np.float32),
        "energy": energy.reshape(frames).astype(np.float32),
        "cis": rec["cis"].reshape(frames).astype(bool),
        "inverted": rec["inverted"].reshape(frames).astype(bool),
        "chain": np.tile(np.arange(n_chains, dtype=np.int16), n_records),
        "time_ps": np.repeat(
            (np.arange(1, n_records + 1) * settings.record_every * dt).astype(np.float32),
            n_chains,
        ),
        "temperature": np.float64(mol.temperature),
        "temperatures": result.temperatures,
        "basins": np.array(names),
        "populations": pop["populations"],
        "populations_err": pop["err"],
        "populations_err_chains": pop["err_chains"],
        "populations_err_blocks": pop["err_blocks"],
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
        "machine": np.array(_machine()),
    }
    atomic_write_bytes(Path(out_path), lambda f: np.savez_compressed(f, **arrays))
    os.chmod(out_path, 0o644)  # a data file, not a secret (the temporary file was 0600)
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a text table: basin populations (± larger standard error), swap
    acceptance, cost, and the OpenMM comparison when present."""
    lines = [f"reference: {summary['molecule']} at {summary['temperature']:g} K, ladder "
             + ", ".join(f"{t:.0f}" for t in summary["temperatures"]) + " K",
             f"{'basin':<10} {'population':>10} {'± err':>8} {'(chains':>8} {'blocks)':>8}"]
    for name, p in summary["populations"].items():
        lines.append(f"{name:<10} {p:>10.4f} {summary['populations_err'][name]:>8.4f} "
                     f"{summary['populations_err_chains'][name]:>8.4f} "
                     f"{summary['populations_err_blocks'][name]:>8.4f}")
    lines.append(f"frames with a cis peptide bond: {summary['cis_fraction']:.4f}; with an "
                 f"inverted C-alpha: {summary['inverted_fraction']:.4f}")
    lines.append("swap acceptance: " + ", ".join(f"{a:.2f}" for a in summary["swap_acceptance"]))
    lines.append(f"{summary['n_energy_evals']:,} energy+force evaluations in "
                 f"{summary['wall_time_s']:.0f} s ({summary['evals_per_s']:.0f}/s); "
                 f"{summary['simulated_time_ns']:.2f} ns simulated in all, "
                 f"{summary['target_time_ns']:.2f} ns at the target temperature; "
                 f"{summary['n_frames']} frames")
    comparison = summary.get("openmm_check", {}).get("comparison")
    if comparison:
        check = summary["openmm_check"]
        lines.append(f"OpenMM check ({check['n_steps']} steps, {check['steps_per_s']:.0f} "
                     "steps/s), left half of the Ramachandran plane:")
        for name, c in comparison.items():
            lines.append(f"  {name:<20} JAX {c['jax']:.4f} ± {c['jax_err']:.4f}   OpenMM "
                         f"{c['openmm']:.4f} ± {c['openmm_err']:.4f}   z = {c['z']:+.2f}")
    return "\n".join(lines)


def reference_main(config_path: str | Path, out: str | Path | None = None,
                   quick: bool = False) -> dict[str, Any]:
    """``coarseflow reference CONFIG [-o OUT]``: load the config, run, write, print the table.

    out defaults to ``<config stem>_reference.npz`` beside the config; ``quick`` replaces the
    settings by :data:`QUICK_SETTINGS` (a smoke test of seconds). Returns the summary.
    """
    from coarseflow.config import load_config

    config_path = Path(config_path)
    config = load_config(config_path)
    settings = QUICK_SETTINGS if quick else None
    out = Path(out) if out is not None else config_path.with_name(
        f"{config_path.stem}_reference.npz")
    summary = run_reference(config, out, settings=settings)
    print(summary["table"])
    print(f"written: {out}")
    return summary


def load_reference(path: str | Path | None = None) -> dict[str, Any]:
    """The arrays of a reference npz (default: the shipped alanine dipeptide reference), with
    the JSON strings (settings, target, openmm_check) decoded and 0-d arrays as scalars."""
    if path is None:
        path = resources.files("coarseflow") / "data" / SHIPPED_REFERENCE
    with np.load(str(path), allow_pickle=False) as data:
        out: dict[str, Any] = {}
        for key in data.files:
            value = data[key]
            if key in ("settings", "target", "openmm_check"):
                out[key] = json.loads(str(value))
            elif value.ndim == 0:
                out[key] = value.item()
            else:
                out[key] = value
    return out


__all__ = [
    "COMPARED",
    "NPZ_KEYS",
    "QUICK_SETTINGS",
    "SHIPPED_REFERENCE",
    "ReferenceSettings",
    "block_mean",
    "format_summary",
    "load_reference",
    "openmm_check",
    "openmm_minimise",
    "population_statistics",
    "reference_main",
    "run_reference",
]
