"""Reference sampler: BAOAB moments, replica exchange on a double well, settings, the alanine
dipeptide run and the shipped reference file."""

from __future__ import annotations

import json
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.config import settings_from_table
from coarseflow.errors import ConfigError
from coarseflow.samplers.molecular_dynamics import MDState, baoab_step, md_init
from coarseflow.samplers.replica_exchange import run_replica_exchange, temperature_ladder
from coarseflow.samplers.replica_swap import exchange
from coarseflow.units import MOLAR_GAS_CONSTANT

# ---- BAOAB -------------------------------------------------------------------------------------


def test_baoab_harmonic_moments():
    """U = sum k_i x_i^2 / 2 with masses m_i: <x_i^2> = kT / k_i (exact for BAOAB at any stable
    step) and <v_i^2> = kT / m_i (up to (omega dt / 2)^2 = 0.25% here)."""
    masses = jnp.array([1.0, 4.0, 16.0])
    omega = jnp.array([1.0, 0.5, 2.0])
    k = masses * omega**2
    kT, dt, n_chains, n_burn, n_steps = 1.5, 0.05, 512, 500, 4000

    def energy(x):
        return 0.5 * jnp.sum(k * x * x)

    def step(state, key):
        state = baoab_step(energy, state, key, masses=masses, kT=kT, time_step=dt, friction=1.0)
        return state, (state.positions**2, state.velocities**2)

    @jax.jit
    def run(key):
        k0, k1, k2 = jax.random.split(key, 3)
        x0 = jax.random.normal(k0, (n_chains, 3)) * jnp.sqrt(kT / k)
        v0 = jax.random.normal(k1, (n_chains, 3)) * jnp.sqrt(kT / masses)
        state = jax.vmap(md_init, in_axes=(None, 0, 0))(energy, x0, v0)
        keys = jax.random.split(k2, n_burn + n_steps)
        chain_step = jax.vmap(step, in_axes=(0, 0))

        def scan_step(s, key):
            return chain_step(s, jax.random.split(key, n_chains))

        state, _ = jax.lax.scan(scan_step, state, keys[:n_burn])
        _, (x2, v2) = jax.lax.scan(scan_step, state, keys[n_burn:])
        return x2.mean(axis=0), v2.mean(axis=0)  # per chain (n_chains, 3)

    x2, v2 = (np.asarray(a) for a in run(jax.random.key(1)))
    for measured, exact in ((x2, kT / np.asarray(k)), (v2, kT / np.asarray(masses))):
        mean = measured.mean(axis=0)
        err = measured.std(axis=0, ddof=1) / np.sqrt(n_chains)
        assert np.all(err < 0.03 * exact)  # the test has power
        assert np.all(np.abs(mean - exact) < 4 * err + 0.003 * exact), (mean, exact, err)


def test_baoab_undoes_non_finite_step():
    def energy(x):
        return jnp.where(x[0] > 0.5, jnp.nan, 0.5 * jnp.sum(x * x))

    state = md_init(energy, jnp.array([0.49]), jnp.array([100.0]))
    new = baoab_step(
        energy, state, jax.random.key(0), masses=jnp.ones(1), kT=1.0, time_step=0.01, friction=1.0
    )
    assert float(new.positions[0]) == pytest.approx(0.49)
    assert int(new.n_reverted) == 1
    assert np.isfinite(float(new.energy))


# ---- replica exchange --------------------------------------------------------------------------


