"""Whether class averages are views of one molecule: common lines.

By the central-section theorem the 2-D transform of a projection is a central plane of the molecule's 3-D
transform, and any two central planes meet in a line through the origin. So any two projections of one
molecule share a central line of their transforms (up to a shift of the images along it), whatever their
views; projections of another molecule share none with them. Each pair of class averages is scored by its
best-matching pair of central lines: the normalised correlation of the two lines over a band of
frequencies, at the best pair of angles and relative shift along the line. A class of another molecule (or of
junk whose average only looks like a particle) matches the other classes at chance level, while classes of
one view each match one another as well as their averages' noise allows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from relion_canon.geometry import polar_grid, sample_polar, soft_circular_mask

# The band of the lines, as fractions of the box (cycles per box / box): below it every compact particle's
# transform looks alike; above it class averages at low SNR hold little but noise.
BAND_FRACTION = (0.047, 0.19)
ANGLE_STEP_DEG = 2.0
# The relative shift along a line that is searched (a fraction of the box), and its step (px): class averages
# are centred by their own references, not on one 3-D origin.
MAX_SHIFT_FRACTION = 0.047
SHIFT_STEP_PX = 0.5
_MASK_RADIUS_FRACTION = 0.45


def central_lines(images: torch.Tensor, radii_px: tuple[int, int], n_angles: int) -> torch.Tensor:
    """(K, n_angles, R) complex: the 2-D transforms of (K, box, box) images sampled along half-lines from the
    origin at angles 2πk/n_angles, at the whole-pixel radii ``radii_px[0]`` … ``radii_px[1]`` (R of them)."""
    k, box, _ = images.shape
    spectra = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1))), dim=(-2, -1))
    _, grid = polar_grid(box, radii_px[1], n_angles)
    parts = sample_polar(torch.cat([spectra.real, spectra.imag]).float(), grid[radii_px[0] - 1:])
    return torch.complex(parts[:k], parts[k:]).transpose(1, 2)


def common_line_scores(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """(K, K) symmetric: for each pair of (K, box, box) class averages the normalised correlation of their
    best-matching central lines (1 on the diagonal). The lines are whitened by their mean power over all
    images at each frequency, so that every frequency of the band counts alike."""
    data = torch.tensor(np.asarray(images, dtype=np.float32))
    k, box, _ = data.shape
    mask = torch.tensor(soft_circular_mask(box, _MASK_RADIUS_FRACTION * box))
    data = (data - data.mean(dim=(1, 2), keepdim=True)) * mask
    radii = (max(1, round(BAND_FRACTION[0] * box)), max(2, round(BAND_FRACTION[1] * box)))
    n_angles = round(360.0 / ANGLE_STEP_DEG)
    lines = central_lines(data, radii, n_angles)
    lines = lines / torch.sqrt((lines.abs() ** 2).mean(dim=(0, 1))).clamp(min=1e-12)
    lines = lines / torch.linalg.vector_norm(lines, dim=2, keepdim=True).clamp(min=1e-12)
    r = torch.arange(radii[0], radii[1] + 1, dtype=torch.float32)
    max_shift = max(SHIFT_STEP_PX, MAX_SHIFT_FRACTION * box)
    shifts = torch.arange(-max_shift, max_shift + 1e-6, SHIFT_STEP_PX)
    phase = torch.exp(-2j * math.pi * shifts[:, None] * r[None, :] / box)  # (shifts, R)
    # A full line is a half-line and its opposite, the complex conjugate: so the first image's half-lines
    # over 180° against the second's over 360° meet every pair of full lines.
    half = lines[:, : n_angles // 2]
    fixed = torch.cat([half.real, half.imag], dim=2)  # (K, T/2, 2R): Re(a* b) = a_re b_re + a_im b_im
    moved = lines[:, None] * phase[None, :, None, :]  # (K, shifts, T, R)
    moved = torch.cat([moved.real, moved.imag], dim=3).reshape(k, -1, 2 * len(r))
    scores = np.eye(k)
    for i in range(k - 1):
        best = torch.einsum("ar,jbr->jab", fixed[i], moved[i + 1:]).amax(dim=(1, 2))
        scores[i, i + 1:] = scores[i + 1:, i] = best.double().numpy()
    return scores


def line_consistency(scores: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """(K,) each class's median common-line score with the ``judged`` (K,) bool classes other than itself
    (NaN where there are none)."""
    k = len(scores)
    out = np.full(k, np.nan)
    for c in range(k):
        partners = judged.copy()
        partners[c] = False
        if partners.any():
            out[c] = float(np.median(scores[c, partners]))
    return out
