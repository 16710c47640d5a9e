"""`defocus_trend`: the typical score at each particle's defocus."""

from __future__ import annotations

import numpy as np

from relion_canon.analysis.defocus_trend import defocus_bins, score_at_defocus


def test_the_trend_follows_defocus_and_is_relative_to_the_median():
    rng = np.random.default_rng(0)
    defocus = rng.uniform(5000, 25000, 4000)
    score = 0.02 + 0.04 * (defocus - 5000) / 20000 + rng.normal(0, 0.005, 4000)
    trend = score_at_defocus(score, defocus)
    expected = (0.02 + 0.04 * (defocus - 5000) / 20000) / np.median(score)
    # Bins of 500 particles: the trend is a staircase that stays within half a bin's rise of the line.
    assert np.abs(trend - expected).max() < 0.6 * 0.04 / 8 / np.median(score) + 0.02
    assert trend[defocus < 7000].mean() < 0.6 < 1.4 < trend[defocus > 23000].mean()


def test_no_trend_without_defocus_or_with_few_particles():
    score = np.linspace(0.01, 0.05, 300)
    assert np.all(score_at_defocus(score, None) == 1.0)
    assert np.all(score_at_defocus(score, np.linspace(5000, 25000, 300)) == 1.0)  # one bin of 300
    many = np.linspace(0.01, 0.05, 1000)
    assert np.all(score_at_defocus(many, np.full(1000, 15000.0)) == 1.0)  # one defocus: one bin


def test_bins_are_quantiles_and_shared_values_stay_together():
    defocus = np.repeat([8000.0, 12000.0, 20000.0], [100, 500, 400])
    bins = defocus_bins(defocus, 4)
    for value in np.unique(defocus):
        assert len(np.unique(bins[defocus == value])) == 1
    assert np.all(np.diff(bins[np.argsort(defocus, kind="stable")]) >= 0)
    assert len(np.unique(defocus_bins(np.arange(1000.0), 5))) == 5
