import json

import jax.numpy as jnp
import numpy as np
import pytest

from coarseflow.atomic_files import strict_json
from coarseflow.errors import ConfigError
from coarseflow.ladder_labels import ladder_label, parse_ladder_label
from coarseflow.runs import RunDir


def test_checkpoint_round_trip_and_order(tmp_path):
    run = RunDir(tmp_path)
    trees = {b: (jnp.arange(3.0) * b, {"w": jnp.ones((2, 2)) * b}) for b in (0.5, 0.01, 1.0)}
    for b, tree in trees.items():
        run.save_checkpoint(b, tree, {"index": 0, "step": 1, "next_beta": None})
    metas = run.checkpoints()
    assert [m["beta"] for m in metas] == [0.01, 0.5, 1.0]
    template = (jnp.zeros(3), {"w": jnp.zeros((2, 2))})
    for meta in metas:
        loaded = run.load_checkpoint(template, meta)
        np.testing.assert_array_equal(loaded[0], trees[meta["beta"]][0])
        np.testing.assert_array_equal(loaded[1]["w"], trees[meta["beta"]][1]["w"])
    assert run.find_checkpoint()["beta"] == 1.0
    assert run.find_checkpoint(0.5)["beta"] == 0.5
    with pytest.raises(ConfigError, match="no checkpoint for that beta"):
        run.find_checkpoint(0.3)
    # a beta as printed (6 significant digits) finds its checkpoint; a 7th digit off does not
    run.save_checkpoint(0.602124961, trees[0.5], {"index": 0, "step": 1, "next_beta": None})
    assert run.find_checkpoint(0.602125)["beta"] == 0.602124961
    with pytest.raises(ConfigError, match="have 0.01, 0.5, 0.602125, 1"):
        run.find_checkpoint(0.602126)


def test_close_betas_do_not_collide(tmp_path):
    run = RunDir(tmp_path)
    for b in (0.1, 0.1 + 1e-9):
        run.save_checkpoint(b, jnp.ones(1) * b, {"index": 0, "step": 0, "next_beta": None})
    assert len(run.checkpoints()) == 2


def test_checkpoint_without_metadata_is_ignored(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint(0.2, jnp.ones(1), {"index": 0, "step": 0, "next_beta": None})
    eqx_path, json_path = run.checkpoint_paths(0.2)
    json_path.unlink()  # as if the process died between the two writes
    assert run.checkpoints() == []
    with pytest.raises(ConfigError, match="no checkpoints"):
        run.find_checkpoint()


def test_no_temporary_files_left(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint(1.0, jnp.ones(4), {"index": 0, "step": 0, "next_beta": None})
    names = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert names == ["beta_1.000000000000.eqx", "beta_1.000000000000.json"]
    assert json.loads((run.checkpoint_dir / names[1]).read_text())["beta"] == 1.0


def test_metrics_append_and_truncate(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics([{"step": i, "loss": float(i)} for i in range(5)])
    run.append_metrics([{"step": 5, "loss": 5.0}])
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3, 4, 5]
    run.truncate_metrics(3)
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="no config.toml"):
        RunDir(tmp_path).require_existing()


# ---- checkpoint names (ladder labels) ----------------------------------------------------------


def test_ladder_labels_sort_and_round_trip():
    betas = [1e-3, 0.01 + 1.01e-12, 0.01, 0.01 + 2.1e-12, 0.099, 0.1, 0.5, 0.999999999998, 1.0]
    labels = [ladder_label(b) for b in betas]
    assert len(set(labels)) == len(betas)
    assert len({len(s) for s in labels}) == 1
    assert sorted(labels) == [ladder_label(b) for b in sorted(betas)]
    assert ladder_label(0.01) == "0.010000000000" and ladder_label(1.0) == "1.000000000000"
    for b, s in zip(betas, labels, strict=True):
        assert parse_ladder_label(s) == pytest.approx(b, abs=5e-13)
    rng = np.random.default_rng(5)
    many = rng.uniform(1e-6, 1.0, 2000)
    assert sorted(ladder_label(b) for b in many) == [ladder_label(b) for b in np.sort(many)]


@pytest.mark.parametrize(
    "label", ["0.01", "2.000000000000", "0.000000000000", "beta_0.100000000000", 0.1]
)
def test_parse_ladder_label_errors(label):
    with pytest.raises(ConfigError, match="ladder label"):
        parse_ladder_label(label)


def test_ladder_label_rejects_out_of_range():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            ladder_label(bad)


def test_strict_json_writes_null_for_non_finite_numbers_and_plain_numbers_for_arrays():
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    text = strict_json(
        {
            "nan": float("nan"),
            "inf": np.float32(np.inf),
            "k": np.float64(0.5),
            "n": np.int64(3),
            "a": np.array([1.0, np.nan]),
            "j": jnp.asarray(2.0),
            "nested": [{"x": -np.inf}],
            "ok": True,
            "none": None,
        }
    )
    assert json.loads(text, parse_constant=refuse) == {
        "nan": None,
        "inf": None,
        "k": 0.5,
        "n": 3,
        "a": [1.0, None],
        "j": 2.0,
        "nested": [{"x": None}],
        "ok": True,
        "none": None,
    }
