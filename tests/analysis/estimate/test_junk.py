"""`junk`: the outlier detectors' features and the flag."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from relion_canon.analysis.estimate.junk import find_junk, junk_by_alignment_score, outlier_features
from relion_canon.analysis.estimate.timing import Clock


def test_features_without_refinement_are_the_latents_principal_components():
    latent = np.random.default_rng(0).normal(size=(30, 8))
    nan = np.full(30, np.nan)
    features = outlier_features(latent, nan, nan, nan, None)
    assert features.shape == (30, 3)  # as many components as 30 particles support (N // 10)


def test_features_with_refinement_and_ctf_fit():
    rng = np.random.default_rng(1)
    latent, score, peak, fit = rng.normal(size=(40, 4)), rng.random(40), rng.random(40), rng.random(40) * 1e4
    assert outlier_features(latent, score, peak, fit, None).shape == (40, 3)
    features = outlier_features(latent, score, peak, fit, fit + 100.0)
    assert features.shape == (40, 5)
    np.testing.assert_allclose(features[:, 4], 100.0)


def test_find_junk_flags_above_the_threshold_and_reports_it():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(200, 3))
    features[:10] += 8.0
    clock = Clock()
    junk = find_junk(features, "iforest", 2.5, 0, clock)
    np.testing.assert_array_equal(junk.flag, junk.z > 2.5)
    assert set(junk.per_detector) == {"isolation_forest"} and junk.flag[:10].all()
    assert junk.report["threshold"] == 2.5 and junk.report["n_flagged"] == int(junk.flag.sum())
    # The threshold is the job's option, not the detectors' own default of 3.
    assert junk.report["threshold_from"] == "outlier_threshold"
    assert "outliers" in clock.seconds


def test_the_alignment_score_flags_particles_far_below_the_typical_one():
    score = np.r_[np.random.default_rng(3).normal(0.5, 0.01, 100), 0.2]
    junk = junk_by_alignment_score(score, 4.0)
    assert junk.flag[-1] and junk.flag.sum() == 1
    assert junk.report["threshold"] == 4.0 and junk.report["threshold_from"] == "outlier_threshold"


def test_a_class_whose_halves_disagree_more_than_its_size_allows_is_junk():
    from relion_canon.analysis.estimate.junk import agreement_shortfall, junk_class_mask

    sizes = np.array([1400.0, 1400.0, 300.0, 2100.0])
    snr = 0.35 * sizes  # one SNR per particle: classes of one view, whatever their size
    agreement = snr / (1 + snr)
    agreement[3] = 0.96  # mixed junk: sharp enough average, well-matched particles, halves that disagree
    shortfall = agreement_shortfall(sizes, agreement)
    np.testing.assert_allclose(shortfall[:3], 1.0, rtol=1e-6)  # the small view is as expected for its size
    assert shortfall[3] > 20
    resolution, score = np.full(4, 12.0), np.full(4, 0.06)  # the other two tests see nothing
    assert junk_class_mask(sizes, resolution, score, agreement).tolist() == [False, False, False, True]


def test_one_class_or_halves_that_anticorrelate():
    from relion_canon.analysis.estimate.junk import agreement_shortfall

    assert agreement_shortfall(np.array([500.0]), np.array([0.99])).tolist() == [1.0]
    shortfall = agreement_shortfall(np.array([1000.0, 1000.0, 200.0]), np.array([0.998, 0.998, -0.2]))
    assert shortfall[2] > 50 and np.all(np.isfinite(shortfall))


def _views_and_a_decoy(n_views: int) -> np.ndarray:
    from relion_canon.geometry.projection import FourierProjector
    from relion_canon.simulate.phantom import DECOY_SEED, PARTICLE_SEED, phantom_volume

    rot, tilt = np.linspace(0, 300, n_views), np.linspace(10, 160, n_views)
    own = FourierProjector(phantom_volume(64, seed=PARTICLE_SEED)).project(rot, tilt, np.zeros(n_views))
    decoy = FourierProjector(phantom_volume(64, seed=DECOY_SEED)).project([40.0], [70.0], [0.0])
    return np.concatenate([own, decoy])


def test_a_class_that_shares_no_central_line_with_the_others_is_junk():
    from relion_canon.analysis.estimate.junk import classes_apart

    averages = _views_and_a_decoy(5)
    sizes = np.array([900.0, 800, 700, 600, 500, 400])
    assert classes_apart(averages, sizes, np.ones(6, bool)).tolist() == [False] * 5 + [True]
    # Classes already found junk take no part, and an empty class is not judged.
    assert not classes_apart(averages, sizes, np.r_[np.ones(5, bool), False]).any()
    sizes[5] = 0
    assert not classes_apart(averages, sizes, np.ones(6, bool)).any()
    # Too few classes to know what is typical.
    assert not classes_apart(averages[3:], np.full(3, 500.0), np.ones(3, bool)).any()


def test_common_line_shortfalls_need_a_margin_as_well_as_a_ratio():
    from relion_canon.analysis.estimate.junk import line_inconsistency

    scores = np.full((6, 6), 0.999)
    scores[5, :5] = scores[:5, 5] = 0.99  # ten times the typical shortfall, but only 0.009 in all
    _, shortfall, apart = line_inconsistency(scores, np.full(6, 100.0), np.ones(6, bool))
    assert shortfall[5] == pytest.approx(10.0, rel=0.01) and not apart.any()
    scores[5, :5] = scores[:5, 5] = 0.9
    assert line_inconsistency(scores, np.full(6, 100.0), np.ones(6, bool))[2].tolist() == [False] * 5 + [True]


def test_junk_classes_report_their_common_line_figures():
    from relion_canon.analysis.estimate.junk import junk_classes

    averages = dict(enumerate(_views_and_a_decoy(5), start=1))
    classes = {n: np.arange(100 * (n - 1), 100 * n) for n in averages}
    score = np.full(600, 0.06)
    marked, figures = junk_classes(classes, dict.fromkeys(averages, 12.0), score, dict.fromkeys(averages, 0.99),
                                   averages)
    assert [n for n, j in marked.items() if j] == [6]
    assert figures[6]["common_line_shortfall"] >= 2.5 > max(figures[n]["common_line_shortfall"] for n in range(1, 6))
    assert junk_classes(classes, dict.fromkeys(averages, 12.0), score, dict.fromkeys(averages, 0.99))[1] == {}


def test_the_alignment_score_is_judged_at_each_particles_defocus():
    rng = np.random.default_rng(4)
    defocus = rng.uniform(5000, 25000, 2000)
    score = 0.01 + 0.05 * (defocus - 5000) / 20000 + rng.normal(0, 0.004, 2000)
    junk = np.zeros(2000, bool)
    junk[:100] = True
    score[:100] = rng.normal(0.0, 0.004, 100)  # junk matches nothing, whatever its defocus
    by_defocus = junk_by_alignment_score(score, 2.5, defocus)
    plain = junk_by_alignment_score(score, 2.5)
    # Close to focus a good particle scores as low as junk does: only the trend tells them apart.
    assert by_defocus.flag[junk].mean() > plain.flag[junk].mean() + 0.3
    assert by_defocus.flag[~junk].mean() < 0.02
    assert by_defocus.report["by_defocus"] and not plain.report["by_defocus"]


def test_the_detectors_see_the_score_and_peak_less_their_trend_with_defocus():
    rng = np.random.default_rng(5)
    defocus = rng.uniform(5000, 25000, 2000)
    trend = 0.01 + 0.05 * (defocus - 5000) / 20000
    score, peak = trend + rng.normal(0, 0.004, 2000), 3 * trend + rng.normal(0, 0.01, 2000)
    features = outlier_features(rng.normal(size=(2000, 4)), score, peak, defocus, defocus)
    for column, raw in ((0, score), (3, peak)):
        assert abs(np.corrcoef(raw, defocus)[0, 1]) > 0.9
        assert abs(np.corrcoef(features[:, column], defocus)[0, 1]) < 0.15
    # Without a defocus the columns are the score and peak themselves, shifted.
    plain = outlier_features(rng.normal(size=(2000, 4)), score, peak, defocus, None)
    np.testing.assert_allclose(plain[:, 0] - plain[0, 0], score - score[0])


def test_density_outside_the_disc_flags_a_particle_that_matches_its_class_and_leaves_the_rest_alone():
    rng = np.random.default_rng(6)
    score = rng.normal(0.5, 0.01, 500)
    # Evenly spread quantiles: no good particle's excess reaches the threshold by chance (at most z = 2.33).
    outside = -3.0 + 0.1 * norm.ppf(np.linspace(0.01, 0.99, 500))[rng.permutation(500)]
    outside[0] += 1.0  # an aggregate: a well-matched view with a neighbour beside it
    plain = junk_by_alignment_score(score, 2.5)
    both = junk_by_alignment_score(score, 2.5, None, outside)
    assert both.flag[0] and not plain.flag[0] and both.z[0] > 5
    assert both.report["n_flagged_by_outside_density"] == 1
    assert both.report["method"] == "alignment_score+outside_density" and set(both.per_detector) == {
        "alignment_score", "outside_density"}
    # Below the threshold the second test does not touch the score: its ranking stays the correlation's.
    np.testing.assert_array_equal(both.z[1:], plain.z[1:])
    np.testing.assert_array_equal(junk_by_alignment_score(score, 2.5, None, np.full(500, np.nan)).z, plain.z)
