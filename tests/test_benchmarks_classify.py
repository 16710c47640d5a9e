"""benchmarks/classify: its scores on hand-made cases, and a smoke-sized run in which the three methods run on
the same particles and every figure is reported for each (never judged for accuracy or speed here: 150
particles at 32 px and 3 RELION iterations say nothing about either)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "classify"))
import class_metrics as cm  # noqa: E402

SCORES = ("purity", "completeness", "psi_rmse", "psi_median", "psi_scored_share", "pair_same_class",
          "pair_psi_rmse", "pair_psi_median", "junk_auc", "good_kept", "junk_in_selected", "junk_kept",
          "wall_s", "cpu_s", "peak_rss_mb", "relion_over_wall", "relion_over_cpu", "classes_found")


def test_purity_and_completeness_of_a_split_and_a_merge():
    view = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    split = np.array([1, 1, 2, 2, 3, 3, 3, 3])  # view 0 over two classes: pure, not complete
    merged = np.array([1, 1, 1, 1, 1, 1, 2, 2])  # class 1 holds both views
    assert cm.class_purity(split, view) == 1.0 and cm.view_completeness(split, view) == 0.75
    assert cm.class_purity(merged, view) == 0.75 and cm.view_completeness(merged, view) == 0.75


def test_views_a_few_degrees_apart_count_as_one():
    tilt = np.deg2rad([0.0, 3.0, 6.0, 40.0, 90.0])  # 0-3-6 chain within 5 degrees; 40 and 90 alone
    directions = np.c_[np.sin(tilt), np.zeros(5), np.cos(tilt)]
    label = cm.views_merged_within(directions, 5.0)
    assert label[0] == label[1] == label[2] and len(set(label)) == 3
    view = np.array([0, 0, 1, 1, 3, 3])
    mixed = np.array([1, 1, 1, 1, 2, 2])  # views 0 and 1 (3 degrees apart) in one class
    assert cm.class_purity(mixed, view) == 4 / 6 and cm.class_purity(mixed, label[view]) == 1.0

def test_psi_within_classes_fits_an_offset_and_sign_per_pair():
    rng = np.random.default_rng(0)
    true = rng.uniform(-180, 180, 40)
    view = np.repeat([0, 1], 20)
    cls = np.ones(40, int)  # one class, two views, each in its own frame
    psi = np.where(view == 0, true + 30.0, -true + 100.0)
    result = cm.psi_within_classes(cls, view, psi, true)
    assert result["psi_rmse"] < 1e-3 and result["psi_scored_share"] == 1.0
    assert cm.psi_within_classes(cls, view, psi, true, min_particles=21)["psi_rmse"] is None


def test_pairs_close_in_direction_and_their_true_psi_difference():
    rot = np.array([0.0, 2.0, 90.0, 0.0])
    tilt = np.array([90.0, 90.0, 90.0, 90.0])
    psi = np.array([10.0, 0.0, 0.0, 50.0])
    pairs = cm.close_pairs(cm.viewing_directions(rot, tilt), 5.0, 100, seed=0)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 3), (1, 3)]
    diff = cm.true_psi_difference_deg(rot, tilt, psi, np.array([[0, 3]]))
    assert diff[0] == pytest.approx(-40.0)
    scores = cm.pair_scores(np.array([1, 1, 2, 1]), -psi, np.array([[0, 3], [0, 1]]),
                            np.array([-40.0, 10.0]))
    assert scores["pair_same_class"] == 1.0 and scores["pair_psi_rmse"] == pytest.approx(0.0, abs=1e-9)


def test_relion_selection_drops_the_blurred_classes():
    kept = cm.relion_kept_classes({1: 10.0, 2: 11.0, 3: 30.0}, {1: 100, 2: 100, 3: 20}, factor=1.25)
    assert kept == {1, 2}


@pytest.mark.relion
def test_classify_smoke(require_relion, tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks/classify/run.py"), "--smoke", "--workdir", str(tmp_path),
           "--out", str(tmp_path / "results"), "--timeout", "600"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((tmp_path / "results/results.json").read_text())
    (row,) = result["rows"]
    assert (row["n"], row["snr"], row["views"], row["n_views"], row["box"]) == (150, 0.1, "3", 3, 32)
    assert row["relion_classes"] == 3
    assert set(row["methods"]) == {"ours", "ours_true_classes", "relion"}
    for method, m in row["methods"].items():
        for key in SCORES:
            assert m[key] is not None, (method, key)
        for key in ("purity", "completeness", "psi_scored_share", "pair_same_class", "junk_auc", "good_kept",
                    "junk_in_selected", "junk_kept"):
            assert 0 <= m[key] <= 1, (method, key)
        for key in ("psi_rmse", "psi_median", "pair_psi_rmse", "pair_psi_median"):
            assert 0 <= m[key] <= 180, (method, key)
        for key in ("wall_s", "cpu_s", "peak_rss_mb", "relion_over_wall", "relion_over_cpu"):
            assert m[key] > 0, (method, key)
        assert 1 <= m["classes_found"] <= 3 and m["n_pairs"] > 0
    for method in ("ours", "ours_true_classes"):
        assert row["methods"][method]["defocus_rmse_um"] >= 0
    # The upper bound is given the true views: pure and complete by construction.
    truth_given = row["methods"]["ours_true_classes"]
    assert truth_given["purity"] == 1.0 and truth_given["completeness"] == 1.0
    assert "--per_class yes" in truth_given["command"]
    assert "--K 3 --iter 3 --psi_step 6" in row["methods"]["relion"]["command"]
    assert result["machine"]["relion"].startswith("RELION version: 3.1")
    text = (tmp_path / "results/table.md").read_text()
    for method in row["methods"]:
        assert f"| {method} |" in text
    assert (tmp_path / "results/classes.png").stat().st_size > 0
    assert not list(tmp_path.glob("classify_*"))  # scratch projects removed unless --keep


def test_score_job_scores_a_perfect_and_a_blind_job(tmp_path):
    import json as _json

    from relion_canon.io.star import read_star, write_star
    from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

    sys.path.insert(0, str(REPO / "benchmarks" / "classify"))
    from score_job import score_job

    sim = tmp_path / "sim"
    simulate_dataset(SimulationConfig(n_particles=120, box=32, views=3, junk_fraction=0.2, seed=4), sim)
    truth = read_ground_truth(sim)
    star = read_star(sim / "particles.star")
    junk = truth["rlnCanonIsJunk"].to_numpy() == 1
    for name, perfect in (("perfect", True), ("blind", False)):
        parts = star.particles.copy()
        parts["rlnClassNumber"] = np.where(junk, 1, truth["rlnCanonViewId"].to_numpy() + 2) if perfect else 1
        parts["rlnAnglePsi"] = truth["rlnAnglePsi"].to_numpy() if perfect else 0.0
        parts["rlnCanonIsOutlier"] = junk.astype(int) if perfect else 0
        parts["rlnParticleSelectZScore"] = junk.astype(float) if perfect else 0.0
        job = tmp_path / name
        job.mkdir()
        write_star({**star.blocks, star.particles_block: parts}, job / "particles.star")
        numbers = sorted(set(parts["rlnClassNumber"].tolist()))
        counts = parts["rlnClassNumber"].value_counts()
        classes = {str(n): {"n_particles": int(counts[n]), "half_agreement": 0.99, "is_junk": n == 1 and perfect}
                   for n in numbers}
        (job / "report.json").write_text(_json.dumps({"seconds": {"total": 1.0}, "classes": classes}))
        scores = score_job(job, sim)
        assert [c["class"] for c in scores["per_class"]] == numbers
        if perfect:
            assert scores["purity"] == 1.0 and scores["completeness"] == 1.0 and scores["junk_auc"] == 1.0
            assert scores["psi_rmse"] < 1e-6 and scores["junk_kept"] == 0.0
            # Class 1 holds the junk; the views' classes none.
            assert [c["junk_share"] for c in scores["per_class"]] == [1.0] + [0.0] * (len(numbers) - 1)
        else:
            assert scores["purity"] < 0.5 and scores["junk_auc"] == 0.5 and scores["junk_kept"] == 1.0
