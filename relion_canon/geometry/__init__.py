"""Image geometry in RELION's conventions, implemented once: rotation and shift, angle wrapping, polar
sampling, circular masks, sub-sample peaks, correlation windows and Fourier rings.

Conventions (product.md): pixel coordinates are (x right, y down) with the origin at pixel (box//2,
box//2); a particle with angle ψ is its canonical image turned counter-clockwise by ψ as displayed with
row 0 at the top (``scipy.ndimage.rotate(img, +ψ)``, but about box//2). Units are in the names: ``_deg``,
``_rad``, ``_px``, ``_A`` (Å). Torch functions take batches; NumPy faces exist where callers hold arrays.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562), so that a caller of a NumPy face (``wrap_deg``) does not wait for torch.
_WHERE = {
    "wrap_deg": "angles",
    "wrap_rad": "angles",
    "correlation_window": "correlation",
    "correlation_windows": "correlation",
    "FRC_THRESHOLD": "fourier_rings",
    "column_multiplicity": "fourier_rings",
    "fourier_ring_correlation": "fourier_rings",
    "resolution_at_threshold_A": "fourier_rings",
    "ring_index": "fourier_rings",
    "ring_mean": "fourier_rings",
    "circular_mask": "masks",
    "soft_circular_mask": "masks",
    "squared_distance_px": "masks",
    "parabolic_height": "peaks",
    "parabolic_offset": "peaks",
    "periodic_peak": "peaks",
    "shift_peak": "peaks",
    "shift_peak_and_height": "peaks",
    "window_half_width": "peaks",
    "window_peak_and_height": "peaks",
    "polar_grid": "polar",
    "ring_points_px": "polar",
    "sample_polar": "polar",
    "sample_rings": "polar",
    "canonicalise": "rotation",
    "canonicalising_shift_px": "rotation",
    "rotate": "rotation",
    "rotate_images": "rotation",
    "turn_vectors": "rotation",
}

if TYPE_CHECKING:
    from relion_canon.geometry.angles import wrap_deg, wrap_rad
    from relion_canon.geometry.correlation import correlation_window, correlation_windows
    from relion_canon.geometry.fourier_rings import FRC_THRESHOLD, column_multiplicity, fourier_ring_correlation, resolution_at_threshold_A, ring_index, ring_mean
    from relion_canon.geometry.masks import circular_mask, soft_circular_mask, squared_distance_px
    from relion_canon.geometry.peaks import parabolic_height, parabolic_offset, periodic_peak, shift_peak, shift_peak_and_height, window_half_width, window_peak_and_height
    from relion_canon.geometry.polar import polar_grid, ring_points_px, sample_polar, sample_rings
    from relion_canon.geometry.rotation import canonicalise, canonicalising_shift_px, rotate, rotate_images, turn_vectors


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_WHERE)