def test_exchange_swaps_and_rescales_velocities():
    """Rung energies far in favour of swapping: pair (0, 1) swaps at parity 0, velocities scale by
    sqrt(T_new / T_old); rung 2 is untouched; at parity 1 pair (1, 2) is tried instead."""
    kT = jnp.array([1.0, 2.0, 4.0])
    positions = jnp.arange(3.0).reshape(3, 1, 1)  # (R, C, d)
    md = MDState(
        positions=positions,
        velocities=jnp.ones((3, 1, 1)),
        energy=jnp.array([[100.0], [0.0], [-100.0]]),
        forces=jnp.zeros((3, 1, 1)),
        n_reverted=jnp.zeros((3, 1), jnp.int32),
    )
    new, prob, attempts = exchange(md, jax.random.key(0), kT=kT, parity=0)
    np.testing.assert_allclose(np.asarray(new.positions).ravel(), [1.0, 0.0, 2.0])
    np.testing.assert_allclose(
        np.asarray(new.velocities).ravel(), [np.sqrt(1 / 2), np.sqrt(2 / 1), 1.0]
    )
    np.testing.assert_allclose(np.asarray(new.energy).ravel(), [0.0, 100.0, -100.0])
    np.testing.assert_allclose(np.asarray(prob), [1.0, 0.0])
    np.testing.assert_allclose(np.asarray(attempts), [1.0, 0.0])
    # parity 1: pair (1, 2); log acceptance (1/2 - 1/4)(0 - (-100)) > 0 -> swap
    new, prob, attempts = exchange(md, jax.random.key(0), kT=kT, parity=1)
    np.testing.assert_allclose(np.asarray(new.positions).ravel(), [0.0, 2.0, 1.0])
    np.testing.assert_allclose(np.asarray(attempts), [0.0, 1.0])
    # an unfavourable pair is accepted with probability exp((b0 - b1)(U0 - U1))
    md_bad = md._replace(energy=jnp.array([[0.0], [1.0], [2.0]]))
    _, prob, _ = exchange(md_bad, jax.random.key(0), kT=kT, parity=0)
    assert float(prob[0]) == pytest.approx(np.exp((1.0 - 0.5) * (0.0 - 1.0)))


def _double_well(x):
    """U(x) = 8 (x^2 - 1)^2 + 0.5 x (in units of the lowest kT): barrier ~ 8 kT."""
    return jnp.sum(8.0 * (x * x - 1.0) ** 2 + 0.5 * x)


def _exact_left_population(kT: float) -> float:
    x = np.linspace(-3.0, 3.0, 200_001)
    w = np.exp(-(8.0 * (x * x - 1.0) ** 2 + 0.5 * x) / kT)
    return float(w[x < 0].sum() / w.sum())


def test_replica_exchange_double_well_beats_plain_langevin():
    """Every chain starts in the left well. At the lowest temperature plain Langevin dynamics
    stays there; replica exchange (6 rungs, kT 1..10) recovers the exact left-well population
    (quadrature) within its between-chain error."""
    kT_min = 1.0
    exact = _exact_left_population(kT_min)
    ladder_kT = temperature_ladder(kT_min, 10.0, 6)
    kw = dict(
        n_chains=32,
        time_step=0.01,
        friction=1.0,
        n_steps=10_000,
        burn_in_steps=1000,
        record_every=10,
        exchange_every=10,
        progress=False,
    )

    def left_population(temperatures_kT, key):
        result = run_replica_exchange(
            _double_well,
            lambda x: {"x": x[0]},
            jnp.array([-1.0]),
            jnp.ones(1),
            np.asarray(temperatures_kT) / MOLAR_GAS_CONSTANT,
            key=key,
            **kw,
        )
        per_chain = (result.records["x"] < 0).mean(axis=0)  # (C,)
        return per_chain.mean(), per_chain.std(ddof=1) / np.sqrt(per_chain.size), result

    p_re, err_re, result = left_population(ladder_kT, jax.random.key(0))
    p_plain, _, plain = left_population(ladder_kT[:1], jax.random.key(1))

    assert plain.swap_acceptance.shape == (0,)
    assert result.swap_acceptance.shape == (5,)
    assert np.all((result.swap_acceptance > 0.05) & (result.swap_acceptance < 0.99))
    assert result.n_energy_evals == 6 * 32 * (1 + 11_000)
    assert err_re < 0.03
    assert abs(p_re - exact) < 4 * err_re + 0.005, (p_re, err_re, exact)
    assert abs(p_plain - exact) > 0.15  # plain Langevin is stuck in the left well
    assert abs(p_re - exact) < 0.25 * abs(p_plain - exact)


