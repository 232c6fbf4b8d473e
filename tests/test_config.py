import pytest

from coarseflow.config import load_config, parse_config, to_toml
from coarseflow.errors import ConfigError

BASE = {"target": {"kind": "double_well"}}


def with_(section, **kv):
    raw = {k: dict(v) for k, v in BASE.items()}
    raw.setdefault(section, {}).update(kv)
    return raw


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"target": {"kind": "double_well"}, "modle": {}}, r"unknown section \[modle\]"),
        ({"model": {}}, "kind is required"),
        (with_("target", kind="triple_well"), "kind: expected one of"),
        (with_("target", kind="gaussian_mixture", n_X=2), "unknown key 'n_X'"),
        (with_("target", kind="gaussian_mixture", n_x="two"), "n_x: expected an integer"),
        (with_("model", knots="eight"), r"\[model\] knots: expected an integer, got 'eight'"),
        (with_("model", knots=1), r"\[model\] knots"),
        (with_("model", knotz=8), r"\[model\] unknown key 'knotz'"),
        (with_("chains", kernel="nuts"), "kernel"),
        (with_("chains", step_size=-1.0), "step_size"),
        (with_("training", learning_rate=0), r"\[training\] learning_rate"),
        (with_("training", batch_size=2.5), r"\[training\] batch_size: expected an integer"),
        (with_("training", lr_final_fraction=2.0), "lr_final_fraction"),
        (with_("tempering", kind="adaptive", beta_0=0.1), "unknown key 'beta_0'"),
        (with_("tempering", kind="explicit", betas=[0.5, 0.2, 1.0]), "betas"),
        (with_("prediction", conditional="mcmc"), "conditional"),
        (with_("prediction", n_samples=True), "n_samples: expected an integer"),
    ],
)
def test_bad_config_names_the_problem(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[target\nkind=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_toml_round_trip(tmp_path):
    raw = {
        "target": {"kind": "gaussian_mixture", "n_x": 2, "weights": [0.5, 0.25, 0.25]},
        "chains": {"kernel": "hmc", "step_size": 0.1},
        "tempering": {"kind": "explicit", "betas": [0.1, 1.0]},
    }
    path = tmp_path / "c.toml"
    path.write_text(to_toml(raw))
    config = load_config(path)
    assert config.raw == raw
    assert config.chains.kernel == "hmc" and config.chains.step_size == 0.1


def test_every_shipped_config_parses():
    from pathlib import Path

    import coarseflow

    paths = sorted((Path(coarseflow.__file__).parent / "configs").glob("*.toml"))
    assert len(paths) >= 10
    for path in paths:
        load_config(path)


def test_relative_file_paths_become_absolute(tmp_path, monkeypatch):
    pdb = tmp_path / "mol.pdb"
    pdb.write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[target]\nkind = "double_well"\n')
    monkeypatch.chdir(tmp_path)
    from coarseflow.config import absolute_paths

    raw = absolute_paths(
        {"target": {"kind": "molecule", "pdb": "mol.pdb", "reference": "alanine_dipeptide"}}
    )
    assert raw["target"]["pdb"] == str(pdb.resolve())
    assert raw["target"]["reference"] == "alanine_dipeptide"  # a built-in name, not a file
