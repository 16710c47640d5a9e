"""Stage 1: the trained network on every particle: its angle, its latent, and a few examples to show."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.analysis.estimate.timing import Clock
from relion_canon.analysis.model_psi import psi_degrees
from relion_canon.context import RunContext
from relion_canon.io.star import ParticleStar
from relion_canon.train.data import ParticleBatches

log = logging.getLogger(__name__)

N_EXAMPLES = 16  # particles shown in the image grids
PREDICT_BATCH = 256


@dataclass
class Prediction:
    """The network's outputs, in STAR order, and the model and data it came from (later stages reuse them)."""

    loaded: Any  # relion_canon.train.inference.LoadedModel
    dataset: ParticleBatches  # the particles as the network sees them
    psi_deg: np.ndarray  # (N,) the network's own angle
    latent: np.ndarray  # (N, L) latent means
    example_index: np.ndarray  # (K,) rows shown in the image grids
    example_inputs: np.ndarray  # (K, H, W) their preprocessed inputs
    example_canonical: np.ndarray  # (K, H, W) the network's canonical images of them

    @property
    def model_name(self) -> str:
        return self.loaded.meta["model"]

    def __len__(self) -> int:
        return len(self.dataset)


def predict(star: ParticleStar, model_path: str | Path, device_name: str, seed: int, context: RunContext,
            clock: Clock) -> Prediction:
    """Load the model on ``device_name``, run it on every particle, and pick ``N_EXAMPLES`` rows (by ``seed``)."""
    import torch

    from relion_canon.parallel import gathered, share
    from relion_canon.train.devices import resolve_device
    from relion_canon.train.inference import dataset_for, load_model, run_inference

    device = resolve_device(device_name)
    loaded = load_model(model_path, device)
    dataset = dataset_for(loaded, star, context.project_dir)
    n = len(dataset)
    log.info(f"Predicting {n} particles with {loaded.meta['model']} ({dataset.box} px)")
    clock.lap()
    # Under torchrun each process predicts its share, and every process gets all the outputs.
    mine = share(n)
    outputs = run_inference(loaded, dataset, batch_size=PREDICT_BATCH, context=context,
                            rows=None if len(mine) == n else mine)
    if len(mine) < n:
        outputs = {key: gathered(mine, torch.from_numpy(value))[1].numpy() for key, value in outputs.items()}
    clock.lap("predict")
    rng = np.random.default_rng(seed)
    example_index = np.sort(rng.choice(n, size=min(N_EXAMPLES, n), replace=False))
    example = dataset[example_index]
    canon = loaded.model.predict(example["image"].to(device), canonical=True,
                                 ctf=example["ctf"].to(device) if "ctf" in example else None)
    return Prediction(
        loaded=loaded, dataset=dataset, psi_deg=psi_degrees(outputs), latent=outputs["latent"],
        example_index=example_index, example_inputs=example["image"][:, 0].numpy(),
        example_canonical=canon["canonical"].float().cpu().numpy(),
    )
