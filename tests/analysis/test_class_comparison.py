"""relion_canon.analysis.class_comparison: laying one class average onto another."""

from __future__ import annotations

import numpy as np
import torch

from relion_canon.analysis.alignment import AlignmentConfig, SearchGrid
from relion_canon.analysis.class_comparison import align_pairs, half_agreement
from relion_canon.geometry import rotate, wrap_rad


def _shape(box: int = 48) -> torch.Tensor:
    img = torch.zeros(box, box)
    img[14:22, 16:34] = 1
    img[22:34, 20:25] = 1
    return torch.nn.functional.avg_pool2d(img[None, None], 3, 1, 1)[0, 0]


def test_pair_alignment_recovers_a_known_turn_and_shift():
    img = _shape()
    moved = rotate(img[None], torch.tensor([0.9]), torch.tensor([[1.5, -2.0]]))[0]
    pairs = torch.tensor([0, 1]), torch.tensor([1, 0])  # (fixed, moving): each laid onto the other
    turn, shift, ncc = align_pairs(torch.stack([img, moved]), *pairs, SearchGrid.build(48, AlignmentConfig()))
    back = rotate(moved[None], turn[:1], shift[:1])[0]
    assert float(((back - img) ** 2).sum() / (img**2).sum()) < 0.02
    assert abs(float(wrap_rad(turn[0] + 0.9))) < 0.03
    assert ncc[0] > 0.98 and ncc[1] > 0.98


def test_a_mirror_image_is_not_laid_onto_the_original():
    img = _shape()
    mirrored = torch.flip(img, dims=(1,))
    _, _, ncc = align_pairs(torch.stack([img, mirrored]), torch.tensor([0]), torch.tensor([1]),
                            SearchGrid.build(48, AlignmentConfig()))
    assert ncc[0] < 0.9


def test_half_agreement_is_one_for_equal_halves_and_low_for_noise():
    rng = np.random.default_rng(1)
    img = _shape()
    noise = torch.from_numpy(rng.standard_normal((2, 48, 48)).astype(np.float32))
    halves = torch.stack([torch.stack([img, img]), noise])
    agreement = half_agreement(halves)
    assert float(agreement[0]) > 0.999 and abs(float(agreement[1])) < 0.1
