"""One training engine for all models (CPU/CUDA, mixed precision, checkpoints, resume, torch.distributed)."""

from relion_canon.train.engine import TrainConfig, TrainingDiverged, TrainingStopped, TrainResult, train
from relion_canon.train.inference import LoadedModel, dataset_for, load_model, run_inference

__all__ = [
    "LoadedModel",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingStopped",
    "dataset_for",
    "load_model",
    "run_inference",
    "train",
]