def test_temperature_ladder_is_geometric():
    ladder = temperature_ladder(300.0, 600.0, 4)
    np.testing.assert_allclose(ladder, 300.0 * 2.0 ** (np.arange(4) / 3))
    np.testing.assert_allclose(temperature_ladder(300.0, 600.0, 1), [300.0])
    with pytest.raises(ValueError, match="t_min < t_max"):
        temperature_ladder(300.0, 200.0, 3)


# ---- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, key",
    [
        ({"n_replicas": 0}, "n_replicas"),
        ({"n_chains": 2.5}, "n_chains"),
        ({"t_max": "hot"}, "t_max"),
        ({"time_step_ps": 0.01}, "time_step_ps"),
        ({"friction_per_ps": -1.0}, "friction_per_ps"),
        ({"n_steps": 1001, "record_every": 10}, "n_steps"),
        ({"burn_in_steps": 15, "record_every": 10}, "burn_in_steps"),
        ({"n_blocks": 1}, "n_blocks"),
        ({"openmm_platform": "CUDA"}, "openmm_platform"),
        ({"dtype": "float16"}, "dtype"),
        ({"n_replica": 4}, "n_replica"),
    ],
)
def test_reference_settings_errors_name_the_key(table, key):
    from coarseflow.reference import ReferenceSettings

    with pytest.raises(ConfigError, match=rf"\[reference\].*{key}"):
        settings_from_table(ReferenceSettings, table, "reference")


def test_reference_settings_defaults_are_valid():
    from coarseflow.analysis.basin_statistics import N_BLOCKS
    from coarseflow.reference import QUICK_SETTINGS, ReferenceSettings

    settings = settings_from_table(ReferenceSettings, {"n_chains": 4}, "reference")
    assert settings.n_chains == 4 and settings.time_step_ps == 0.001
    # evaluation's block count for a reference file that does not name its own
    assert ReferenceSettings().n_blocks == N_BLOCKS
    assert QUICK_SETTINGS.n_steps < 1000


def test_reference_populations_errors():
    """Ladders 0, 1 all in alpha_R, ladders 2, 3 all in C5 (time-major frames): populations 1/2
    each, the between-ladder error std([1, 1, 0, 0], ddof=1) / sqrt(4); every time block looks
    alike, so the block error is 0; the quoted error is the larger. One ladder drifting from
    alpha_R to C5: no between-ladder error, the block one quoted. Frames out of time-major
    order, or more blocks than records, are refused."""
    from coarseflow.analysis.basin_statistics import reference_populations
    from coarseflow.analysis.ramachandran import GENERAL

    def angles(in_alpha_r):  # (phi, psi) radians at alpha_R's centre, else at C5's
        phi = np.where(in_alpha_r, -70.0, -150.0)
        psi = np.where(in_alpha_r, -40.0, 155.0)
        return np.radians(phi), np.radians(psi)

    chain = np.tile(np.arange(4), 40)  # 40 records of 4 ladders
    stats = reference_populations(GENERAL, *angles(chain < 2), chain, n_blocks=4)
    pair = [GENERAL.names.index("alpha_R"), GENERAL.names.index("C5")]
    assert stats.populations[pair] == pytest.approx([0.5, 0.5])
    assert stats.populations.sum() == pytest.approx(1.0, abs=1e-12)
    expected = np.std([1, 1, 0, 0], ddof=1) / 2
    assert stats.err_chains[pair] == pytest.approx([expected, expected])
    assert stats.err_blocks[pair] == pytest.approx([0.0, 0.0])
    assert stats.err[pair] == pytest.approx([expected, expected])

    one = reference_populations(GENERAL, *angles(np.arange(40) < 20), np.zeros(40, int), 4)
    assert np.all(np.isnan(one.err_chains))
    np.testing.assert_array_equal(one.err, one.err_blocks)
    assert one.err[pair] == pytest.approx([expected, expected])  # blocks 1, 1, 0, 0 in alpha_R
    with pytest.raises(ValueError, match="time-major"):
        reference_populations(GENERAL, *angles(chain < 2), np.sort(chain))
    with pytest.raises(ValueError, match="n_blocks"):
        reference_populations(GENERAL, *angles(chain < 2), chain, n_blocks=41)


