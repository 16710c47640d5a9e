"""Per-particle estimates from model outputs, in RELION's units and conventions."""

from __future__ import annotations

import numpy as np

from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.analysis.metrics import wrap_degrees


def psi_degrees(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """In-plane angle per particle in degrees, [−180, 180), RELION's psi convention.

    Models with an angle head (or latent) give it directly; otherwise (VAE-GAN) it is the polar angle of
    the latent's first two principal components (paper B).
    """
    if "psi" in outputs:
        return wrap_degrees(np.rad2deg(outputs["psi"]))
    angle, _ = polar_readout(outputs["latent"])
    return wrap_degrees(np.rad2deg(angle))
