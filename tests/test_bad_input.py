"""Bad input refused with one line and exit status 2, before anything is trained or written:
settings out of range (from Python as from TOML), config files that are not UTF-8 TOML tables,
command-line values, broken PDB files and force-field files that carry code.
(Generated bad inputs: tests/test_fuzz_bad_input.py.)"""

import math
from pathlib import Path

import numpy as np
import pytest

from coarseflow import checks
from coarseflow.cli import main
from coarseflow.config import load_config
from coarseflow.errors import ConfigError
from coarseflow.forcefield.trust import allow_forcefield_scripts, check_forcefield_files
from coarseflow.model.conditional import ConditionalSettings
from coarseflow.model.flow import FlowSettings
from coarseflow.predict.settings import PredictionSettings
from coarseflow.samplers.conditional import ChainSettings
from coarseflow.tempering.adaptive import Adaptive
from coarseflow.tempering.schedules import Explicit, Geometric, Linear
from coarseflow.training.settings import TrainingSettings

ALA2_PDB = Path(__file__).parents[1] / "src" / "coarseflow" / "data" / "alanine_dipeptide.pdb"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("coarseflow: error: ") and "Traceback" not in err[0]
    return err[0]


def test_checks_helpers():
    assert checks.integer("k", np.int64(3), 1) == 3
    assert checks.number("k", 2, 0.0) == 2.0
    for value in (True, 3.0, "3", None, [3]):
        with pytest.raises(ConfigError, match=r"^k: expected an integer > 0, got "):
            checks.integer("k", value, 1)
    with pytest.raises(ConfigError, match=r"^k: expected an integer from 1 to 100000000, got"):
        checks.integer("k", 10**12, 1)
    for value in (math.nan, math.inf, -math.inf, 0.0, False, "1"):
        with pytest.raises(ConfigError, match=r"^k: expected a finite number > 0, got "):
            checks.number("k", value, 0.0)
    with pytest.raises(ConfigError, match=r"^k: expected a number in \[0, 1\), got 1.0$"):
        checks.number("k", 1.0, 0.0, 1.0, low_open=False, high_open=True)
    with pytest.raises(ConfigError, match=r"^--seed: expected an integer from 0 to 4294967295"):
        checks.seed("--seed", 2**32)


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: TrainingSettings(batch_size=12.5), r"\[training\] batch_size"),
        (lambda: TrainingSettings(batch_size=True), r"\[training\] batch_size"),
        (lambda: TrainingSettings(learning_rate=math.inf), r"\[training\] learning_rate"),
        (lambda: TrainingSettings(forward_kl_weight=math.inf), r"\[training\] forward_kl_weight"),
        (lambda: TrainingSettings(lr_final_fraction=math.nan), r"\[training\] lr_final_fraction"),
        (lambda: TrainingSettings(force_clip=math.inf), r"\[training\] force_clip"),
        (lambda: TrainingSettings(skip_window=5), r"\[training\] skip_window"),
        (lambda: TrainingSettings(skip_factor=math.inf), r"\[training\] skip_factor"),
        (lambda: TrainingSettings(seed=-1), r"\[training\] seed"),
        (lambda: FlowSettings(interval=math.inf), r"\[model\] interval"),
        (lambda: FlowSettings(knots=8.0), r"\[model\] knots"),
        (lambda: FlowSettings(seed=2**40), r"\[model\] seed"),
        (lambda: FlowSettings(uniform_angles=1), r"\[model\] uniform_angles"),
        (lambda: ConditionalSettings(interval=math.nan), r"\[conditional\] interval"),
        (lambda: ConditionalSettings(seed=-3), r"\[conditional\] seed"),
        (lambda: ChainSettings(step_size=math.inf), r"\[chains\] step_size"),
        (lambda: ChainSettings(n_burn=10**9), r"\[chains\] n_burn"),
        (lambda: PredictionSettings(n_samples=10**12), r"\[prediction\] n_samples"),
        (lambda: PredictionSettings(ais_step_size=math.nan), r"\[prediction\] ais_step_size"),
        (lambda: PredictionSettings(minimize_steps=2.5), r"\[prediction\] minimize_steps"),
        (lambda: Explicit((1e-13, 1.0)), r"\[tempering\] betas\[0\]"),
        (lambda: Explicit((0.5, 0.5 + 1e-11, 1.0)), r"\[tempering\] betas: expected values at"),
        (lambda: Explicit((0.5, math.nan, 1.0)), r"\[tempering\] betas\[1\]"),
        (lambda: Linear(beta0=1e-9), r"\[tempering\] beta0"),
        (lambda: Geometric(beta0=0.999999, n_betas=100_000), r"\[tempering\] n_betas"),
        (lambda: Linear(n_betas=10**6), r"\[tempering\] n_betas"),
        (lambda: Adaptive(min_step=1e-13), r"\[tempering\] min_step"),
        (lambda: Adaptive(max_kl_increase=math.inf), r"\[tempering\] max_kl_increase"),
    ],
)
def test_settings_refuse_out_of_range_values_from_python(make, key):
    with pytest.raises(ConfigError, match="^" + key) as err:
        make()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ('[target]\nkind = "double_well"\n'.encode("utf-16"), "not UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text"),
        (b'[target]\nkind = "double_well"\n\x00\x00', "NUL bytes"),
        (b'[target]\nkind = "double_well"\n\xe9t\xe9\n', "not UTF-8 text (byte 0xe9"),
        (b"target = 5\n", "[target]: expected a table"),
        (b'model = "big"\n[target]\nkind = "double_well"\n', "[model]: expected a table"),
        (b'[[target]]\nkind = "double_well"\n', "[target]: expected a table"),
        (b"[target]\nkind = []\n", "[target] kind: expected a string"),
        (b"[target]\nkind = 5\n", "[target] kind: expected a string"),
        (
            b'[target]\nkind = "double_well"\n[reference]\njunk = 1\n',
            "[reference] unknown key 'junk'",
        ),
        (b'[target]\nkind = "double_well"\n[reference]\nn_steps = -5\n', "[reference] n_steps"),
        (b'[target]\nkind = "double_well"\n[model]\ninterval = inf\n', "[model] interval"),
        (
            b'[target]\nkind = "double_well"\n[training]\nlearning_rate = inf\n',
            "[training] learning_rate",
        ),
        (
            b'[target]\nkind = "double_well"\n[training]\nforward_kl_weight = inf\n',
            "[training] forward_kl_weight",
        ),
        (
            b'[target]\nkind = "double_well"\n[tempering]\nkind = "explicit"\n'
            b"betas = [1e-13, 1.0]\n",
            "[tempering] betas[0]",
        ),
        (
            b'[target]\nkind = "double_well"\n[tempering]\nkind = "explicit"\nbetas = [0.5, 0.2]\n',
            "[tempering] betas",
        ),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, capsys, data, fragment):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(data)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert fragment in one_line(capsys)
    assert not out.exists()


