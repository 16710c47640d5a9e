"""`refine.in_class_frame`: a class's angles turned into the class's own (input) frame."""

from __future__ import annotations

import numpy as np

from relion_canon.analysis.estimate.refine import in_class_frame
from relion_canon.geometry import wrap_deg


def test_in_class_frame_recovers_a_flip_and_an_offset():
    rng = np.random.default_rng(0)
    psi = rng.uniform(-180.0, 180.0, 200)
    given = wrap_deg(-psi - 70.0)
    framed, frame = in_class_frame(psi, given, None)
    assert frame["sign"] == -1
    np.testing.assert_allclose(wrap_deg(framed - given), 0.0, atol=1e-6)
    np.testing.assert_allclose(wrap_deg(framed - (frame["sign"] * psi - frame["offset_deg"])), 0.0, atol=1e-9)


def test_in_class_frame_fits_on_the_better_half_only():
    rng = np.random.default_rng(1)
    psi = rng.uniform(-180.0, 180.0, 200)
    given = wrap_deg(psi + 30.0)
    score = np.linspace(1.0, 0.0, 200)  # the second half matches the reference worst: junk
    given[100:] = rng.uniform(-180.0, 180.0, 100)
    framed, frame = in_class_frame(psi, given, score)
    assert frame["sign"] == 1 and abs(wrap_deg(np.array([frame["offset_deg"] + 30.0]))[0]) < 1e-6
    np.testing.assert_allclose(wrap_deg(framed[:100] - given[:100]), 0.0, atol=1e-6)


def test_origins_are_minus_the_shift_in_angstrom():
    from relion_canon.analysis.estimate.refine import origin_A

    # A particle whose centre sits 2 px right of box//2 at 1.5 Å/px has RELION origin −3 Å (RELION moves
    # content by −origin to centre it).
    got = origin_A(np.array([[2.0, -1.0], [0.0, 0.5]]), np.array([1.5, 2.0]))
    np.testing.assert_allclose(got, [[-3.0, 1.5], [0.0, -1.0]])