def test_block_mean():
    from coarseflow.reference import block_mean

    values = np.arange(40.0)[:, None] * np.ones((1, 4))
    mean, err = block_mean(values, values >= 0, n_blocks=4)
    assert mean == pytest.approx(19.5)
    assert err == pytest.approx(np.std([4.5, 14.5, 24.5, 34.5], ddof=1) / 2)


# ---- alanine dipeptide -------------------------------------------------------------------------


def test_short_alanine_dipeptide_run(tmp_path):
    pytest.importorskip("openmm")
    pytest.importorskip("mdtraj")
    from coarseflow.reference import NPZ_KEYS, QUICK_SETTINGS, load_reference, run_reference

    config = {"target": {"kind": "molecule", "pdb": "alanine_dipeptide", "temperature": 300.0}}
    out = tmp_path / "ref.npz"
    summary = run_reference(config, out, progress=False, settings=QUICK_SETTINGS)
    data = load_reference(out)
    assert set(data) == set(NPZ_KEYS)
    frames = QUICK_SETTINGS.n_chains * QUICK_SETTINGS.n_steps // QUICK_SETTINGS.record_every
    for key in ("phi", "psi", "rg", "energy", "chain", "time_ps", "cis", "inverted"):
        assert data[key].shape == (frames,), key
    for key in ("phi", "psi", "rg", "energy"):
        assert np.all(np.isfinite(data[key])), key
    assert np.all(np.abs(data["phi"]) <= np.pi + 1e-6)
    assert np.all((data["rg"] > 0.15) & (data["rg"] < 0.5))
    assert np.all((data["energy"] > -250.0) & (data["energy"] < 0.0))  # kJ/mol at ~300 K
    assert data["populations"].sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(data["temperatures"], [300.0, 400.0])
    assert data["swap_acceptance"].shape == (1,)
    assert data["settings"]["n_steps"] == QUICK_SETTINGS.n_steps
    assert data["openmm_check"]["n_steps"] == QUICK_SETTINGS.openmm_check_steps
    assert data["n_energy_evals"] == summary["n_energy_evals"] == 4 * (1 + 240)
    # one residue of the general class: its record is the npz's populations, printed once
    (residue,) = summary["residues"]
    assert residue["residue"] == "ALA2" and residue["class"] == "general"
    for key in ("populations", "populations_err", "populations_err_chains"):
        assert residue[key] == summary[key]
        assert list(residue[key].values()) == pytest.approx(data[key], nan_ok=True)
    assert "ALA2 (general residue basins)" in summary["table"]
    assert "npz's populations" not in summary["table"] and "alpha_R" in summary["table"]


def test_the_replica_exchange_is_on_disk_before_the_openmm_check(tmp_path, monkeypatch):
    """Stopped during the OpenMM trajectory (hours on a larger peptide), a reference keeps its
    replica exchange: the npz is written before the check, with an empty check."""
    pytest.importorskip("openmm")
    from coarseflow.reference import QUICK_SETTINGS, command, load_reference, run_reference

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "openmm_check", stopped)
    config = {"target": {"kind": "molecule", "pdb": "alanine_dipeptide", "temperature": 300.0}}
    out = tmp_path / "ref.npz"
    with pytest.raises(KeyboardInterrupt):
        run_reference(config, out, progress=False, settings=QUICK_SETTINGS)
    data = load_reference(out)
    assert data["openmm_check"] == {} and np.all(np.isfinite(data["phi"]))
    assert data["n_energy_evals"] == 4 * (1 + 240)