def test_a_utf8_bom_is_accepted(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b'\xef\xbb\xbf[target]\nkind = "double_well"\n')
    assert load_config(cfg).target == {"kind": "double_well"}


@pytest.fixture
def plain_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    return path


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "{cfg}", "--out", ""], "--out: expected a path, got ''"),
        (["train", "{cfg}", "--out", "/dev/null"], "exists and is not a directory"),
        (["train", "{cfg}", "--out", "{file}"], "exists and is not a directory"),
        (["train", "{cfg}", "--out", "{file}/run"], "is not a directory"),
        (
            ["train", "{cfg}", "--out", "{tmp}/r", "--resume", "--init", "{tmp}"],
            "--resume and --init: choose one",
        ),
        (["demo", "--out", "{file}"], "exists and is not a directory"),
        (["sample", "{tmp}", "-o", ""], "-o: expected a path, got ''"),
        (["sample", "{tmp}", "-o", "{file}/x.npz"], "is not a directory"),
        (["sample", "{tmp}", "-o", "{tmp}"], "is a directory; expected a file name ending in .npz"),
        (["sample", "{tmp}", "-o", "{tmp}/x.txt"], "expected a file name ending in .npz"),
        (["sample", "{tmp}", "--seed", str(2**64)], "--seed: expected an integer from 0 to"),
        (["sample", "{tmp}", "--seed", "-1"], "--seed: expected an integer from 0 to"),
        (["sample", "{tmp}", "--seed", "2**64"], "argument --seed: invalid int value"),
        (["sample", "{tmp}", "--beta", "nan"], "--beta: expected a number in (0, 1], got nan"),
        (["sample", "{tmp}", "--beta", "inf"], "--beta: expected a number in (0, 1], got inf"),
        (["sample", "{tmp}", "--beta", "0"], "--beta: expected a number in (0, 1]"),
        (["sample", "{tmp}", "--beta", "1.5"], "--beta: expected a number in (0, 1]"),
        (["sample", "{tmp}", "-n", "1e12"], "-n: expected an integer from 1 to 100000000"),
        (["sample", "{tmp}", "-n", "0"], "-n: expected an integer > 0"),
        (["sample", "{tmp}", "-n", "2.5"], "argument -n: expected an integer, got '2.5'"),
        (["evaluate", "{tmp}", "-n", "-3"], "-n: expected an integer > 0"),
        (
            ["reference", "{cfg}", "-o", "{tmp}/x.txt"],
            "-o {tmp}/x.txt: expected a file name ending",
        ),
        (["reference", "{cfg}", "-o", "/dev/null"], "exists and is not a regular file"),
        (["train"], "the following arguments are required: config"),
        (["frobnicate"], "invalid choice"),
        (["sample", "{tmp}", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_command_lines_are_one_line(tmp_path, plain_file, capsys, argv, fragment):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[target]\nkind = "double_well"\n')
    names = {"cfg": str(cfg), "file": str(plain_file), "tmp": str(tmp_path)}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([a.format(**names) for a in argv]) == 2
    assert fragment.format(**names) in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert plain_file.read_text() == "mine\n"


def molecule_config(tmp_path, pdb, forcefield=None) -> Path:
    cfg = tmp_path / "mol.toml"
    ff = (
        ""
        if forcefield is None
        else "forcefield = [" + ", ".join(f'"{f}"' for f in forcefield) + "]\n"
    )
    cfg.write_text(f'[target]\nkind = "molecule"\npdb = "{pdb}"\n{ff}')
    return cfg


def broken_pdb(tmp_path, how: str) -> Path:
    lines = ALA2_PDB.read_text().splitlines()
    atoms = [i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM"))]
    if how == "empty":
        lines = []
    elif how == "nan":
        line = lines[atoms[3]]
        lines[atoms[3]] = line[:30] + f"{'nan':>8}" + line[38:]
    elif how == "coincident":
        a, b = lines[atoms[0]], lines[atoms[5]]
        lines[atoms[5]] = b[:30] + a[30:54] + b[54:]
    path = tmp_path / f"{how}.pdb"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "how, fragment",
    [
        ("empty", "contains no atoms"),
        ("nan", "atom 4 (H3 of ACE 1) has a coordinate that is not a finite number"),
        ("coincident", "atoms 1 (CH3 of ACE 1) and 6 (O of ACE 1) are 0 nm apart"),
    ],
)
def test_broken_pdb_files_are_refused_before_a_run_directory_exists(
    tmp_path, capsys, how, fragment
):
    pytest.importorskip("openmm")
    pdb = broken_pdb(tmp_path, how)
    out = tmp_path / "run"
    assert main(["train", str(molecule_config(tmp_path, pdb)), "--out", str(out)]) == 2
    line = one_line(capsys)
    assert fragment in line and str(pdb) in line
    assert not out.exists()


SCRIPT_XML = """<ForceField>
 <{tag}>
__import__("pathlib").Path({marker!r}).write_text("ran")
 </{tag}>
</ForceField>
"""


def script_file(tmp_path, tag="InitializationScript") -> tuple[Path, Path]:
    marker = tmp_path / "script_ran"
    xml = tmp_path / "evil.xml"
    xml.write_text(SCRIPT_XML.format(tag=tag, marker=str(marker)))
    return xml, marker


@pytest.mark.parametrize("command", ["train", "reference"])
def test_forcefield_scripts_are_refused(tmp_path, capsys, command):
    pytest.importorskip("openmm")
    xml, marker = script_file(tmp_path)
    cfg = molecule_config(
        tmp_path, "alanine_dipeptide", ["amber99sbildn.xml", "amber99_obc.xml", str(xml)]
    )
    out = tmp_path / ("run" if command == "train" else "ref.npz")
    flag = "--out" if command == "train" else "-o"
    assert main([command, str(cfg), flag, str(out)]) == 2
    line = one_line(capsys)
    assert f"force field {xml}: carries an <InitializationScript>" in line
    assert "--allow-forcefield-scripts" in line
    assert not marker.exists() and not out.exists()


def test_scripts_in_included_files_and_create_system_scripts_are_refused(tmp_path):
    pytest.importorskip("openmm")
    xml, marker = script_file(tmp_path, tag="Script")
    wrapper = tmp_path / "wrapper.xml"
    wrapper.write_text('<ForceField>\n <Include file="evil.xml"/>\n</ForceField>\n')
    with pytest.raises(ConfigError, match=r"evil.xml: carries a <Script>"):
        check_forcefield_files(["amber99sbildn.xml", str(wrapper)])
    check_forcefield_files(["amber99sbildn.xml", "amber99_obc.xml"])  # OpenMM's own: trusted
    assert not marker.exists()


def test_allowed_forcefield_scripts_run(tmp_path):
    pytest.importorskip("openmm")
    from coarseflow.forcefield import build_system

    xml, marker = script_file(tmp_path)
    allow_forcefield_scripts(True)
    try:
        build_system(ALA2_PDB, ["amber99sbildn.xml", str(xml)])
    finally:
        allow_forcefield_scripts(False)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(
    ("key", "value"),
    [("temperature", 1e9), ("temperature", 0.0), ("box_margin", 50.0), ("box_margin", "wide")],
)
def test_molecule_temperature_and_box_are_range_checked(key, value):
    from coarseflow.targets.molecule import Molecule

    with pytest.raises(ConfigError, match=rf"^\[target\] {key}: expected"):
        Molecule(**{key: value})
