"""evaluation.frame: the canonical frame's global rotation and mirror are recovered, and the MSE has its scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_canon.analysis.evaluation.frame import (
    NORMALISATION,
    canonical_errors,
    fit_canonical_frame,
    normalise_in_mask,
    to_truth_frame,
)
from relion_canon.geometry import wrap_deg
from relion_canon.io.source import ParticleSource
from relion_canon.geometry import rotate_images
from tests.analysis.evaluation.helpers import mirror


@pytest.fixture(scope="module")
def clean_views(sim: Path, truth_table: pd.DataFrame) -> np.ndarray:
    good = np.flatnonzero(truth_table["rlnCanonIsJunk"].to_numpy() == 0)
    return ParticleSource.from_stack(sim / "ground_truth_clean.mrcs").read(good[:12]).astype(np.float64)


@pytest.mark.parametrize("rotation, mirrored", [(25.0, False), (-137.5, False), (63.0, True), (180.0, True)])
def test_canonical_frame_recovered(clean_views, rotation, mirrored):
    job = rotate_images(clean_views, np.full(len(clean_views), rotation), order=3)
    if mirrored:
        job = mirror(job)
    job = 2.0 * job - 7.0  # a job's intensities have their own scale and offset
    found, is_mirrored = fit_canonical_frame(job, clean_views)
    assert is_mirrored == mirrored
    assert abs(wrap_deg(found - rotation)) < 0.3
    mse = canonical_errors(job, clean_views, found, is_mirrored)
    assert mse.max() < 0.01
    # Without the alignment the same images are far off: the alignment, not the metric, makes them agree.
    assert canonical_errors(job, clean_views, 0.0, False).mean() > 0.1
    back = to_truth_frame(job, found, is_mirrored)
    y, x = np.mgrid[:32, :32] - 16
    disk = np.hypot(x, y) < 14  # the corners came from outside the box
    assert np.corrcoef(back[0][disk], clean_views[0][disk])[0, 1] > 0.995


def test_canonical_mse_scale(clean_views):
    # Normalised images: identical → 0; uncorrelated → about 2 (= 2·(1 − r)); sign-inverted → 4.
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1, clean_views.shape)
    assert canonical_errors(clean_views, clean_views, 0.0, False).max() < 1e-12
    assert canonical_errors(noise, clean_views, 0.0, False).mean() == pytest.approx(2.0, abs=0.2)
    assert canonical_errors(-clean_views, clean_views, 0.0, False).mean() == pytest.approx(4.0, abs=1e-9)
    norm = normalise_in_mask(clean_views)
    inside = norm[:, 16, 4:28]
    assert np.all(norm[:, 0, 0] == 0) and np.abs(inside).sum() > 0
    assert "unit variance" in NORMALISATION
