"""Ramachandran basins per residue class, per-residue populations and dF with bootstrap
intervals on synthetic (phi, psi) samples of known populations, and the weights' warning."""

import json

import numpy as np
import pytest

from coarseflow.analysis import basin_statistics as bs
from coarseflow.analysis import observables as obs
from coarseflow.analysis import ramachandran as rama
from coarseflow.analysis.trust import log_weight_verdict, warning_line

# basin centres (degrees) at least 25 degrees inside their boxes; samples spread 8 degrees
CENTRES = {
    "general": {
        "C5": (-150, 155),
        "C7eq/PII": (-75, 140),
        "alpha_R": (-70, -40),
        "alpha_L": (60, 40),
        "C7ax": (70, -70),
    },
    "glycine": {
        "alpha_R": (-70, -30),
        "alpha_L": (70, 30),
        "beta_P": (-70, 150),
        "beta_PR": (70, -150),
        "beta_S": (-165, 175),
    },
    "proline": {"C7eq/PII": (-65, 145), "alpha_R": (-65, -35)},
    "pre-proline": {
        "C5": (-150, 160),
        "zeta": (-150, 80),
        "C7eq/PII": (-70, 140),
        "alpha_R": (-70, -40),
    },
}


def sample_basins(rng, centres: dict, masses: dict, n: int):
    """(phi, psi) radians (n,), drawn with the given basin masses, and each sample's basin."""
    names = list(masses)
    which = rng.choice(len(names), size=n, p=np.array([masses[k] for k in names]))
    c = np.radians(np.array([centres[names[i]] for i in which], dtype=float))
    angles = c + np.radians(8.0) * rng.standard_normal((n, 2))
    angles = (angles + np.pi) % (2 * np.pi) - np.pi
    return angles[:, 0], angles[:, 1], np.array(names)[which]


def test_every_set_partitions_the_plane():
    g = np.radians(np.arange(-180.0, 180.0, 2.5) + 0.3)
    phi, psi = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    for basins in rama.BASIN_SETS.values():
        hits = np.zeros(phi.size, int)
        for boxes in basins.boxes:
            d_phi, d_psi = np.degrees(phi), np.degrees(psi)
            inside = np.zeros(phi.size, bool)
            for (a0, a1), (b0, b1) in boxes:
                inside |= (d_phi >= a0) & (d_phi < a1) & (d_psi >= b0) & (d_psi < b1)
            hits += inside
        assert hits.max() == 1, basins.kind  # no point in two basins
        labels = basins.labels(phi, psi)
        assert np.array_equal(labels == len(basins.basins), hits == 0)


def test_glycine_and_proline_basins_differ_from_alanines_as_defined():
    def name(basins, phi, psi):
        return basins.names[int(basins.labels(np.radians(phi), np.radians(psi)))]

    general, gly, pro, prepro = rama.GENERAL, rama.GLYCINE, rama.PROLINE, rama.PRE_PROLINE
    # the general set is the one observables has always had (alanine dipeptide's keys)
    assert obs.BASINS == general.basins
    assert name(general, 80, -170) == "other" and name(gly, 80, -170) == "beta_PR"
    assert name(general, 60, 40) == "alpha_L" and name(pro, 60, 40) == "other"
    assert name(general, -150, 150) == "C5" and name(pro, -150, 150) == "other"
    assert name(general, 180, 0) == "alpha_R" and name(gly, 180, 0) == "beta_S"
    assert name(general, -140, 80) == "C5" and name(prepro, -140, 80) == "zeta"
    assert name(pro, -65, -35) == "alpha_R" == name(gly, -65, -35) == name(general, -65, -35)
    assert name(pro, -65, 145) == "C7eq/PII" == name(general, -65, 145)
    assert gly.populations(np.radians([1.0, 100, -170]), np.radians([5.0, 170, 90]))[-1] == 0.0
    # glycine's plot has no C-beta: its boxes are symmetric under (phi, psi) -> (-phi, -psi)
    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-np.pi, np.pi, (2, 5000))
    mirror = {"alpha_R": "alpha_L", "beta_P": "beta_PR", "beta_S": "beta_S"}
    mirror |= {v: k for k, v in mirror.items()}
    a = np.array(gly.names)[gly.labels(phi, psi)]
    b = np.array(gly.names)[gly.labels(-phi, -psi)]
    assert np.mean([mirror[x] == y for x, y in zip(a, b, strict=True)]) > 0.999  # but ties


def test_residue_classes():
    assert rama.residue_class("GLY", "ALA") == "glycine"
    assert rama.residue_class("PRO", "NME") == "proline"
    assert rama.residue_class("ALA", "PRO") == "pre-proline"
    assert rama.residue_class("SER", "NPRO") == "pre-proline"
    assert rama.residue_class("GLY", "PRO") == "glycine"
    assert rama.residue_class("PRO", "PRO") == "proline"
    assert rama.residue_class("NGLY") == "glycine" and rama.residue_class("ALA") == "general"


