"""From each class's orientation to every particle's: the 3-D angles, priors and origins the STAR file gets.

A particle at ψ in its class's frame with centre t (px, the alignment's shift) is its class average turned by ψ
and moved by t; the class average is the projection at (rot, tilt, α) moved by s (:mod:`.matching`). Turns
about one centre add, and a turn carries a shift with it, so the particle is the projection at
(rot, tilt, α + ψ) moved by t + M(−ψ)·s, M the matrix of :func:`relion_canon.geometry.turn_vectors` (``rotate``
reads its input at M(ψ)(p − c), so content moves by M(ψ)ᵀ = M(−ψ); pinned by the test that remakes particles
from the written angles and origins). RELION's origin is minus that, in Å. Where the particle's own direction
was searched (:mod:`.particle_directions`), its angles are those of Rz(ψ + δ)·A_c·Q_dᵀ, and its centre is
carried by ψ + δ instead of ψ.

Particles of junk classes, of ambiguous classes and of classes without a match get no 3-D prior: rot and tilt
0, their in-class ψ kept, and the three prior columns :data:`NO_PRIOR` (999), which is RELION's own value for
"no prior". relion_refine fills absent prior columns with 999 and, for a particle whose prior is 999, centres
its local search on the particle's current angles instead (``src/ml_optimiser.cpp`` and
``src/acc/acc_ml_optimiser_impl.h``: "If there were no defined priors (i.e. their values were 999.), then use
the 'normal' angles"). Those particles therefore must not go into a local-search job as they are: select the
others with ``relion_star_handler --select rlnAngleTiltPrior --maxval 998``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from relion_canon.analysis.orientation.matching import ClassMatch
from relion_canon.analysis.orientation.particle_directions import ParticleDirections
from relion_canon.geometry import turn_vectors, wrap_deg
from relion_canon.io.star import NO_PRIOR

ORIENTATION_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnAngleRotPrior", "rlnAngleTiltPrior",
                       "rlnAnglePsiPrior")


@dataclass
class ParticleOrientations:
    rot_deg: np.ndarray  # (N,)
    tilt_deg: np.ndarray
    psi_deg: np.ndarray  # 3-D psi where there is a prior, else the in-class psi
    has_prior: np.ndarray  # (N,) bool
    origin_A: np.ndarray | None  # (N, 2) RELION origins, the class's centre included; None: none known
    # The in-plane angle in the class's own frame, which rlnAnglePsi no longer holds where there is a prior;
    # cryoSPARC's alignments2D/pose is this angle (relion_canon.io.cryosparc_files).
    class_psi_deg: np.ndarray | None = None

    def columns(self) -> dict[str, np.ndarray]:
        prior = np.where(self.has_prior, 1.0, np.nan)
        class_psi = self.psi_deg if self.class_psi_deg is None else self.class_psi_deg
        return {
            "rlnCanonClassPsi": class_psi,
            "rlnAngleRot": self.rot_deg, "rlnAngleTilt": self.tilt_deg, "rlnAnglePsi": self.psi_deg,
            **{f"{name}Prior": np.nan_to_num(values * prior, nan=NO_PRIOR)
               for name, values in (("rlnAngleRot", self.rot_deg), ("rlnAngleTilt", self.tilt_deg),
                                    ("rlnAnglePsi", self.psi_deg))},
        }


def particle_orientations(psi_deg: np.ndarray, origin_A: np.ndarray | None, pixel_size_A: float,
                          classes: dict[int, np.ndarray], matches: dict[int, ClassMatch],
                          particle_junk: np.ndarray | None = None,
                          directions: ParticleDirections | None = None) -> ParticleOrientations:
    """Every particle's 3-D orientation from its in-class ``psi_deg`` (N,) and RELION ``origin_A`` (N, 2) (None:
    centred), and its class's match (``matches``: only the classes that get a prior). ``particle_junk`` (N,)
    bool: particles flagged as junk on their own get no prior either. ``directions``: the particles' own
    orientations about their class's (:mod:`.particle_directions`), which replace the class's where searched."""
    n = len(psi_deg)
    rot, tilt = np.zeros(n), np.zeros(n)
    psi = np.asarray(psi_deg, dtype=np.float64).copy()
    has_prior = np.zeros(n, dtype=bool)
    origin = None if origin_A is None else np.asarray(origin_A, dtype=np.float64).copy()
    for number, match in matches.items():
        rows = classes[number]
        if particle_junk is not None:
            rows = rows[~particle_junk[rows]]
        turn_deg = np.asarray(psi_deg, dtype=np.float64)[rows]
        rot[rows], tilt[rows] = match.rot_deg, match.tilt_deg
        psi[rows] = wrap_deg(psi[rows] + match.psi_deg)
        if directions is not None:
            own = rows[directions.searched[rows]]
            rot[own], tilt[own], psi[own] = directions.rot_deg[own], directions.tilt_deg[own], directions.psi_deg[own]
            turn_deg = turn_deg + np.nan_to_num(directions.inplane_deg[rows])
        has_prior[rows] = True
        if any(match.shift_px):
            carried = turn_vectors(torch.from_numpy(np.tile(np.asarray(match.shift_px, dtype=np.float64), (len(rows), 1))),
                                   torch.from_numpy(-np.deg2rad(turn_deg))).numpy()
            if origin is None:
                origin = np.zeros((n, 2))
            origin[rows] -= carried * pixel_size_A
    return ParticleOrientations(rot, tilt, psi, has_prior, origin, wrap_deg(np.asarray(psi_deg, dtype=np.float64)))
