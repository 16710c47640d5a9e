"""Sub-sample peaks: a sampled parabola's vertex is recovered exactly."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relion_canon.geometry import (
    parabolic_offset,
    periodic_peak,
    shift_peak,
    shift_peak_and_height,
    window_half_width,
    window_peak_and_height,
)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(8, 64), x0=st.floats(0.0, 1.0), curvature=st.floats(0.01, 10.0), height=st.floats(-5, 5),
       data=st.data())
def test_periodic_peak_recovers_the_vertex_of_a_sampled_parabola(n, x0, curvature, height, data):
    x0 = x0 * n
    k = torch.arange(n, dtype=torch.float64)
    d = torch.remainder(k - x0 + n / 2, n) - n / 2  # periodic distance to the vertex
    values = (height - curvature * d**2)[None]
    pos, top = periodic_peak(values)
    assert abs(math.remainder(float(pos[0]) - x0, n)) < 1e-9
    assert math.isclose(float(top[0]), height, abs_tol=1e-9 * max(1.0, curvature * n * n))


def test_no_offset_where_the_samples_are_not_a_maximum():
    # A minimum, a flat run, a straight line (curvature 0), and a maximum.
    ym, y0, yp = (torch.tensor(v) for v in ([1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.5]))
    torch.testing.assert_close(parabolic_offset(ym, y0, yp), torch.tensor([0.0, 0.0, 0.0, 1 / 6]))


@settings(max_examples=40, deadline=None)
@given(sx=st.floats(-4.4, 4.4), sy=st.floats(-4.4, 4.4))
def test_shift_peak_recovers_a_sub_pixel_shift(sx, sy):
    box = 32
    r = torch.fft.fftfreq(box, dtype=torch.float64) * box  # circular: shift 0 at index 0
    cc = (-(r[None, :] - sx) ** 2 - (r[:, None] - sy) ** 2)[None]
    got = shift_peak(cc, 6.5)[0]
    assert abs(float(got[0]) - sx) < 1e-9 and abs(float(got[1]) - sy) < 1e-9


def test_shift_peak_only_looks_within_max_shift():
    cc = torch.zeros(1, 16, 16)
    cc[0, 0, 5] = 10.0  # x = 5 px: too far
    cc[0, 2, 0] = 1.0  # y = 2 px
    got = shift_peak(cc, 3.0)[0]
    assert got.tolist() == [0.0, 2.0]


@settings(max_examples=40, deadline=None)
@given(sx=st.floats(-3.4, 3.4), sy=st.floats(-3.4, 3.4), height=st.floats(-5, 5))
def test_shift_peak_height_is_the_paraboloid_top(sx, sy, height):
    box = 32
    r = torch.fft.fftfreq(box, dtype=torch.float64) * box
    cc = (height - (r[None, :] - sx) ** 2 - 2 * (r[:, None] - sy) ** 2)[None]
    shift, top = shift_peak_and_height(cc, 5.0)
    assert abs(float(shift[0, 0]) - sx) < 1e-9 and abs(float(shift[0, 1]) - sy) < 1e-9
    assert abs(float(top[0]) - height) < 1e-9


def test_shift_peak_looks_only_within_the_allowed_shift():
    box = 32
    cc = torch.zeros(1, box, box, dtype=torch.float64)
    cc[0, 10, 10] = 9.0  # a higher peak beyond the allowed shift
    cc[0, 2, box - 1] = 1.0  # shift (x, y) = (−1, 2)
    shift, top = shift_peak_and_height(cc, 3.0)
    assert shift[0].tolist() == [-1.0, 2.0] and float(top[0]) == 1.0


@settings(max_examples=40, deadline=None)
@given(sx=st.floats(-1.4, 1.4), sy=st.floats(-1.4, 1.4), max_shift=st.floats(2.5, 4.0))
def test_a_window_gives_the_peak_of_the_whole_correlation(sx, sy, max_shift):
    box = 16
    r = torch.fft.fftfreq(box, dtype=torch.float64) * box
    cc = (1.0 - (r[None, :] - sx) ** 2 - 0.5 * (r[:, None] - sy) ** 2)[None]
    h = window_half_width(max_shift)
    window = cc[:, torch.arange(-h, h + 1) % box][:, :, torch.arange(-h, h + 1) % box]
    shift, top = window_peak_and_height(window, max_shift, box)
    # The paraboloid's own vertex (its nearest sample well inside the allowed disk), not shift_peak_and_height,
    # which reads its window and calls this.
    torch.testing.assert_close(shift, torch.tensor([[sx, sy]], dtype=torch.float64))
    torch.testing.assert_close(top, torch.tensor([1.0], dtype=torch.float64))


def test_a_window_wider_than_the_period_looks_at_each_shift_once():
    # Period 4: shifts −2…1 are distinct; the window's −3 is +1 again, and is read first.
    period, max_shift = 4, 3.5
    h = window_half_width(max_shift)
    r = torch.arange(-h, h + 1)
    cc = torch.zeros(period, period, dtype=torch.float64)
    cc[0, 1] = 1.0  # shift (x, y) = (1, 0)
    window = cc[r % period][:, r % period][None]
    shift, _ = window_peak_and_height(window, max_shift, period)
    assert shift[0].tolist() == [1.0, 0.0]
