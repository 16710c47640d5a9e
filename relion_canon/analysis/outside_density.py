"""Density outside the particle: the junk a correlation with the class average cannot see.

An aggregate (two particles touching) or a pick beside a neighbour holds one copy of the view well centred, so
it matches its class average as well as a lone particle does; what gives it away is density where the class
has none. Per particle: the power of its low-passed image outside the disc that holds the class average,
centred where the alignment put the particle, over the power of what the low-pass leaves out (mostly noise,
so the ratio does not depend on the image's scale or normalisation). The low band is where a particle's
signal stands above the noise at realistic SNR; a second copy there adds about as much power as the first.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from relion_canon.analysis.defocus_trend import median_at_defocus
from relion_canon.geometry import squared_distance_px

# Gaussian low-pass of this real-space width (Å): it keeps the band below about 1/(2π·8 Å) ≈ 1/50 Å, where a
# particle's shape lies; the finer bands are noise at the SNR of picked particles.
LOWPASS_SIGMA_A = 8.0
# The class's disc holds this share of its low-passed average's power about the box centre.
PARTICLE_POWER_SHARE = 0.9
# The disc never reaches closer than this to the box edge (px), so that every particle has an outside.
EDGE_MARGIN_PX = 2.0


def _lowpass(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """(n, B, B) images after a Gaussian low-pass of real-space width ``sigma_px``, applied in Fourier space
    (periodic, as the searches treat the box)."""
    box = images.shape[-1]
    fy = torch.fft.fftfreq(box, dtype=images.dtype)[:, None]
    fx = torch.fft.rfftfreq(box, dtype=images.dtype)[None, :]
    gain = torch.exp(-2.0 * np.pi ** 2 * sigma_px ** 2 * (fx ** 2 + fy ** 2))
    return torch.fft.irfft2(torch.fft.rfft2(images) * gain, s=images.shape[-2:])


def particle_radius_px(average: np.ndarray, pixel_size_A: float, share: float = PARTICLE_POWER_SHARE) -> float:
    """The radius (px) about the box centre (box//2) within which a (B, B) class average, low-passed, holds
    ``share`` of its power, measured from the level of its corners (beyond any circular mask: a flat surround
    carries no shape, and its power over the whole box would push the radius out)."""
    image = torch.as_tensor(np.asarray(average, dtype=np.float64))
    box = image.shape[-1]
    radius = torch.sqrt(squared_distance_px(box, torch.full((1, 2), float(box // 2), dtype=torch.float64))[0])
    level = image[radius > box / 2].mean()
    low = _lowpass((image - level)[None], LOWPASS_SIGMA_A / pixel_size_A)[0]
    order = torch.argsort(radius.flatten())
    power = (low ** 2).flatten()[order]
    cumulative = torch.cumsum(power, 0) / torch.clamp(power.sum(), min=1e-30)
    at = int(torch.searchsorted(cumulative, torch.tensor([share], dtype=torch.float64))[0])
    inside = float(radius.flatten()[order][min(at, len(order) - 1)])
    return min(inside, box / 2 - EDGE_MARGIN_PX)


def outside_power(images: torch.Tensor, shift_px: torch.Tensor, radius_px: torch.Tensor,
                  pixel_size_A: float) -> torch.Tensor:
    """(n,) log of each image's mean low-passed power outside the disc of ``radius_px`` (n,) about its centre
    (box//2 + ``shift_px``, (n, 2) x, y) over its mean power above the low-pass."""
    images = images.to(torch.float32)
    low = _lowpass(images, LOWPASS_SIGMA_A / pixel_size_A)
    box = images.shape[-1]
    centres = shift_px.to(torch.float32) + box // 2
    outside = squared_distance_px(box, centres) > (radius_px.to(torch.float32) ** 2)[:, None, None]
    beyond = (low ** 2 * outside).sum((-2, -1)) / torch.clamp(outside.sum((-2, -1)), min=1)
    noise = ((images - low) ** 2).mean((-2, -1))
    return torch.log(torch.clamp(beyond, min=1e-30) / torch.clamp(noise, min=1e-30)).to(torch.float64)


def outside_power_of(batches: Callable[..., Iterator[tuple[np.ndarray, np.ndarray]]], n: int, shift_px: np.ndarray,
                     radius_px: float, pixel_size_A: float) -> np.ndarray:
    """:func:`outside_power` of the ``n`` particles that ``batches`` yields as (positions, images), all about
    one class's disc of ``radius_px``."""
    power = np.full(n, np.nan)
    for positions, images in batches():
        power[positions] = outside_power(torch.from_numpy(np.asarray(images)), torch.from_numpy(shift_px[positions]),
                                         torch.full((len(positions),), radius_px), pixel_size_A).numpy()
    return power


def excess_z(power: np.ndarray, defocus_A: np.ndarray | None, classes: np.ndarray | None = None) -> np.ndarray:
    """(N,) how far each particle's outside power lies above the typical particle's at its defocus (the low
    band's power grows with defocus, as the CTF passes more of it) and, given each particle's ``classes``
    label, in its class (an elongated view leaves more of its own density outside its disc than a round
    one), in robust standard deviations."""
    power = np.asarray(power, dtype=np.float64)
    above = power - median_at_defocus(power, defocus_A)  # a log: the trend is a difference, not a ratio
    if classes is not None:
        classes = np.asarray(classes)
        for label in np.unique(classes):
            members = classes == label
            above[members] -= np.median(above[members])
    spread = 1.4826 * float(np.median(np.abs(above - np.median(above))))
    return above / max(spread, 1e-12)
