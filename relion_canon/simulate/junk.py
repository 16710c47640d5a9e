"""Junk particles: what a picker also picks. Each kind is built as a clean, CTF-free image in the particle's
image frame; the dataset code then applies the particle's CTF and noise like for any other particle.

Kinds:

* ``noise``: nothing but noise (an empty pick).
* ``other_molecule``: a different molecule (the phantom with another seed), in a random orientation.
* ``carbon_edge``: the edge of the support film (a smooth step) on an ice-thickness gradient, no particle.
* ``off_centre``: the particle displaced by 30-45 % of the box, so part of it falls outside the box.
* ``aggregate``: two copies of the particle in different orientations, touching.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

JUNK_KINDS: tuple[str, ...] = ("noise", "other_molecule", "carbon_edge", "off_centre", "aggregate")
NOT_JUNK = "none"

# How far junk displaces a particle (off_centre) or the two copies (aggregate), as a fraction of the box.
DISPLACEMENT_RANGE = (0.3, 0.45)


def displace(images: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Move each image's content by whole pixels (dx right, dy down the rows), filling with zeros: unlike a
    Fourier shift nothing wraps around, so what leaves the box is lost, as at a micrograph-box edge."""
    out = np.zeros_like(images)
    box_y, box_x = images.shape[-2:]
    for i, (sx, sy) in enumerate(zip(np.rint(dx).astype(int), np.rint(dy).astype(int))):
        if abs(sx) >= box_x or abs(sy) >= box_y:
            continue
        src_y = slice(max(0, -sy), box_y - max(0, sy))
        dst_y = slice(max(0, sy), box_y - max(0, -sy))
        src_x = slice(max(0, -sx), box_x - max(0, sx))
        dst_x = slice(max(0, sx), box_x - max(0, -sx))
        out[i, dst_y, dst_x] = images[i, src_y, src_x]
    return out


def carbon_edge(
    box: int,
    normal_deg: np.ndarray,
    offset: np.ndarray,
    width: np.ndarray,
    step: np.ndarray,
    gradient: np.ndarray,
    gradient_deg: np.ndarray,
    length: int | None = None,
) -> np.ndarray:
    """(n, box, box) images of a support-film edge: a smooth step of height ``step`` across the line at
    ``offset`` pixels from the centre along the normal at ``normal_deg``, ``width`` pixels wide, on a linear
    ice gradient that changes by ``gradient`` over ``length`` pixels (default: the box) along ``gradient_deg``."""
    c = np.arange(box, dtype=np.float64) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")

    def along(angle_deg: np.ndarray) -> np.ndarray:
        a = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))[:, None, None]
        return x[None] * np.cos(a) + y[None] * np.sin(a)

    d = along(normal_deg) - np.asarray(offset)[:, None, None]
    edge = np.asarray(step)[:, None, None] / (1.0 + np.exp(-d / np.asarray(width)[:, None, None]))
    ramp = np.asarray(gradient)[:, None, None] * along(gradient_deg) / (length or box)
    return (edge + ramp).astype(np.float32)


def rotate_images(images: np.ndarray, psi_deg: np.ndarray, order: int = 1) -> np.ndarray:
    """Rotate each image counter-clockwise (as displayed with row 0 at the top) by ``psi_deg`` about pixel
    ``box // 2``, the centre RELION rotates about; this is the rotation the psi angle applies.

    ``scipy.ndimage.rotate(img, psi, reshape=False)`` turns the same way but about ``(box - 1) / 2``,
    half a pixel off for even boxes.
    """
    out = np.empty_like(images)
    box = images.shape[-1]
    centre = np.array([box // 2, box // 2], dtype=np.float64)
    for i, angle in enumerate(np.deg2rad(np.asarray(psi_deg, dtype=np.float64))):
        c, s = np.cos(angle), np.sin(angle)
        # affine_transform maps output (row, col) to input coordinates: input = m @ output + offset.
        m = np.array([[c, s], [-s, c]])
        out[i] = ndimage.affine_transform(images[i], m, offset=centre - m @ centre, order=order, mode="constant")
    return out


def canonicalise(
    images: np.ndarray, psi_deg: np.ndarray, origin_px: np.ndarray, order: int = 1, out_size: int | None = None
) -> np.ndarray:
    """Undo origin and psi (product convention): shift by +origin, then rotate by −psi, about ``box // 2``.

    ``out_size`` crops the result to the central ``out_size``² (computed directly, not cropped afterwards).
    """
    n, box = len(images), images.shape[-1]
    size = out_size or box
    out = np.empty((n, size, size), dtype=images.dtype)
    centre_in = np.array([box // 2, box // 2], dtype=np.float64)
    centre_out = np.array([size // 2, size // 2], dtype=np.float64)
    for i, angle in enumerate(np.deg2rad(-np.asarray(psi_deg, dtype=np.float64))):
        c, s = np.cos(angle), np.sin(angle)
        m = np.array([[c, s], [-s, c]])
        # Output pixel o (row, col) reads the rotated-back image at m (o − centre) + centre, and that image is
        # the input moved by +origin, i.e. it reads the input at that point − (origin_y, origin_x).
        shift = np.array([origin_px[i, 1], origin_px[i, 0]])
        offset = centre_in - m @ centre_out - shift
        out[i] = ndimage.affine_transform(
            images[i], m, offset=offset, output_shape=(size, size), order=order, mode="constant"
        )
    return out
