"""The result of a 2-D classification (:func:`relion_canon.analysis.classification.classify_particles`): every
particle's class, angle, shift and score, and each class's reference and resolution."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from relion_canon.analysis.alignment import Alignment


@dataclass
class Classification:
    """Classes sorted by population, largest first (index 0 is class number 1)."""

    class_index: np.ndarray  # (N,) int
    psi_deg: np.ndarray  # (N,) in the particle's class average's frame, [−180, 180)
    shift_px: np.ndarray  # (N, 2) (x, y) at the working box
    score: np.ndarray  # (N,) normalised cross-correlation with the own class's reference
    references: np.ndarray  # (K, B, B)
    frc: np.ndarray  # (K, B//2 + 1) half-set FRC of each reference
    half_agreement: np.ndarray  # (K,) correlation of each class's two half-set averages
    resolution_A: np.ndarray  # (K,) at FRC 0.143
    noise: np.ndarray  # (B//2 + 1,) noise power per ring, for whitening
    converged: bool
    history: list[dict[str, float]] = field(default_factory=list)
    # One entry per split pass that split classes: the round after which it ran, and each split class's
    # residual figure (its multiple of noise's; see class_split).
    splits: list[dict] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.references)

    def alignment_of(self, c: int) -> tuple[np.ndarray, Alignment]:
        """Class ``c``'s rows and its particles' alignment, as a one-class alignment would give it."""
        rows = np.flatnonzero(self.class_index == c)
        return rows, Alignment(self.psi_deg[rows], self.shift_px[rows], self.score[rows], self.references[c],
                               self.frc[c], self.noise, self.history)