def test_short_peptide_run_has_every_residues_populations(tmp_path, monkeypatch):
    """ACE-GLY-ALA-NME: the summary has GLY2 in the glycine basins and ALA3 in the general
    ones, each recomputed from the npz's frames (basin_statistics.reference_populations); the
    npz keeps GLY2 in the general basins, printed apart."""
    pytest.importorskip("openmm")
    pytest.importorskip("mdtraj")
    pytest.importorskip("PeptideBuilder")
    import dataclasses

    from coarseflow.analysis import ramachandran as rama
    from coarseflow.analysis.basin_statistics import reference_populations
    from coarseflow.reference import QUICK_SETTINGS, load_reference, run_reference
    from coarseflow.targets.molecule import peptide

    monkeypatch.setenv(peptide.CACHE_ENV, str(tmp_path / "cache"))
    config = {"target": {"kind": "molecule", "sequence": "GA", "temperature": 300.0}}
    settings = dataclasses.replace(QUICK_SETTINGS, openmm_check_steps=0)
    summary = run_reference(config, tmp_path / "ga.npz", progress=False, settings=settings)
    data = load_reference(tmp_path / "ga.npz")
    assert data["phi"].shape == (40, 2) and list(data["basins"]) == list(rama.GENERAL.names)
    residues = summary["residues"]
    assert [(r["residue"], r["class"]) for r in residues] == [
        ("GLY2", "glycine"),
        ("ALA3", "general"),
    ]
    for k, r in enumerate(residues):
        basins = rama.BASIN_SETS[r["class"]]
        stats = reference_populations(
            basins, data["phi"][:, k], data["psi"][:, k], data["chain"], 2
        )
        assert list(r["populations"]) == list(basins.names)
        np.testing.assert_array_equal(list(r["populations"].values()), stats.populations)
        np.testing.assert_array_equal(list(r["populations_err"].values()), stats.err)
    first = reference_populations(
        rama.GENERAL, data["phi"][:, 0], data["psi"][:, 0], data["chain"], 2
    )
    np.testing.assert_array_equal(data["populations_err"], first.err)
    table = summary["table"]
    for title in (
        "GLY2 in the general basins (the npz's populations)",
        "GLY2 (glycine residue basins)",
        "ALA3 (general residue basins)",
    ):
        assert title in table
    assert "beta_PR" in table
    # an OpenMM check of several residues is said to be a trajectory's, not the force field's
    from coarseflow.reference.command import MANY_RESIDUES_CHECK, format_summary

    c = {"jax": 1.0, "jax_err": 0.1, "openmm": 2.0, "openmm_err": 0.1, "z": 7.1}
    check = {"n_steps": 100, "steps_per_s": 10.0, "comparison": {"rg": c}}
    assert MANY_RESIDUES_CHECK in format_summary({**summary, "openmm_check": check})
    one = {**summary, "openmm_check": check, "residues": summary["residues"][:1]}
    assert "z = +7.10" in format_summary(one) and MANY_RESIDUES_CHECK not in format_summary(one)


def test_reference_reads_the_field_alanine_dipeptide():
    """pdb = "alanine_dipeptide_implicit" (openmmtools' prmtop, OBC1) needs no forcefield key."""
    pytest.importorskip("openmm")
    pytest.importorskip("mdtraj")
    from coarseflow.reference import ReferenceMolecule

    mol = ReferenceMolecule({"kind": "molecule", "pdb": "alanine_dipeptide_implicit"})
    assert mol.pdb_path.name == "alanine_dipeptide_implicit.prmtop" and mol.forcefield is None
    assert "CustomGBForce" in {type(f).__name__ for f in mol.system.getForces()}
    assert mol.phi_atoms.tolist() == [[4, 6, 8, 14]] and mol.minimized_energy < -138.97


