"""`common_lines`: central lines of 2-D transforms, and how well class averages share them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relion_canon.analysis.common_lines import central_lines, common_line_scores, line_consistency
from relion_canon.geometry.projection import FourierProjector
from relion_canon.simulate.phantom import DECOY_SEED, PARTICLE_SEED, phantom_volume

BOX = 64
VIEWS = [(0.0, 0.0), (40.0, 70.0), (130.0, 35.0), (250.0, 100.0), (300.0, 150.0), (80.0, 120.0)]


def _projections(seed: int, views: list[tuple[float, float]], psi: float = 0.0) -> np.ndarray:
    projector = FourierProjector(phantom_volume(BOX, seed=seed))
    rot, tilt = np.array(views).T
    return projector.project(rot, tilt, np.full(len(views), psi))


def test_a_central_line_is_the_transform_of_the_projection_across_it():
    """The 2-D central-section theorem pins the angle convention: the line at angle θ from +x (x right, y down)
    is the 1-D transform of the image summed along the perpendicular, onto the axis at θ."""
    image = torch.from_numpy(_projections(PARTICLE_SEED, [(30.0, 60.0)])[0]).double()
    lines = central_lines(image[None], (1, 8), 4)[0]  # angles 0°, 90°, 180°, 270°
    centred = torch.fft.ifftshift(image)
    along_x = torch.fft.fft(centred.sum(dim=0))[1:9]  # sum over y: the projection onto x
    along_y = torch.fft.fft(centred.sum(dim=1))[1:9]
    torch.testing.assert_close(lines[0].to(torch.complex128), along_x, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(lines[1].to(torch.complex128), along_y, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(lines[2], lines[0].conj())  # the opposite half-line: the conjugate


def test_views_of_one_molecule_share_lines_and_another_molecule_does_not():
    own = _projections(PARTICLE_SEED, VIEWS)
    other = _projections(DECOY_SEED, VIEWS[:2])
    scores = common_line_scores(np.concatenate([own, other]))
    assert scores.shape == (8, 8)
    np.testing.assert_allclose(scores, scores.T)
    np.testing.assert_allclose(np.diag(scores), 1.0)
    within = scores[:6, :6][~np.eye(6, dtype=bool)]
    assert within.min() > 0.97
    # Each of the other molecule's views falls short of 1 several times as far as the particle's views do.
    consistency = line_consistency(scores, np.ones(8, bool))
    assert (1 - consistency[6:]).min() > 4 * (1 - consistency[:6]).max()


def test_scores_do_not_depend_on_the_turn_or_a_small_shift_of_an_average():
    views = _projections(PARTICLE_SEED, VIEWS[:4])
    turned = _projections(PARTICLE_SEED, VIEWS[:4], psi=77.0)
    moved = np.roll(views[1], (1, -1), axis=(0, 1))
    base = common_line_scores(views)
    np.testing.assert_allclose(common_line_scores(turned), base, atol=0.02)
    again = common_line_scores(np.stack([views[0], moved, views[2], views[3]]))
    np.testing.assert_allclose(again, base, atol=0.03)


@pytest.mark.parametrize("judged", [np.zeros(3, bool), np.array([True, False, False])])
def test_consistency_needs_partners(judged):
    scores = np.full((3, 3), 0.9)
    out = line_consistency(scores, judged)
    if judged.any():
        assert np.isnan(out[0]) and np.allclose(out[1:], 0.9)
    else:
        assert np.isnan(out).all()
