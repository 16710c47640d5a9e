"""Each particle's own canonical image from paper A's decoder, trained after refinement with the refined
angles and origins as labels (paper A's supervised mode), so that the decoder's frame is each class's frame.

The class average is the canonical image of a class; this is one image per particle: the decoder's output for
the particle's own latent. The network (rotinv-ae, ``angle_mode="labels"``) sees each good particle centred by
its refined origin and turned by a random extra angle; it must return, through its decoder, the image that
turned by the particle's refined psi (and multiplied by its CTF, where the particles have one) is the particle.
So the decoder's output is CTF-free and in the particle's class frame. Particles flagged as junk do not train
it, but get an image like every other particle.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from relion_canon.context import RunContext
from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import stack_writer
from relion_canon.io.star import ParticleStar
from relion_canon.preprocess.fourier import fourier_resample

log = logging.getLogger(__name__)

TRAIN_PARTICLES = 2000  # good particles the decoder learns from: training cost stays flat as the data grow
# The decoder's quality follows the number of optimiser steps, not of epochs: a small set is seen more often.
STEPS = 1000
TRAIN_BATCH = 64
MODEL_BOX = 32  # px; never above the working box
BATCH = 256  # particles decoded at a time


def labelled(star: ParticleStar, psi_deg: np.ndarray, origin_A: np.ndarray | None) -> ParticleStar:
    """The particles with their refined in-class psi (and origins) as the labels the network learns from."""
    columns: dict[str, np.ndarray] = {"rlnAnglePsi": np.asarray(psi_deg, dtype=np.float64)}
    if origin_A is not None:
        columns |= {"rlnOriginXAngst": origin_A[:, 0], "rlnOriginYAngst": origin_A[:, 1]}
    elif "rlnOriginXAngst" in star.particles.columns:  # no search ran: the images are taken as centred
        columns |= {"rlnOriginXAngst": np.zeros(len(star)), "rlnOriginYAngst": np.zeros(len(star))}
    return star.with_columns(columns)


def training_rows(good: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` rows drawn at random from the rows ``good`` (sorted)."""
    good = np.flatnonzero(good)
    if good.size <= n:
        return good
    return np.sort(np.random.default_rng(seed).choice(good, n, replace=False))


def epochs_for(n_train: int) -> int:
    """Epochs that make about :data:`STEPS` optimiser steps of :data:`TRAIN_BATCH` on ``n_train`` particles."""
    return max(1, math.ceil(STEPS * TRAIN_BATCH / max(n_train, 1)))


def write_network_canonical_images(star: ParticleStar, psi_deg: np.ndarray, origin_A: np.ndarray | None,
                                   good: np.ndarray, path: Path, box: int, pixel_size_A: float, *, device: str,
                                   seed: int, context: RunContext) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the labelled decoder on up to :data:`TRAIN_PARTICLES` of the ``good`` particles, stream every
    particle's canonical image (Fourier-padded to the working ``box``) into ``path``; the ``N@path`` names and
    how the decoder was trained (for the report). Torch's CPU threads are the job's (set around the whole job)."""
    from relion_canon.preprocess import PreprocessConfig
    from relion_canon.train.engine import TrainConfig, train

    star = labelled(star, psi_deg, origin_A)
    rows = training_rows(good, TRAIN_PARTICLES, seed)
    if rows.size < 10:
        raise ValueError(f"{rows.size} good particles: too few to train the canonical-image network")
    options = {"angle_mode": "labels", "apply_ctf": "rlnDefocusU" in star.particles.columns, "lambda_adv": 0.0,
               "predict_rotations": 1, "width": 16, "max_width": 128}
    config = TrainConfig(model="rotinv-ae", model_options=options, preprocess=PreprocessConfig(box=min(MODEL_BOX, box)),
                         epochs=epochs_for(rows.size), batch_size=TRAIN_BATCH, seed=seed, device=device,
                         single_process=True)
    log.info(f"Canonical images: training the decoder on {rows.size} good particles with their refined angles "
             f"as labels ({config.epochs} epochs)")
    with tempfile.TemporaryDirectory(prefix="relion_canon_canonical_") as work:
        result = train(star.subset(rows), work, config, resume=False, context=context)
        names = _decode_all(star, result.model_path, path, box, pixel_size_A, device, context)
    return names, {"train_particles": int(rows.size), "epochs": config.epochs, "batch_size": config.batch_size,
                   "model_box": config.preprocess.box, "model": "rotinv-ae (angle_mode labels)"}


def _decode_all(star: ParticleStar, model_path: Path, path: Path, box: int, pixel_size_A: float, device: str,
                context: RunContext) -> np.ndarray:
    """Every particle centred by its origin, turned back by its psi, encoded and decoded, into ``path``."""
    import dataclasses

    from relion_canon.train.devices import resolve_device
    from relion_canon.train.inference import dataset_for, load_model

    dev = resolve_device(device)
    loaded = load_model(model_path, dev)
    model = loaded.model
    dataset = dataset_for(loaded, star, context.project_dir)
    dataset.set_spec(dataclasses.replace(dataset.spec, labels=True, origins=True, ctf=False))

    def decode(batch: dict) -> np.ndarray:
        upright = model.canonicalised(batch["image"].to(dev), batch["psi"].to(dev), batch["origin"].to(dev))
        return model.predict(upright, canonical=True)["canonical"].float().cpu().numpy()

    return stream_decoded(dataset, decode, path, box, pixel_size_A, context)


def stream_decoded(dataset, decode: Callable[[dict], np.ndarray], path: Path, box: int, pixel_size_A: float,
                   context: RunContext) -> np.ndarray:
    """``decode`` (a batch of ``dataset`` → its images at the model's box) over every particle, Fourier-padded to
    the working ``box`` and streamed into ``path``, with a progress bar; the ``N@path`` names in STAR order."""
    import torch
    from tqdm import tqdm

    n = len(dataset)
    with torch.no_grad(), stack_writer(path, n, box, pixel_size_A) as out:
        for start in tqdm(range(0, n, BATCH), desc="canonical images", unit="batch", leave=False,
                          disable=not context.progress or None):
            if context.should_stop():
                raise InterruptedError("stopped on request while writing canonical images")
            images = decode(dataset[np.arange(start, min(start + BATCH, n))])
            out[start:start + len(images)] = fourier_resample(images, box)
    return np.array([format_image_name(i, str(path)) for i in range(n)], dtype=object)
