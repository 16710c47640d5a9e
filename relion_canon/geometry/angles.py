"""Wrapping angles onto one turn: one half-open convention per unit.

* Degrees wrap to [−180, 180) (NumPy, float64): what the STAR files and reports hold.
* Radians wrap to (−π, π] (torch): what the models' losses and outputs use.

The two ends differ only for an angle of exactly half a turn, which no estimate lands on in practice;
each formula is kept as its callers computed it, so results are unchanged to the last bit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only when a tensor is wrapped: the degree face serves callers that never load torch
    import torch


def wrap_deg(angle_deg: np.ndarray | float) -> np.ndarray:
    """Degrees wrapped to [−180, 180), float64."""
    return (np.asarray(angle_deg, dtype=np.float64) + 180.0) % 360.0 - 180.0


def wrap_rad(angle_rad: "torch.Tensor") -> "torch.Tensor":
    """Radians wrapped to (−π, π], in the tensor's dtype."""
    return math.pi - (math.pi - angle_rad).remainder(2 * math.pi)
