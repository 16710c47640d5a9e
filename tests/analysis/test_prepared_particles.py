"""relion_canon.analysis.prepared_particles: the particles as the searches read them."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.analysis.alignment import AlignmentConfig, SearchGrid
from relion_canon.analysis.prepared_particles import PreparedParticles


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])
def test_the_rounds_subset_comes_in_batches_as_large_as_those_read(cache_bytes):
    # A subset of 1 in 20 has one or two particles in each batch of 32 read; held like that, every round would
    # pay a batch's fixed cost for each one or two particles.
    rng = np.random.default_rng(3)
    images = rng.standard_normal((640, 16, 16)).astype(np.float32)

    def batches(which=None):
        rows = np.arange(len(images)) if which is None else which
        for start in range(0, len(rows), 32):
            yield rows[start:start + 32], images[rows[start:start + 32]]

    subset = np.sort(rng.choice(len(images), 32, replace=False))
    grid = SearchGrid.build(16, AlignmentConfig())
    particles = PreparedParticles(batches, len(images), None, np.full(len(images), 2.0), grid, subset, cache_bytes)
    held = list(particles.for_rounds())
    assert [len(idx) for idx, *_ in held] == [32]
    np.testing.assert_array_equal(held[0][0], subset)
    # each particle still with its own image (no CTF: the weighted image is the image)
    np.testing.assert_allclose(held[0][1].numpy(), images[subset], atol=1e-5)
