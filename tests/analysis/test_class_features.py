"""relion_canon.analysis.class_features: invariant to turns, not to mirrors; k-means on them."""

from __future__ import annotations

import numpy as np
import torch

from relion_canon.analysis.alignment import AlignmentConfig, SearchGrid
from relion_canon.analysis.class_features import initial_classes, invariant_features
from relion_canon.geometry import rotate


def _blob_image(box: int = 32) -> torch.Tensor:
    y, x = np.mgrid[:box, :box] - box // 2
    img = np.exp(-((x - 4) ** 2 + (y + 2) ** 2) / 8.0) + 0.7 * np.exp(-((x + 3) ** 2 + (y - 5) ** 2) / 5.0) \
        + 0.5 * np.exp(-((x + 5) ** 2 + (y + 4) ** 2) / 3.0)
    return torch.from_numpy(img.astype(np.float32))


def _features(images: torch.Tensor) -> np.ndarray:
    grid = SearchGrid.build(images.shape[-1], AlignmentConfig())
    batch = [(np.arange(len(images)), images, images, torch.ones(len(images), grid.n_rings))]
    return invariant_features(batch, np.arange(len(images)), grid)


def test_the_features_of_some_rows_come_in_their_order_from_batches_of_only_those_rows():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.standard_normal((9, 32, 32)).astype(np.float32))
    grid = SearchGrid.build(32, AlignmentConfig())
    everyone = _features(images)
    rows = np.array([1, 4, 5, 8])
    weights = torch.ones(2, grid.n_rings)
    batches = [(rows[:2], images[rows[:2]], images[rows[:2]], weights),
               (rows[2:], images[rows[2:]], images[rows[2:]], weights)]
    some = invariant_features(batches, rows, grid)
    assert some.shape == (4, everyone.shape[1])
    np.testing.assert_allclose(some, everyone[rows], rtol=1e-6)


def test_a_turned_image_has_the_same_features_and_its_mirror_does_not():
    img = _blob_image()
    turned = rotate(img[None], torch.tensor([1.1]))[0]
    mirrored = torch.flip(img, dims=(1,))
    f = _features(torch.stack([img, turned, mirrored]))
    same = np.linalg.norm(f[0] - f[1]) / np.linalg.norm(f[0])
    mirror = np.linalg.norm(f[0] - f[2]) / np.linalg.norm(f[0])
    assert same < 0.05, same
    assert mirror > 4 * same, (mirror, same)


def test_kmeans_on_features_separates_two_views_whatever_their_angles():
    rng = np.random.default_rng(0)
    a, b = _blob_image(), torch.flip(_blob_image(), dims=(0,)) + 0.3 * _blob_image().T
    images = torch.stack([rotate((a if i % 2 else b)[None], torch.tensor([rng.uniform(-np.pi, np.pi)]))[0]
                          for i in range(60)])
    images = images + 0.05 * torch.from_numpy(rng.standard_normal(images.shape).astype(np.float32))
    labels = initial_classes(_features(images), 2, seed=0)
    truth = np.arange(60) % 2
    agreement = max((labels == truth).mean(), (labels != truth).mean())
    assert agreement == 1.0
    assert (initial_classes(_features(images), 1, seed=0) == 0).all()
