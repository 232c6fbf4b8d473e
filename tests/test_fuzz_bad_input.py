"""Generated bad input (hypothesis): every bad config value, key, section, file and command-line
value gets one line naming it and exit status 2, at parse time.

The CLI runs in-process (``coarseflow.cli.main``); training, sampling, evaluation and the
reference sampler are replaced by a function that fails the test, so a bad input that got past
the checks would be seen, not run. Counts (examples per test) are in docs/reliability.md.
"""

import contextlib
import io
import itertools
import json
import math
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coarseflow.cli import main
from coarseflow.config import SECTIONS

# 100 examples per test, the same every run (fast: CI); the slow test below reruns this file
# with COARSEFLOW_FUZZ_EXAMPLES=1000 and fresh random inputs.
EXAMPLES = int(os.environ.get("COARSEFLOW_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=EXAMPLES == 100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_files = itertools.count()

# ---- what each key accepts --------------------------------------------------------------------
# ("int", low, high), ("num", low, high, low_open, high_open), ("choice", options), ("bool",)

INT_MAX = 10**8
SIZE_MAX = 100_000
SEED = ("int", 0, 2**32 - 1)
STEPS = 10**12  # [reference] counts

SPEC = {
    "model": {
        "knots": ("int", 2, SIZE_MAX),
        "interval": ("num", 0.0, 100.0, True, False),
        "layers": ("int", 1, SIZE_MAX),
        "nn_width": ("int", 1, SIZE_MAX),
        "nn_depth": ("int", 0, SIZE_MAX),
        "uniform_angles": ("bool",),
        "permutation": ("choice", ("alternating", "random")),
        "seed": SEED,
    },
    "conditional": {
        "kind": ("choice", ("chains", "gaussian", "flow")),
        "nn_width": ("int", 1, SIZE_MAX),
        "nn_depth": ("int", 0, SIZE_MAX),
        "knots": ("int", 2, SIZE_MAX),
        "interval": ("num", 0.0, 100.0, True, False),
        "layers": ("int", 1, SIZE_MAX),
        "laplace_fits": ("int", 1, INT_MAX),
        "seed": SEED,
    },
    "chains": {
        "kernel": ("choice", ("mala", "hmc", "baoab")),
        "step_size": ("num", 0.0, math.inf, True, True),
        "n_chains": ("int", 1, INT_MAX),
        "n_burn": ("int", 0, INT_MAX),
        "n_keep": ("int", 1, INT_MAX),
        "thin": ("int", 1, INT_MAX),
        "hmc_leapfrog": ("int", 1, INT_MAX),
        "friction": ("num", 0.0, math.inf, True, True),
        "warm_start_steps": ("int", 0, INT_MAX),
        "warm_start_lr": ("num", 0.0, math.inf, True, True),
        "control_variate": ("bool",),
    },
    "training": {
        "batch_size": ("int", 1, INT_MAX),
        "learning_rate": ("num", 0.0, 1.0, True, False),
        "updates_per_beta": ("int", 1, INT_MAX),
        "first_beta_updates": ("int", 1, INT_MAX),
        "final_beta_updates": ("int", 1, INT_MAX),
        "lr_final_fraction": ("num", 0.0, 1.0, True, False),
        "tempering_samples": ("int", 1, INT_MAX),
        "forward_kl_weight": ("num", 0.0, 1e6, False, False),
        "objective": ("choice", ("mean_force", "joint", "hybrid", "fab")),
        "force_clip": ("num", 0.0, math.inf, True, True),
        "fab_steps": ("int", 1, INT_MAX),
        "fab_step_size": ("num", 0.0, math.inf, True, True),
        "skip_window": ("int", 10, INT_MAX),
        "skip_factor": ("num", 3.0, math.inf, True, True),  # > clip_factor (3)
        "clip_factor": ("num", 1.0, math.inf, True, True),
        "seed": SEED,
    },
    "prediction": {
        "n_samples": ("int", 1, INT_MAX),
        "ladder_samples": ("int", 1, INT_MAX),
        "conditional": ("choice", ("auto", "exact", "laplace", "ais")),
        "minimize_steps": ("int", 0, INT_MAX),
        "minimize_lr": ("num", 0.0, math.inf, True, True),
        "newton_steps": ("int", 0, INT_MAX),
        "ais_steps": ("int", 0, INT_MAX),
        "ais_step_size": ("num", 0.0, math.inf, True, True),
        "ais_paths": ("int", 1, INT_MAX),
        "batch_size": ("int", 1, INT_MAX),
        "refine_step_size": ("num", 0.0, math.inf, True, True),
        "refine_leapfrog": ("int", 1, INT_MAX),
        "refine_target_acceptance": ("num", 0.0, 1.0, True, True),
        "polish_steps": ("int", 0, INT_MAX),
    },
    "reference": {
        "n_replicas": ("int", 1, STEPS),
        "t_max": ("num", 0.0, 1e5, True, False),
        "n_chains": ("int", 1, STEPS),
        "time_step_ps": ("num", 0.0, 0.005, True, False),
        "friction_per_ps": ("num", 0.0, 1e4, True, False),
        "n_steps": ("int", 1, STEPS),
        "burn_in_steps": ("int", 0, STEPS),
        "record_every": ("int", 1, STEPS),
        "exchange_every": ("int", 1, STEPS),
        "n_blocks": ("int", 2, STEPS),
        "seed": SEED,
        "openmm_check_steps": ("int", 0, STEPS),
        "openmm_platform": ("choice", ("CPU", "Reference")),
        "dtype": ("choice", ("float32", "float64")),
    },
}
TEMPERING = {  # kind -> keys (the kind itself is written first)
    "adaptive": {
        "beta0": ("num", 1e-6, 1.0, False, True),
        "max_kl_increase": ("num", 0.0, math.inf, True, True),
        "min_ess_fraction": ("num", 0.0, 1.0, True, True),
        "min_step": ("num", 1e-9, 0.5, False, False),  # <= max_step (0.5)
        "max_step": ("num", 0.0, 1.0, True, False),
    },
    "linear": {"beta0": ("num", 1e-6, 1.0, False, True), "n_betas": ("int", 2, 100_000)},
    "geometric": {"beta0": ("num", 1e-6, 1.0, False, True), "n_betas": ("int", 2, 100_000)},
}
TARGETS = {  # target kind -> keys whose range its own checks state
    "double_well": {"bound": ("num", 2.0, math.inf, True, True)},  # > the wells' |x|
    "gaussian_mixture": {
        "n_x": ("int", 1, 10_000),
        "n_components": ("int", 1, 10_000),
        "width": ("num", 0.0, math.inf, True, True),
        "cond_width": ("num", 0.0, math.inf, True, True),
        "support_beta": ("num", 0.0, 1.0, True, False),
    },
    "many_well": {"n_wells": ("int", 1, 10_000), "support_beta": ("num", 0.0, 1.0, True, False)},
}


def accepts(spec, value) -> bool:
    """Whether ``spec`` accepts the (TOML) value ``value``: the test's own statement of each
    key's range, independent of the code under test."""
    kind = spec[0]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "choice":
        return isinstance(value, str) and value in spec[1]
    if isinstance(value, bool):
        return False
    if kind == "int":
        _, low, high = spec
        return isinstance(value, int) and value >= low and (high is None or value <= high)
    _, low, high, low_open, high_open = spec
    if not isinstance(value, int | float) or not math.isfinite(value):
        return False
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


# ---- values as TOML can write them ------------------------------------------------------------

TEXT = st.text(st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",)), max_size=12)
INT64 = st.integers(-(2**63), 2**63 - 1)
SCALARS = st.one_of(INT64, st.floats(), st.booleans(), TEXT)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))


def bad_value(spec):
    """Values that ``spec`` refuses: out of range, not finite, or of another type."""
    near = [0, 1, -1, 2, 10, 2**32, 10**8 + 1, 0.5, 1e-13, 1e300, -0.0]
    return st.one_of(
        VALUES, st.sampled_from(near), st.sampled_from([math.nan, math.inf, -math.inf])
    ).filter(lambda v: not accepts(spec, v))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value).replace("\x7f", "\\u007f")
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def write(root: Path, text: str) -> Path:
    path = root / f"c{next(_files)}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def with_table(section: str, table: dict, target='kind = "double_well"') -> str:
    body = "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    head = f"[target]\n{target}\n"
    return head + body if section == "target" else f"{head}[{section}]\n{body}"


