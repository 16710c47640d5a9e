"""Applying a trained model to particles: load it safely, check it fits the data, run it in batches."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from relion_canon.context import RunContext
from relion_canon.errors import InputError
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import ParticleStar
from relion_canon.models import CanonModel
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train import checkpoint
from relion_canon.train.data import EpochSampler, ParticleBatches, make_loader
from relion_canon.train.engine import build_model, data_spec

# A field of view within this fraction counts as the same (pixel sizes in STAR files are rounded).
FOV_TOLERANCE = 0.01


@dataclass
class LoadedModel:
    model: CanonModel
    meta: dict[str, Any]  # everything the model file holds besides the weights
    path: Path

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.meta["preprocess"])


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """A model file (or a training folder holding ``model.pt``), ready for inference."""
    data = checkpoint.load(path, map_location=device)
    path = Path(path)
    try:
        model = build_model(data["model"], int(data["box"]), {k: v for k, v in data["model_config"].items() if k != "box"})
        model.load_state_dict(data["state_dict"])
    except (KeyError, RuntimeError, ValueError, InputError) as exc:
        raise InputError(f"model file does not match this version's {data.get('model')} network ({exc})", path) from None
    model.to(device).eval()
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return LoadedModel(model, meta, path)


def dataset_for(loaded: LoadedModel, star: ParticleStar, project_dir=None) -> ParticleBatches:
    """The particles prepared as the model was trained, or a clear refusal when they cannot be.

    A model sees a fixed number of pixels at a fixed pixel size: new particles must cover the same field
    of view (box × pixel size) with at least as many pixels, so that Fourier cropping lands on the
    model's grid exactly.
    """
    meta = loaded.meta
    box, pixel_size = int(meta["box"]), float(meta["pixel_size"])
    source = ParticleSource.from_star(star, project_dir)
    optics = star.optics()
    optics.require(star.path, "pixel_size")
    in_box = source.box
    in_px = float(np.median(optics.pixel_size))
    fov, model_fov = in_box * in_px, box * pixel_size
    if abs(fov - model_fov) > FOV_TOLERANCE * model_fov or in_box < box:
        raise InputError(
            f"model {loaded.path} was trained on {box} px images at {pixel_size:.4g} Å/px ({model_fov:.1f} Å across); "
            f"these particles are {in_box} px at {in_px:.4g} Å/px ({fov:.1f} Å across) and cannot be resampled onto "
            "its grid: re-extract with the same box in Å, or train a model on these particles",
            star.path,
        )
    preprocess = dataclasses.replace(loaded.preprocess, box=box)
    dataset = ParticleBatches(star, preprocess, source=source)
    dataset.set_spec(dataclasses.replace(data_spec(loaded.model), labels=False, origins=False))
    return dataset


@torch.no_grad()
def run_inference(
    loaded: LoadedModel,
    dataset: ParticleBatches,
    batch_size: int = 256,
    workers: int = 0,
    canonical: bool = False,
    *,
    context: RunContext = RunContext(),
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Model outputs for every particle (or the sorted ``rows``), in STAR order: ``latent`` always, ``psi``
    (radians) where the model predicts it, ``canonical`` images on request. ``context.should_stop`` is polled
    before every batch; a stop raises ``InterruptedError``."""
    model = loaded.model
    device = next(model.parameters()).device
    order = EpochSampler(len(dataset), 0, shuffle=False) if rows is None else np.asarray(rows).tolist()
    loader = make_loader(dataset, order, batch_size, workers, drop_last=False)
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    for batch in tqdm(loader, desc="predicting", unit="batch", leave=False, disable=not context.progress or None):
        context.check_stop("prediction")
        ctf = batch["ctf"].to(device) if "ctf" in batch else None
        out = model.predict(batch["image"].to(device), ctf=ctf, canonical=canonical)
        for key, value in out.items():
            parts[key].append(value.float().cpu().numpy())
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}
