"""Image geometry in RELION's conventions, implemented once: rotation and shift, angle wrapping, polar
sampling, circular masks, sub-sample peaks and Fourier rings.

Conventions (product.md): pixel coordinates are (x right, y down) with the origin at pixel (box//2,
box//2); a particle with angle ψ is its canonical image turned counter-clockwise by ψ as displayed with
row 0 at the top (``scipy.ndimage.rotate(img, +ψ)``, but about box//2). Units are in the names: ``_deg``,
``_rad``, ``_px``, ``_A`` (Å). Torch functions take batches; NumPy faces exist where callers hold arrays.
"""

from relion_canon.geometry.angles import wrap_deg, wrap_rad
from relion_canon.geometry.fourier_rings import (
    FRC_THRESHOLD,
    fourier_ring_correlation,
    resolution_at_threshold_A,
    ring_index,
    ring_mean,
)
from relion_canon.geometry.masks import circular_mask, soft_circular_mask
from relion_canon.geometry.peaks import parabolic_height, parabolic_offset, periodic_peak, shift_peak
from relion_canon.geometry.polar import polar_grid, ring_points_px, sample_polar, sample_rings
from relion_canon.geometry.rotation import (
    canonicalise,
    canonicalising_shift_px,
    rotate,
    rotate_images,
    turn_vectors,
)

__all__ = [
    "FRC_THRESHOLD",
    "canonicalise",
    "canonicalising_shift_px",
    "circular_mask",
    "fourier_ring_correlation",
    "parabolic_height",
    "parabolic_offset",
    "periodic_peak",
    "polar_grid",
    "resolution_at_threshold_A",
    "ring_index",
    "ring_mean",
    "ring_points_px",
    "rotate",
    "rotate_images",
    "sample_polar",
    "sample_rings",
    "shift_peak",
    "soft_circular_mask",
    "turn_vectors",
    "wrap_deg",
    "wrap_rad",
]