def test_reference_rejects_a_toy_target(tmp_path):
    from coarseflow.reference import run_reference

    with pytest.raises(ConfigError, match="kind"):
        run_reference({"target": {"kind": "double_well"}}, tmp_path / "x.npz", progress=False)


# ---- the shipped reference ---------------------------------------------------------------------


def test_shipped_reference_loads_with_sane_populations():
    from coarseflow.reference import NPZ_KEYS, SHIPPED_REFERENCE, load_reference

    path = resources.files("coarseflow") / "data" / SHIPPED_REFERENCE
    assert path.is_file()
    assert path.stat().st_size <= 3 * 2**20
    data = load_reference()
    assert set(data) == set(NPZ_KEYS)
    names = list(data["basins"])
    pops = dict(zip(names, data["populations"], strict=True))
    assert sum(pops.values()) == pytest.approx(1.0, abs=1e-9)
    assert pops["alpha_R"] + pops["C7eq/PII"] + pops["C5"] > 0.85
    assert 0.0 < pops["alpha_L"] < 0.1  # found by replica exchange, a minor basin
    assert np.all(np.isfinite(data["populations_err"])) and np.all(data["populations_err"] >= 0)
    assert np.all(data["populations_err"][:3] < 0.05)
    n = data["phi"].shape[0]
    assert n >= 10_000
    for key in ("psi", "rg", "energy", "chain", "time_ps"):
        assert data[key].shape == (n,)
    assert data["temperature"] == 300.0
    assert np.all((data["swap_acceptance"] > 0) & (data["swap_acceptance"] < 1))
    assert json.loads(json.dumps(data["settings"]))["time_step_ps"] == 0.001
    comparison = data["openmm_check"]["comparison"]
    assert abs(comparison["energy"]["z"]) < 4 and abs(comparison["rg"]["z"]) < 4


@pytest.mark.parametrize("name", ["alanine_dipeptide", "alanine_dipeptide_implicit"])
def test_shipped_reference_populations_are_recomputed_exactly(name):
    """Each shipped reference's quoted populations and errors from its frames and chain array
    with the general basins and its own n_blocks (basin_statistics.reference_populations, the
    rule for every residue); any basin set gets one error per name."""
    from coarseflow.analysis import ramachandran as rama
    from coarseflow.analysis.basin_statistics import reference_populations
    from coarseflow.reference import load_reference
    from coarseflow.targets.molecule.registry import builtin_reference

    ref = load_reference(builtin_reference(name))
    frames = (ref["phi"], ref["psi"], ref["chain"], ref["settings"]["n_blocks"])
    stats = reference_populations(rama.GENERAL, *frames)
    np.testing.assert_array_equal(stats.populations, ref["populations"])
    np.testing.assert_array_equal(stats.err_chains, ref["populations_err_chains"])
    np.testing.assert_array_equal(stats.err_blocks, ref["populations_err_blocks"])
    np.testing.assert_array_equal(stats.err, ref["populations_err"])
    for basins in (rama.GLYCINE, rama.PROLINE, rama.PRE_PROLINE):
        err = reference_populations(basins, *frames).err
        assert err.shape == (len(basins.names),) and np.all(np.isfinite(err))


def test_evaluation_recomputes_the_shipped_references_errors_exactly():
    """MoleculeReport's reference errors of alanine dipeptide, from the shipped file's frames,
    chain and n_blocks (the [target] reference's arrays), are its stored populations_err."""
    pytest.importorskip("openmm")
    pytest.importorskip("mdtraj")
    from coarseflow.analysis.molecule_report import MoleculeReport
    from coarseflow.reference import load_reference
    from coarseflow.targets.molecule import Molecule

    molecule = Molecule(reference="alanine_dipeptide")
    ref = molecule.info.reference
    assert ref["chain"].shape == ref["phi"][:, 0].shape and int(ref["n_blocks"]) == 10
    errors = MoleculeReport(molecule)._reference_errors(ref, 0)
    np.testing.assert_array_equal(errors, load_reference()["populations_err"])
