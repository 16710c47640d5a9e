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

__all__ = ["DISPLACEMENT_RANGE", "JUNK_KINDS", "NOT_JUNK", "carbon_edge", "displace"]

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
