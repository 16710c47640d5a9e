"""Accuracy metrics of both papers, implemented once and used by tests, evaluation and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from relion_canon.geometry import wrap_deg


@dataclass(frozen=True)
class AngleAlignment:
    errors: np.ndarray  # per-particle error in degrees, in [−180, 180), after the global alignment
    offset: float  # degrees: sign·predicted ≈ truth + offset
    sign: int  # +1, or −1 when the learned frame turns the other way

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(self.errors**2)))

    @property
    def median(self) -> float:
        return float(np.median(np.abs(self.errors)))

    def weighted_rmse(self, weights: np.ndarray) -> float:
        w = np.asarray(weights, dtype=np.float64)
        return float(np.sqrt(np.sum(w * self.errors**2) / np.sum(w)))


def align_angles(predicted_deg: np.ndarray, true_deg: np.ndarray, allow_sign: bool = True) -> AngleAlignment:
    """Per-particle angle errors after the best single global offset and sign (paper B, eq. 8).

    A model that learns its own canonical frame can only be right up to a rotation of that frame (the
    offset) and, unless told otherwise, its direction (the sign). Both are fitted by least squares on
    the wrapped errors: the circular mean gives the start, a bounded 1-D search the minimum.
    """
    pred = np.asarray(predicted_deg, dtype=np.float64)
    true = np.asarray(true_deg, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 1 or pred.size == 0:
        raise ValueError("predicted and true angles must be non-empty 1-D arrays of equal length")
    best: AngleAlignment | None = None
    for sign in (1, -1) if allow_sign else (1,):
        diff = wrap_deg(sign * pred - true)
        start = np.rad2deg(np.angle(np.mean(np.exp(1j * np.deg2rad(diff)))))

        def rmse(offset: float) -> float:
            return float(np.mean(wrap_deg(diff - offset) ** 2))

        res = minimize_scalar(rmse, bounds=(start - 45.0, start + 45.0), method="bounded", options={"xatol": 1e-4})
        offset = float(wrap_deg(res.x))
        candidate = AngleAlignment(wrap_deg(diff - offset), offset, sign)
        if best is None or candidate.rmse < best.rmse:
            best = candidate
    assert best is not None
    return best
