"""Junk scores from particle features: three detectors of paper B, standardised, and their ensemble."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from relion_canon.analysis.outliers import (
    DEFAULT_THRESHOLD,
    DETECTORS,
    flag_outliers,
    outlier_scores,
    robust_z,
)

INLIER, FAR, CLUSTER, SHELL = 0, 1, 2, 3


def _features(n: int, p: int, seed: int, junk_fraction: float = 0.1):
    """A correlated Gaussian cluster of particles and junk of three kinds, a third each:
    FAR: broad (3× the inliers' spread), as picks of debris that encode anywhere;
    CLUSTER: a compact cluster 5 σ away, as many picks of one kind of junk (empty ice) that encode alike;
    SHELL: on a sphere at Mahalanobis radius √p + 3, i.e. just outside the inliers in every direction."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((p, p))
    chol = np.linalg.cholesky(a @ a.T / p + 0.2 * np.eye(p))
    n_junk = int(junk_fraction * n)
    third = n_junk // 3
    direction = rng.standard_normal(p)
    direction /= np.linalg.norm(direction)
    shell = rng.standard_normal((n_junk - 2 * third, p))
    shell *= (np.sqrt(p) + 3.0) / np.linalg.norm(shell, axis=1, keepdims=True)
    white = np.concatenate(
        [
            rng.standard_normal((n - n_junk, p)),
            3.0 * rng.standard_normal((third, p)),
            0.5 * rng.standard_normal((third, p)) + 5.0 * direction,
            shell,
        ]
    )
    kind = np.repeat([INLIER, FAR, CLUSTER, SHELL], [n - n_junk, third, third, n_junk - 2 * third])
    order = rng.permutation(n)
    return (white @ chol.T)[order] + rng.normal(0, 5, p), kind[order]


def _auc(z: np.ndarray, kind: np.ndarray, which: tuple[int, ...] = (FAR, CLUSTER, SHELL)) -> float:
    rows = (kind == INLIER) | np.isin(kind, which)
    return float(roc_auc_score(kind[rows] != INLIER, z[rows]))


@pytest.fixture(scope="module")
def scored():
    x, kind = _features(2000, 6, seed=0)
    return x, kind, outlier_scores(x, seed=0)


def test_each_detector_finds_junk(scored):
    _, kind, res = scored
    assert set(res.per_detector) == set(DETECTORS) and res.method == "ensemble"
    # Far and shell junk: every detector.
    for name, z in res.per_detector.items():
        for which in (FAR, SHELL):
            assert _auc(z, kind, (which,)) > 0.95, (name, which)
    # The compact junk cluster: the forest and the covariance distance see it; LOF cannot, since with a
    # hundred junk particles close together its 20 neighbours are all junk and the density looks normal.
    for name in ("isolation_forest", "robust_covariance"):
        assert _auc(res.per_detector[name], kind, (CLUSTER,)) > 0.9, name
    lof_cluster = _auc(res.per_detector["lof"], kind, (CLUSTER,))
    assert lof_cluster < 0.7
    # The median ensemble is not dragged down by the one blind detector, as a mean would be.
    assert _auc(res.z, kind, (CLUSTER,)) > 0.93
    mean = robust_z(np.mean(list(res.per_detector.values()), axis=0))
    assert _auc(res.z, kind, (CLUSTER,)) > _auc(mean, kind, (CLUSTER,))
    assert _auc(res.z, kind) > 0.97
    for name in ("isolation_forest", "robust_covariance"):
        assert _auc(res.per_detector[name], kind) > 0.95, name


def test_standardised_and_oriented(scored):
    _, kind, res = scored
    inlier = kind == INLIER
    for name, z in {**res.per_detector, "ensemble": res.z}.items():
        assert abs(np.median(z)) < 1e-9, name  # robust z: the median particle scores 0
        assert abs(np.median(z[inlier])) < 0.3, name
        mad = 1.4826 * np.median(np.abs(z[inlier] - np.median(z[inlier])))
        assert 0.7 < mad < 1.3, (name, mad)
        assert np.median(z[~inlier]) > 2.0, name  # high = junk, as RELION reads rlnParticleSelectZScore
    flags = res.flags
    assert np.array_equal(flags, flag_outliers(res.z, DEFAULT_THRESHOLD))
    precision = np.mean(~inlier[flags])
    assert precision > 0.9 and np.mean(flags[~inlier]) > 0.5, (precision, np.mean(flags[~inlier]))
    report = res.report()
    assert report["n_flagged"] == flags.sum() and report["threshold_from"] == "default"
    assert not report["subsampled"] and report["n_fit"] == 2000 and report["n_features"] == 6


def test_clean_data_flags_few():
    """Without junk the default threshold flags a small fraction: the transforms make inliers' scores
    roughly normal, so z > 3 is rare."""
    x = np.random.default_rng(1).standard_normal((1000, 5)) @ np.diag([1.0, 2.0, 0.5, 3.0, 1.0])
    res = outlier_scores(x, seed=1)
    assert res.flags.mean() < 0.02
    assert res.per_detector["robust_covariance"].__gt__(DEFAULT_THRESHOLD).mean() < 0.01


def test_single_detector_matches_ensemble_member(scored):
    x, _, res = scored
    alone = outlier_scores(x, method="robust_covariance", seed=0)
    assert list(alone.per_detector) == ["robust_covariance"] and alone.method == "robust_covariance"
    np.testing.assert_allclose(alone.z, res.per_detector["robust_covariance"])


def test_deterministic_and_scale_free(scored):
    """Same seed, same scores; a per-column affine change of units (robust standardisation) changes nothing."""
    x, _, res = scored
    rng = np.random.default_rng(5)
    again = outlier_scores(x * rng.uniform(0.01, 100.0, x.shape[1]) + rng.normal(0, 50, x.shape[1]), seed=0)
    np.testing.assert_allclose(again.z, res.z, atol=1e-6)
    for name in DETECTORS:
        np.testing.assert_allclose(again.per_detector[name], res.per_detector[name], atol=1e-6)


def test_subsampled_fit_scores_everyone_consistently():
    """Above max_fit the detectors fit on a subsample and score all; the LOF of fitted and merely scored
    inliers must be on the same scale, and the AUC must survive."""
    x, kind = _features(2500, 6, seed=2)
    res = outlier_scores(x, seed=3, max_fit=600)
    assert res.n_fit == 600 and res.fit_index.size == 600 and res.report()["subsampled"]
    assert _auc(res.z, kind) > 0.95
    fitted = np.zeros(x.shape[0], dtype=bool)
    fitted[res.fit_index] = True
    inlier = kind == INLIER
    for name, z in res.per_detector.items():
        gap = np.median(z[fitted & inlier]) - np.median(z[~fitted & inlier])
        assert abs(gap) < 0.25, (name, gap)
    # Another seed draws another subsample (one detector suffices to see it) and scores about as well.
    same = outlier_scores(x, method="robust_covariance", seed=3, max_fit=600)
    other = outlier_scores(x, method="robust_covariance", seed=4, max_fit=600)
    np.testing.assert_array_equal(same.z, res.per_detector["robust_covariance"])
    assert not np.array_equal(other.fit_index, res.fit_index)
    assert abs(_auc(other.z, kind) - _auc(same.z, kind)) < 0.03


def test_contamination_sets_the_threshold():
    x, kind = _features(1500, 4, seed=6)
    res = outlier_scores(x, method="isolation_forest", seed=0, contamination=0.1)
    assert abs(res.flags.mean() - 0.1) < 0.01
    assert np.mean(kind[res.flags] != INLIER) > 0.75
    assert res.report()["threshold_from"] == "contamination"


def test_robust_z_edge_cases():
    s = np.random.default_rng(7).standard_normal(20001)
    z = robust_z(s)
    assert abs(np.median(z)) < 1e-12
    assert abs(1.4826 * np.median(np.abs(z)) - 1.0) < 1e-9
    ties = np.r_[np.zeros(80), np.arange(1.0, 21.0)]  # MAD = 0: the standard deviation stands in
    assert np.all(np.isfinite(robust_z(ties))) and robust_z(ties)[-1] > 0
    np.testing.assert_array_equal(robust_z(np.full(10, 3.0)), np.zeros(10))
    assert np.array_equal(flag_outliers(np.array([2.9, 3.0, 3.1])), [False, False, True])


def test_constant_feature_dropped():
    rng = np.random.default_rng(8)
    x = np.c_[rng.standard_normal((200, 3)), np.full(200, 7.0)]
    res = outlier_scores(x, method="robust_covariance")
    assert res.n_features == 3 and np.all(np.isfinite(res.z))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"features": np.zeros((5, 3))},  # too few particles
        {"features": np.full((50, 2), np.nan)},
        {"features": np.ones((50, 2))},  # nothing varies
        {"features": np.zeros((4, 5, 6))},
        {"features": np.random.default_rng(1).standard_normal((20, 12))},  # covariance needs N > 2p
        {"method": "svm"},
        {"contamination": 0.6},
        {"max_fit": 5},
    ],
)
def test_bad_input(kwargs):
    args = {"features": np.random.default_rng(0).standard_normal((50, 3)), **kwargs}
    with pytest.raises(ValueError):
        outlier_scores(**args)
