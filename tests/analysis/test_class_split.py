"""relion_canon.analysis.class_split: a class of two views is found and split along the views; a class of one
view is left whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relion_canon.analysis.class_split import SPLIT_FACTOR, split_test
from relion_canon.analysis.alignment import AlignmentConfig
from relion_canon.analysis.classification import ClassificationConfig
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

from tests.analysis.test_classification import _classify, _classify_with

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _noise(n: int, p: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    # Coefficients of unequal power (CTF, noise spectrum), as the residuals have.
    return torch.from_numpy(rng.standard_normal((n, p)) * rng.uniform(0.2, 3.0, p))


def test_noise_alone_is_not_split():
    for seed in range(3):
        result = split_test(np.arange(300), _noise(300, 400, seed), seed)
        assert result.ratio < SPLIT_FACTOR, result.ratio
        assert not result.splits


def test_a_few_particles_unlike_the_rest_do_not_make_a_second_view():
    # A class of one view holding a few junk particles: each residual of those is large (an aggregate, say)
    # and unlike the others'. Every such particle is a direction of large variance on its own; the test must
    # not read the largest of them as a second view.
    for seed in range(3):
        x = _noise(300, 400, seed)
        rng = np.random.default_rng(seed)
        junk = rng.choice(300, 8, replace=False)
        x[junk] *= torch.from_numpy(rng.uniform(3.0, 6.0, (8, 1)))
        result = split_test(np.arange(300), x, seed)
        assert result.ratio < SPLIT_FACTOR, result.ratio


def test_two_views_are_found_and_parted():
    n, p = 300, 400
    rng = np.random.default_rng(1)
    view = rng.integers(0, 2, n).astype(bool)
    # The residuals of two views against their blend: ± half their difference, weak against the noise in
    # every coefficient (0.25 of its standard deviation) but present in all of them.
    x = _noise(n, p, 2)
    difference = torch.from_numpy(rng.choice([-1.0, 1.0], p)) * x.std(dim=0) * 0.25
    x += torch.from_numpy(np.where(view, 1.0, -1.0))[:, None] * difference
    result = split_test(np.arange(n), x, 0)
    assert result.splits, result.ratio
    agreement = np.mean(result.side == view)
    assert max(agreement, 1 - agreement) >= 0.95


def test_classes_started_as_one_end_as_one_per_view(tmp_path):
    # One starting class for two views: without the split the refinement keeps a blend of both.
    simulate_dataset(SimulationConfig(n_particles=240, box=32, pixel_size=5.0, views=2, snr=0.5, junk_fraction=0.0,
                                      seed=8), tmp_path / "sim")
    view = read_ground_truth(tmp_path / "sim")["rlnCanonViewId"].to_numpy()
    whole = _classify(tmp_path / "sim", ClassificationConfig(n_classes=1, split_passes=0))
    assert whole.n_classes == 1
    found = _classify(tmp_path / "sim", ClassificationConfig(n_classes=1))
    assert found.n_classes == 2
    assert whole.splits == [] and found.splits[0]["n_split"] == 1
    assert found.splits[0]["residual_ratios"][0] >= SPLIT_FACTOR
    purity = sum(np.bincount(view[found.class_index == c]).max() for c in range(found.n_classes)) / len(view)
    assert purity >= 0.95, purity


def test_a_class_the_junk_rule_marks_is_not_split(tmp_path):
    # The same two views in one starting class, split above; a class the junk rule calls junk is left whole:
    # its particles are unlike one another by nature, and its parts would each be judged anew as junk.
    simulate_dataset(SimulationConfig(n_particles=240, box=32, pixel_size=5.0, views=2, snr=0.5, junk_fraction=0.0,
                                      seed=8), tmp_path / "sim")
    calls = []

    def all_junk(sizes, resolution_A, median_score, half_agreement):
        calls.append(len(sizes))
        return np.ones(len(sizes), dtype=bool)

    found = _classify_with(tmp_path / "sim", ClassificationConfig(n_classes=1), all_junk)
    assert calls, "the junk rule was never asked"
    assert found.n_classes == 1 and found.splits == []


def test_three_views_are_split_out_of_one_class_on_a_subset(tmp_path):
    # With more particles than the rounds use, the rounds run on a subset: the split parts the subset's
    # particles, and the passes over all particles then place the rest.
    simulate_dataset(SimulationConfig(n_particles=600, box=32, pixel_size=5.0, views=3, snr=0.5, junk_fraction=0.0,
                                      seed=9), tmp_path / "sim")
    view = read_ground_truth(tmp_path / "sim")["rlnCanonViewId"].to_numpy()
    config = ClassificationConfig(n_classes=1, alignment=AlignmentConfig(max_shift=5.0, reference_particles=100))
    found = _classify(tmp_path / "sim", config)
    assert found.n_classes == 3
    purity = sum(np.bincount(view[found.class_index == c]).max() for c in range(found.n_classes)) / len(view)
    assert purity >= 0.95, purity
