"""The in-plane angle a model gives each particle, in RELION's units and conventions."""

from __future__ import annotations

import numpy as np

from relion_canon.analysis.latent_angle import polar_readout
from relion_canon.geometry import wrap_deg


def psi_degrees(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """In-plane angle per particle in degrees, [−180, 180), RELION's psi convention.

    Models with an angle head (or latent) give it directly; otherwise (VAE-GAN) it is the polar angle of
    the latent's first two principal components (paper B).
    """
    if "psi" in outputs:
        return wrap_deg(np.rad2deg(outputs["psi"]))
    angle, _ = polar_readout(outputs["latent"])
    return wrap_deg(np.rad2deg(angle))
