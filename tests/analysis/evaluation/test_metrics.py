"""evaluation.metrics: the metrics of benchmarks.md on arrays recover known errors."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.analysis.evaluation.metrics import angle_metrics, defocus_metrics, outlier_metrics
from relion_canon.geometry import wrap_deg


def test_angle_metrics_remove_offset_and_sign():
    rng = np.random.default_rng(0)
    true = rng.uniform(-180, 180, 4000)
    noise = rng.normal(0, 3.0, true.size)
    pred = wrap_deg(-(true + 70.0 + noise))
    m = angle_metrics(pred, true)
    assert m.sign == -1
    assert m.offset_deg == pytest.approx(70.0, abs=0.3)
    assert m.rmse_deg == pytest.approx(np.sqrt(np.mean(noise**2)), rel=0.02)
    assert m.median_deg == pytest.approx(np.median(np.abs(noise)), rel=0.05)
    # In the reference's frame the predictions sit on the truth, up to the noise.
    assert np.abs(wrap_deg(m.aligned_deg - true)).max() < 6 * 3.0


def test_weighted_rmse_favours_confident_particles():
    rng = np.random.default_rng(1)
    true = rng.uniform(-180, 180, 2000)
    bad = np.arange(true.size) % 2 == 0
    pred = true + np.where(bad, rng.normal(0, 20, true.size), rng.normal(0, 1, true.size))
    weights = np.where(bad, 0.1, 2.0)
    m = angle_metrics(pred, true, weights)
    expected = np.sqrt(np.sum(weights * m.errors_deg**2) / weights.sum())
    assert m.weighted_rmse_deg == pytest.approx(expected)
    assert m.weighted_rmse_deg < 0.5 * m.rmse_deg
    # Weights are w = exp(def̂) − 1: a negative one (def̂ < 0) must not count against the others.
    assert angle_metrics(pred, true, np.where(bad, -1.0, 2.0)).weighted_rmse_deg < 2.0
    assert angle_metrics(pred, true, np.zeros_like(pred)).weighted_rmse_deg is None


def test_symmetry_compares_modulo_360_over_n():
    rng = np.random.default_rng(2)
    true = rng.uniform(-180, 180, 3000)
    pred = wrap_deg(true + 120.0 * rng.integers(0, 3, true.size) + rng.normal(0, 1.0, true.size))
    assert angle_metrics(pred, true).rmse_deg > 40
    c3 = angle_metrics(pred, true, symmetry=3)
    assert c3.rmse_deg < 1.2 and c3.symmetry == 3
    with pytest.raises(ValueError):
        angle_metrics(pred, true, symmetry=0)


def test_defocus_metrics_in_micrometres():
    true = np.linspace(5000, 25000, 50)
    m = defocus_metrics(true + 1000.0, true, "truth")
    assert m.rmse_um == pytest.approx(0.1) and m.mean_error_um == pytest.approx(0.1)
    assert m.true_um.max() == pytest.approx(2.5)


def test_outlier_metrics_auc_precision_recall():
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 1], bool)
    kinds = np.array(["none"] * 4 + ["noise", "aggregate", "none", "noise"])
    perfect = labels * 3.0 + np.linspace(0, 1, 8)
    flags = np.array([0, 0, 0, 1, 1, 0, 0, 1], bool)
    m = outlier_metrics(labels, {"ours": perfect, "reversed": -perfect}, "truth", flags, 2.0, "iforest", kinds)
    assert m.auc == {"ours": 1.0, "reversed": 0.0}
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.recall_by_kind == {"aggregate": 0.0, "noise": 1.0}
    assert m.n_positive == 3 and m.n_flagged == 3
    one_class = outlier_metrics(np.zeros(5, bool), {"ours": np.arange(5.0)}, "truth", np.zeros(5, bool))
    assert one_class.auc["ours"] is None and one_class.precision is None and one_class.recall is None
