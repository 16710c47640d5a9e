"""`outside_density`: a particle's density outside its class's disc, and how far it lies above the typical."""

from __future__ import annotations

import numpy as np
import torch

from relion_canon.analysis.outside_density import (LOWPASS_SIGMA_A, excess_z, outside_power, outside_power_of,
                                                   particle_radius_px)

BOX, PIXEL_A = 64, 4.0


def _blob(sigma_px: float, x_px: float = 0.0, y_px: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    return np.exp(-((xx - x_px) ** 2 + (yy - y_px) ** 2) / (2 * sigma_px ** 2))


def test_the_particle_radius_holds_the_share_of_a_blobs_low_passed_power():
    sigma = 5.0
    # A Gaussian blob low-passed by a Gaussian is a Gaussian of σ² = σ_b² + σ_l²; its square, of σ²/2, holds
    # 1 − exp(−r² / σ²) of its power within r: 90 % at r = σ √ln 10.
    expected = np.sqrt((sigma ** 2 + (LOWPASS_SIGMA_A / PIXEL_A) ** 2) * np.log(10.0))
    radius = particle_radius_px(_blob(sigma), PIXEL_A)
    assert abs(radius - expected) < 1.0
    assert particle_radius_px(_blob(40.0), PIXEL_A) <= BOX / 2 - 2  # never the whole box


def test_a_second_copy_beside_the_particle_raises_its_outside_power_and_a_shift_does_not():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, (4, BOX, BOX))
    signal = 3.0 * np.stack([_blob(4.0), _blob(4.0, 5.0, -3.0), _blob(4.0) + _blob(4.0, 18.0, 10.0),
                             _blob(4.0)])
    images = torch.from_numpy(noise + signal)
    images[3] = 10.0 * images[0]  # scale carries no meaning: the ratio to the noise band removes it
    shift = torch.tensor([[0.0, 0.0], [5.0, -3.0], [0.0, 0.0], [0.0, 0.0]])
    power = outside_power(images, shift, torch.full((4,), 10.0), PIXEL_A).numpy()
    assert abs(power[1] - power[0]) < 0.5  # the particle followed to where the alignment put it
    assert abs(power[3] - power[0]) < 1e-9
    assert power[2] > power[0] + 1.0  # the aggregate's second copy lies outside the disc


def test_outside_power_of_batches_fills_every_particle():
    images = np.random.default_rng(1).normal(size=(5, BOX, BOX))

    def batches(which=None):
        yield np.array([0, 1, 2]), images[:3]
        yield np.array([3, 4]), images[3:]

    power = outside_power_of(batches, 5, np.zeros((5, 2)), 10.0, PIXEL_A)
    expected = outside_power(torch.from_numpy(images), torch.zeros(5, 2), torch.full((5,), 10.0), PIXEL_A).numpy()
    np.testing.assert_allclose(power, expected)


def test_the_excess_is_judged_against_the_typical_particle_at_its_defocus():
    rng = np.random.default_rng(2)
    defocus = rng.uniform(5000, 25000, 2000)
    power = -3.0 + 1.5 * (defocus - 5000) / 20000 + rng.normal(0.0, 0.1, 2000)
    defocus[0], power[0] = 5000.0, -3.0 + 1.0  # close to focus, with something beside it
    z = excess_z(power, defocus)
    plain = excess_z(power, None)
    assert z[0] > 5 and (z[1:] > 4).mean() < 0.001
    assert plain[0] < 2.5  # against all particles its excess is typical: only the trend shows it


def test_the_excess_is_judged_within_each_class():
    rng = np.random.default_rng(3)
    classes = np.repeat([1, 2], [540, 60])
    power = rng.normal(-3.0, 0.1, 600)
    power[classes == 2] += 0.6  # an elongated view: more of its own density lies outside its disc
    power[540] += 1.0  # an aggregate of that view
    plain, by_class = excess_z(power, None), excess_z(power, None, classes)
    assert (plain[541:] > 3.5).mean() > 0.5  # judged against every class, most of the elongated view is junk
    assert (by_class[541:] > 3.5).mean() < 0.02 and by_class[540] > 5
