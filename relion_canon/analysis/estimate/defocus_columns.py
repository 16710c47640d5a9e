"""Stage 3: each particle's defocus: the CTF fit to the reference where refinement made one for every
particle, else paper B's latent radius mapped onto the known defocus distribution; paper B's estimate is
written beside it for comparison, and the weight is derived from the chosen one."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relion_canon.analysis.defocus import defocus_from_radius, weight_from_defocus
from relion_canon.analysis.latent_angle import polar_readout

log = logging.getLogger(__name__)


@dataclass
class DefocusColumns:
    """``rlnCanonDefocus``, ``rlnCanonDefocusLatent`` and ``rlnParticleFigureOfMerit`` (none of them when
    there is nothing to map onto), and the report's "defocus" entry."""

    report: dict[str, Any]
    columns: dict[str, np.ndarray] = field(default_factory=dict)


def estimate_defocus(latent: np.ndarray, defocus_fit_A: np.ndarray, defocus_input_A: np.ndarray | None,
                     defocus_range_A: tuple[float, float] | None) -> DefocusColumns:
    """Defocus per particle from the ``latent`` (paper B) and the fit to the reference (NaN where none)."""
    if defocus_input_A is None and defocus_range_A is None:
        # No CTF in the STAR and no range given (e.g. negative stain, or images without CTF): nothing to map
        # the latent onto, so no defocus, and no weight derived from it.
        log.info("No defocus estimate: the particles have no rlnDefocusU/V and no defocus range was given")
        return DefocusColumns({"method": None, "reason": "the particles have no CTF parameters and no range was given"})
    _, radius = polar_readout(latent)
    defocus_latent = defocus_from_radius(radius, reference_defocus=defocus_input_A, defocus_range=defocus_range_A)
    use_fit = bool(np.all(np.isfinite(defocus_fit_A)))
    defocus = defocus_fit_A if use_fit else defocus_latent
    return DefocusColumns(
        {"method": "ctf_fit_to_reference" if use_fit else "latent_radius_quantiles"},
        {"rlnCanonDefocus": defocus, "rlnCanonDefocusLatent": defocus_latent,
         "rlnParticleFigureOfMerit": weight_from_defocus(defocus)},
    )