# ---- running the CLI --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def nothing_runs():
    """Training, sampling, evaluation and the reference fail the test if a bad input got there."""
    from coarseflow import reference, run_training, sample_outputs
    from coarseflow.analysis import evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("a bad input got past the checks and started work")

    with pytest.MonkeyPatch.context() as mp:
        for module, name in (
            (run_training, "train_from_config"),
            (sample_outputs, "sample_run"),
            (evaluation, "evaluate_run"),
            (reference, "reference_main"),
        ):
            mp.setattr(module, name, refuse)
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def run(argv) -> str:
    """main(argv) must exit 2 with one line on stderr; returns that line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main([str(a) for a in argv])
    lines = err.getvalue().strip().splitlines()
    assert status == 2, (argv, err.getvalue())
    assert len(lines) == 1, (argv, lines)
    assert lines[0].startswith("coarseflow: error: ") and "Traceback" not in lines[0]
    return lines[0]


def train_config(root: Path, text: str) -> str:
    out = root / f"run{next(_files)}"
    line = run(["train", write(root, text), "--out", out, "--quiet"])
    assert not out.exists(), line
    return line


# ---- the generated inputs ---------------------------------------------------------------------

SETTING = st.sampled_from([(s, k) for s, keys in SPEC.items() for k in keys])


@FUZZ
@given(data=st.data(), key=SETTING)
def test_bad_setting_values(root, data, key):
    section, name = key
    value = data.draw(bad_value(SPEC[section][name]), label="value")
    line = train_config(root, with_table(section, {name: value}))
    assert f"[{section}] {name}" in line, line


@FUZZ
@given(data=st.data(), key=st.sampled_from([(k, n) for k, keys in TEMPERING.items() for n in keys]))
def test_bad_tempering_values(root, data, key):
    kind, name = key
    spec = TEMPERING[kind][name]
    strategy = bad_value(spec)
    if name == "min_ess_fraction":  # false switches the criterion off: not an error
        strategy = strategy.filter(lambda v: v is not False)
    value = data.draw(strategy, label="value")
    line = train_config(root, with_table("tempering", {"kind": kind, name: value}))
    assert f"[tempering] {name}" in line, line  # max_kl_increase = false: "... neither"


@FUZZ
@given(betas=st.lists(st.one_of(st.floats(), st.integers(-3, 3), TEXT), min_size=0, max_size=5))
def test_bad_explicit_ladders(root, betas):
    ok = (
        len(betas) > 0
        and all(accepts(("num", 1e-6, 1.0, False, False), b) for b in betas)
        and all(b - a >= 1e-9 for a, b in itertools.pairwise(betas))
        and betas[-1] == 1
    )
    if ok:
        betas = [*betas, 0.5]  # no longer increasing, nor ending at 1
    line = train_config(root, with_table("tempering", {"kind": "explicit", "betas": betas}))
    assert "[tempering] betas" in line, line


TARGET_KEY = st.sampled_from([(k, n) for k, keys in TARGETS.items() for n in keys])


@FUZZ
@given(data=st.data(), key=TARGET_KEY)
def test_bad_target_values(root, data, key):
    kind, name = key
    spec = TARGETS[kind][name]
    value = data.draw(bad_value(spec), label="value")
    line = train_config(root, with_table("target", {name: value}, f'kind = "{kind}"'))
    assert name in line, line


KEY_NAME = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)


@FUZZ
@given(section=st.sampled_from([*SPEC, "tempering", "target"]), name=KEY_NAME, value=VALUES)
def test_unknown_keys(root, section, name, value):
    known = (
        SPEC.get(section, {}).keys()
        | TEMPERING["adaptive"].keys()
        | {"kind"}
        | TARGETS["double_well"].keys()
    )
    if name in known:
        name += "_x"
    table = {"kind": "adaptive", name: value} if section == "tempering" else {name: value}
    line = train_config(root, with_table(section, table))
    assert f"unknown key {name!r}" in line, line


@FUZZ
@given(name=st.one_of(st.sampled_from(SECTIONS), KEY_NAME), value=VALUES)
def test_unknown_sections_and_non_tables(root, name, value):
    if name in SECTIONS:  # a known section that is not a table
        text = f"{name} = {toml_value(value)}\n"
        if name != "target":
            text += '[target]\nkind = "double_well"\n'
        line = train_config(root, text)
        assert f"[{name}]: expected a table" in line, line
    else:
        line = train_config(root, f'[target]\nkind = "double_well"\n[{name}]\nx = 1\n')
        assert f"unknown section [{name}]" in line, line


@FUZZ
@given(
    kind=VALUES.filter(
        lambda v: v not in ("double_well", "gaussian_mixture", "many_well", "molecule")
    )
)
def test_bad_target_kinds(root, kind):
    line = train_config(root, f"[target]\nkind = {toml_value(kind)}\n")
    assert "[target] kind" in line, line


@FUZZ
@given(data=st.binary(min_size=1, max_size=64))
def test_config_files_that_are_not_toml_text(root, data):
    path = root / f"b{next(_files)}.toml"
    path.write_bytes(b"\xff" + data)  # never UTF-8
    line = run(["train", path, "--out", root / "never", "--quiet"])
    assert str(path) in line, line


def bad_cli_number(valid):
    """Command-line strings that ``valid`` (a function of the parsed value) refuses."""
    numbers = st.one_of(st.integers(-(10**20), 10**20), st.floats())

    def refused(text):
        for parse in (int, float):
            try:
                return not valid(parse(text))
            except ValueError:
                continue
        return True

    # argparse takes "-x" for an option unless it looks like a negative number
    return (
        st.one_of(numbers.map(repr), numbers.map(str), TEXT)
        .filter(lambda t: not t.startswith("-") or re.fullmatch(r"-\d+|-\d*\.\d+", t))
        .filter(refused)
    )


CLI = {
    "-n": lambda v: float(v).is_integer() and 1 <= v <= 10**8,
    "--seed": lambda v: isinstance(v, int) and 0 <= v < 2**32,
    "--beta": lambda v: math.isfinite(v) and 0 < v <= 1,
}


@FUZZ
@given(data=st.data(), flag=st.sampled_from(sorted(CLI)))
def test_bad_sample_arguments(root, data, flag):
    text = data.draw(bad_cli_number(CLI[flag]), label="text")
    line = run(["sample", root / "some-run", flag, text])
    assert flag in line, line


@FUZZ
@given(
    suffix=st.text(string.ascii_letters + string.digits, max_size=5),
    command=st.sampled_from(["sample", "reference"]),
)
def test_bad_output_names(root, suffix, command):
    allowed = (".npz", ".pdb", ".dcd") if command == "sample" else (".npz",)
    name = f"out.{suffix}" if suffix else "out"
    if "." + suffix.lower() in allowed:
        name = f"not-a-dir.txt/{name}"
        (root / "not-a-dir.txt").write_text("mine")
    where = root / "c.toml" if command == "reference" else root / "some-run"
    line = run([command, where, "-o", root / name])
    assert "-o" in line, line
    assert not (root / name).exists()


@pytest.mark.slow
def test_ten_times_as_many_fresh_bad_inputs():
    """This file's generators with 1000 random (not derandomised) examples each: 10,000."""
    env = {**os.environ, "COARSEFLOW_FUZZ_EXAMPLES": "1000"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            __file__,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-4000:]