@pytest.mark.parametrize("kind", list(CENTRES))
def test_per_residue_populations_and_dF_of_known_basins(kind):
    """Samples drawn with uniform basin masses q, weighted p / q: the reweighted populations are
    p within their intervals, the raw ones q; dF's interval covers -kT log(p_i / p_max)."""
    rng = np.random.default_rng(1)
    centres = CENTRES[kind]
    names = list(centres)
    p = np.linspace(1.0, 3.0, len(names))
    p = dict(zip(names, p / p.sum(), strict=True))
    q = {k: 1.0 / len(names) for k in names}
    phi, psi, drawn = sample_basins(rng, centres, q, 6000)
    w = np.array([p[k] / q[k] for k in drawn])
    kT = 2.49
    rb = bs.residue_basins("X2", rama.BASIN_SETS[kind], phi, psi, w, kT)
    assert rb.kind == kind and rb.names == rama.BASIN_SETS[kind].names
    truth = np.array([p.get(n, 0.0) for n in rb.names])
    assert rb.names[rb.anchor] == max(p, key=p.get)  # the reweighted estimate's largest
    np.testing.assert_allclose(rb.reweighted.p, truth, atol=0.02)
    np.testing.assert_allclose(rb.raw.p, [q.get(n, 0.0) for n in rb.names], atol=0.03)
    present = truth > 0
    assert np.all(rb.reweighted.p_lo[present] <= truth[present] + 1e-12)
    assert np.all(truth[present] <= rb.reweighted.p_hi[present] + 1e-12)
    dF_true = -kT * np.log(truth[present] / truth[rb.anchor])
    assert np.all(rb.reweighted.dF_lo[present] <= dF_true + 1e-9)
    assert np.all(dF_true <= rb.reweighted.dF_hi[present] + 1e-9)
    assert np.all(np.isnan(rb.reweighted.dF[~present]))  # an empty basin: unknown, not infinite


def test_dF_intervals_cover_the_truth_at_about_their_level():
    """20 independent draws of 800 samples: the 90 % interval of each dF covers the truth in
    most of them (binomial: >= 14 of 20 fails with probability < 1 % at 90 % coverage)."""
    rng = np.random.default_rng(7)
    centres = CENTRES["general"]
    p = {"C5": 0.15, "C7eq/PII": 0.45, "alpha_R": 0.3, "alpha_L": 0.07, "C7ax": 0.03}
    q = {"C5": 0.2, "C7eq/PII": 0.3, "alpha_R": 0.3, "alpha_L": 0.1, "C7ax": 0.1}
    truth = np.array([p[n] for n in rama.GENERAL.basins])
    dF_true = -np.log(truth / truth.max())
    covered = np.zeros(len(truth), int)
    for seed in range(20):
        phi, psi, drawn = sample_basins(rng, centres, q, 800)
        w = np.array([p[k] / q[k] for k in drawn])
        rb = bs.residue_basins("ALA2", rama.GENERAL, phi, psi, w, 1.0, n_boot=200, seed=seed)
        assert rb.anchor == 1  # C7eq/PII, the most populated
        lo, hi = rb.reweighted.dF_lo[:-1], rb.reweighted.dF_hi[:-1]
        covered += (lo <= dF_true) & (dF_true <= hi)
    assert np.all(covered[[0, 2, 3, 4]] >= 14), covered  # the anchor's dF is 0 by definition


def test_reference_anchors_dF_and_records_are_strict_json():
    rng = np.random.default_rng(3)
    centres = CENTRES["proline"]
    p = {"C7eq/PII": 0.3, "alpha_R": 0.7}
    phi, psi, _ = sample_basins(rng, centres, p, 3000)
    ref = sample_basins(rng, centres, {"C7eq/PII": 0.6, "alpha_R": 0.4}, 3000)[:2]
    rb = bs.residue_basins("PRO4", rama.PROLINE, phi, psi, np.ones(3000), 2.0, reference=ref)
    assert rb.names[rb.anchor] == "C7eq/PII"  # the reference's most populated basin
    assert rb.reference_dF[0] == 0.0 and rb.reweighted.dF[0] == 0.0
    np.testing.assert_allclose(rb.reweighted.dF[1], -2.0 * np.log(0.7 / 0.3), atol=0.15)
    np.testing.assert_allclose(rb.reference_dF[1], -2.0 * np.log(0.4 / 0.6), atol=0.15)
    inside = bs.reference_inside(rb)
    assert inside[0] and not inside[1]  # the model disagrees with this reference on alpha_R
    record = bs.as_dict(rb)
    text = json.dumps(record, allow_nan=False)  # "other" is empty: its dF is null, not NaN
    back = json.loads(text)
    assert back["class"] == "proline" and back["dF_relative_to"] == "C7eq/PII"
    assert back["basins"]["other"]["dF_reweighted"] is None
    assert back["basins"]["alpha_R"]["dF_reference_inside"] is False
    lines = bs.summary_lines([record])
    assert lines[0].startswith("  PRO4 (proline residue basins)") and len(lines) == 4
    assert "reference p 0.4" in lines[2]


def _log_weights(kind: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "good":
        return 0.05 * rng.standard_normal(2000)
    return 8.0 * rng.standard_normal(2000)  # a handful of samples carry the weight


def test_warning_for_bad_weights_and_not_for_good_ones(capsys):
    assert warning_line(log_weight_verdict(_log_weights("good"))) is None
    bad = warning_line(log_weight_verdict(_log_weights("bad")))
    assert bad.startswith("WARNING: do not trust the reweighted numbers") and "ESS" in bad

    from coarseflow.analysis.metrics import ess, max_weight_ratio, pareto_k
    from coarseflow.cli.output import _print_summary

    def summary(kind):
        lw = _log_weights(kind)
        final = {
            "beta": 1.0,
            "n_samples": lw.size,
            "ess": float(ess(lw)),
            "pareto_k": pareto_k(lw),
            "max_weight_ratio": max_weight_ratio(lw),
            "n_nonfinite_log_weights": 0,
            "basin_alpha_R_reweighted": 0.5,
        }
        return {"final": final, "summary_path": "s.json", "figures": []}

    _print_summary(summary("good"))
    assert "WARNING" not in capsys.readouterr().out
    _print_summary(summary("bad"))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert sum("WARNING" in line for line in lines) == 2  # above and below the numbers
    assert "WARNING" in lines[1] and "basin_alpha_R_reweighted" in out
