"""Sub-sample peak positions: a parabola through the maximum sample and its two neighbours."""

from __future__ import annotations

import math

import torch


def parabolic_offset(y_minus: torch.Tensor, y_peak: torch.Tensor, y_plus: torch.Tensor) -> torch.Tensor:
    """Offset (samples, in [−½, ½]) of the vertex of the parabola through (−1, y_minus), (0, y_peak),
    (1, y_plus) from the middle sample; 0 where the three do not make a maximum (curvature ≥ 0)."""
    denom = y_minus - 2 * y_peak + y_plus
    return torch.where(denom < 0, 0.5 * (y_minus - y_plus) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)


def parabolic_height(y_minus: torch.Tensor, y_peak: torch.Tensor, y_plus: torch.Tensor,
                     offset: torch.Tensor) -> torch.Tensor:
    """Height of that parabola at ``offset`` (its vertex for :func:`parabolic_offset`'s)."""
    return y_peak - 0.25 * (y_minus - y_plus) * offset


def periodic_peak(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-sample position (samples, in [−½, n − ½)) and height of the maximum of each row of a periodic
    (b, n) signal."""
    n = values.shape[-1]
    i = values.argmax(dim=-1)
    rows = torch.arange(values.shape[0])
    y0, ym, yp = values[rows, i], values[rows, (i - 1) % n], values[rows, (i + 1) % n]
    delta = parabolic_offset(ym, y0, yp)
    return i.to(values.dtype) + delta, parabolic_height(ym, y0, yp, delta)


def shift_peak(cc: torch.Tensor, max_shift_px: float) -> torch.Tensor:
    """(b, H, W) circular cross-correlation (zero shift at [0, 0]) → (b, 2) shift (x, y) px of its peak
    within ``max_shift_px``, refined per axis by a parabola."""
    return shift_peak_and_height(cc, max_shift_px)[0]


def shift_peak_and_height(cc: torch.Tensor, max_shift_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`shift_peak`'s (b, 2) shift and the (b,) height of ``cc`` there (the sum of the two per-axis
    parabolas' rises over the peak sample)."""
    size = cc.shape[-1]
    offsets = torch.arange(-window_half_width(max_shift_px), window_half_width(max_shift_px) + 1) % size
    return window_peak_and_height(cc[:, offsets][:, :, offsets], max_shift_px, size)


def window_half_width(max_shift_px: float) -> int:
    """Half the side of the window of shifts (samples) that :func:`window_peak_and_height` reads for a peak
    within ``max_shift_px``: the allowed shifts and a neighbour beyond them for the parabolas."""
    return int(math.floor(max_shift_px)) + 1


def window_peak_and_height(window: torch.Tensor, max_shift_px: float,
                           period: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`shift_peak_and_height` of a (b, 2h + 1, 2h + 1) window of a cross-correlation, its samples at
    shifts −h…h per axis (h = :func:`window_half_width`): the peak within ``max_shift_px`` and, for a
    circular correlation of ``period`` samples, within [−period/2, period/2) (the shifts it tells apart)."""
    b, w = window.shape[0], window.shape[-1]
    h = w // 2
    r = torch.arange(-h, h + 1, dtype=window.dtype)
    allowed = (r[:, None] ** 2 + r[None, :] ** 2) <= max_shift_px**2
    if period is not None:
        distinct = (r >= -(period // 2)) & (r < period - period // 2)
        allowed &= distinct[:, None] & distinct[None, :]
    allowed[[0, -1], :] = False  # the outer samples are only neighbours
    allowed[:, [0, -1]] = False
    k = window.masked_fill(~allowed, float("-inf")).reshape(b, -1).argmax(dim=-1)
    iy, ix = k // w, k % w
    rows = torch.arange(b)
    y0 = window[rows, iy, ix]
    xm, xp = window[rows, iy, ix - 1], window[rows, iy, ix + 1]
    ym, yp = window[rows, iy - 1, ix], window[rows, iy + 1, ix]
    dx, dy = parabolic_offset(xm, y0, xp), parabolic_offset(ym, y0, yp)
    height = parabolic_height(xm, y0, xp, dx) + parabolic_height(ym, y0, yp, dy) - y0
    return torch.stack([r[ix] + dx, r[iy] + dy], dim=-1), height
