"""relion_canon.analysis.class_rehome: the good particles of a junk class join their view's class; the junk stays."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from relion_canon.analysis.classification import ClassificationConfig
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

from tests.analysis.test_classification import _classify_with

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_good_particles_leave_junk_classes_and_junk_stays(tmp_path):
    # Far off-centre particles (3 px sd on a 32 px box) at SNR 0.1: several classes, and good particles in
    # classes other than their view's best.
    simulate_dataset(SimulationConfig(n_particles=300, box=32, pixel_size=5.0, snr=0.1, shift_sigma=15.0,
                                      junk_fraction=0.2, seed=11), tmp_path / "sim")
    junk = read_ground_truth(tmp_path / "sim")["rlnCanonIsJunk"].to_numpy().astype(bool)
    marked = []

    def every_class_but_the_best_is_junk(sizes, resolution_A, median_score, half_agreement):
        # As harsh as a rule can be: the good particles caught in other classes must find their way back.
        flags = np.arange(len(sizes)) != int(np.argmax(median_score * (sizes > 0)))
        marked.append(flags)
        return flags

    # No splits: this is the re-homing alone (the rule calls every class but one junk, so none would be tested).
    found = _classify_with(tmp_path / "sim", ClassificationConfig(n_classes=4, split_passes=0),
                           every_class_but_the_best_is_junk)
    assert marked and marked[0].sum() >= 1
    best = np.bincount(found.class_index[~junk]).argmax()
    # Without the second chance 62 % of the good particles end in the best class; with it, over 70 %.
    assert np.mean(found.class_index[~junk] == best) >= 0.7
    assert np.mean(found.class_index[junk] == best) <= 0.35
    # Particles too many to keep prepared in memory: re-homing reads just the junk classes' particles, to the
    # same end (up to the rounding of sums taken in other batches).
    config = ClassificationConfig(n_classes=4, split_passes=0)
    config = replace(config, alignment=replace(config.alignment, cache_bytes=0))
    streamed = _classify_with(tmp_path / "sim", config, every_class_but_the_best_is_junk)
    assert np.mean(streamed.class_index == found.class_index) >= 0.99
    # Classes that pass the junk rule but share no common line with the others (another molecule) are re-homed
    # alike: the apart rule sees only the classes the junk rule passed, with their averages.
    seen = []

    def no_junk(sizes, resolution_A, median_score, half_agreement):
        return np.zeros(len(sizes), dtype=bool)

    def every_judged_class_but_the_best_is_apart(averages, sizes, judged):
        seen.append((averages.shape, judged.copy()))
        return marked[-1] & judged

    apart = _classify_with(tmp_path / "sim", ClassificationConfig(n_classes=4, split_passes=0), no_junk,
                           every_judged_class_but_the_best_is_apart)
    assert seen and seen[0][0][0] == len(seen[0][1]) and seen[0][0][1] == seen[0][0][2]
    # The centring before the last pass leaves out the junk rule's classes only, so the two runs part before
    # the re-homing; it brings the good particles home the same.
    best_apart = np.bincount(apart.class_index[~junk]).argmax()
    assert np.mean(apart.class_index[~junk] == best_apart) >= 0.7
    assert np.mean(apart.class_index[junk] == best_apart) <= 0.35
