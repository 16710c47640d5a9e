"""Simulated particle sets with ground truth, in RELION's conventions (``relion-canon simulate``)."""

from relion_canon.io.ground_truth import read_ground_truth
from relion_canon.simulate.config import SimulationConfig
from relion_canon.simulate.dataset import SimulationResult, simulate_dataset
from relion_canon.simulate.junk import JUNK_KINDS
from relion_canon.simulate.plan import draw_plan
from relion_canon.simulate.phantom import phantom_volume
from relion_canon.geometry.projection import FourierProjector, euler_matrix
from relion_canon.simulate.sources import Volume, load_source, resample_map

__all__ = [
    "JUNK_KINDS",
    "FourierProjector",
    "SimulationConfig",
    "SimulationResult",
    "Volume",
    "draw_plan",
    "euler_matrix",
    "load_source",
    "phantom_volume",
    "read_ground_truth",
    "resample_map",
    "simulate_dataset",
]
