"""Simulated particle sets with ground truth, in RELION's conventions (``relion-canon simulate``)."""

from relion_canon.simulate.dataset import (
    SimulationConfig,
    SimulationResult,
    draw_plan,
    simulate_dataset,
)
from relion_canon.io.ground_truth import read_ground_truth
from relion_canon.simulate.junk import JUNK_KINDS, canonicalise, rotate_images
from relion_canon.simulate.phantom import phantom_volume
from relion_canon.simulate.project import FourierProjector, euler_matrix
from relion_canon.simulate.sources import Volume, load_source, resample_map

__all__ = [
    "JUNK_KINDS",
    "FourierProjector",
    "SimulationConfig",
    "SimulationResult",
    "Volume",
    "canonicalise",
    "draw_plan",
    "euler_matrix",
    "load_source",
    "phantom_volume",
    "read_ground_truth",
    "resample_map",
    "rotate_images",
    "simulate_dataset",
]
