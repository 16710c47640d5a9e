"""Training each model on a dataset's training rows and predicting its test rows, and running the whole job.

Everything goes through the project's own engine (``relion_canon.train``), inference and job
(``relion_canon.job.run_job``): this benchmark measures the package as users get it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relion_canon.context import QUIET
from relion_canon.analysis.model_psi import psi_degrees
from relion_canon.io.star import ParticleStar, read_star
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train import TrainConfig, dataset_for, load_model, run_inference, train
from relion_canon.train.devices import resolve_device

from paper_data import Dataset


@dataclass(frozen=True)
class ModelSpec:
    """One column of a table: a registered model with its options, trained for so many epochs."""

    label: str
    model: str
    options: dict[str, Any]
    epochs: int
    batch_size: int
    labels: bool = False  # train on the true psi (paper A's public code); otherwise no labels at all


@dataclass
class Prediction:
    """A model's answers for the scored rows, and what it cost."""

    label: str
    psi_deg: np.ndarray  # (N,) RELION convention; polar read-out of the latent where the model has no angle head
    latent: np.ndarray  # (N, L)
    canonical: np.ndarray | None  # (N, H, W) unrotated, denoised images, where the model makes them
    train_s: float
    predict_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def _log(message: str) -> None:
    print(f"[papers] {message}", file=sys.stderr, flush=True)


def train_and_predict(spec: ModelSpec, data: Dataset, work: Path, preprocess: PreprocessConfig, device: str,
                      threads: int, seed: int, canonical: bool) -> Prediction:
    """Train ``spec`` on the training rows and predict the test rows (canonical images when asked and the
    model makes unrotated ones)."""
    source = data.labelled if spec.labels else data.particles
    config = TrainConfig(model=spec.model, model_options=dict(spec.options), preprocess=preprocess,
                         epochs=spec.epochs, batch_size=spec.batch_size, seed=seed, device=device, threads=threads)
    out = work / f"{data.name}__{spec.label.replace(' ', '_').replace('/', '-')}"
    _log(f"{data.name}: training {spec.label} on {len(data.train)} particles for {spec.epochs} epochs")
    t0 = time.perf_counter()
    result = train(source.subset(data.train), out, config, resume=False, context=QUIET)
    train_s = time.perf_counter() - t0
    last = result.history[-1]
    _log(f"{data.name}: {spec.label} trained in {train_s:.0f} s; last epoch "
         + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if "/" in k))

    t0 = time.perf_counter()
    loaded = load_model(result.model_path, resolve_device(device))
    dataset = dataset_for(loaded, data.particles.subset(data.test))
    outputs = run_inference(loaded, dataset, batch_size=256, canonical=canonical, context=QUIET)
    predict_s = time.perf_counter() - t0
    return Prediction(label=spec.label, psi_deg=psi_degrees(outputs), latent=outputs["latent"],
                      canonical=outputs.get("canonical"), train_s=train_s, predict_s=predict_s,
                      history=result.history)


@dataclass
class JobAnswer:
    """The whole job's STAR columns for the scored rows."""

    psi_deg: np.ndarray
    defocus: np.ndarray  # Å, rlnCanonDefocus (CTF fit against the learnt reference)
    defocus_latent: np.ndarray  # Å, rlnCanonDefocusLatent (paper B's radius, quantile-mapped onto the STAR's)
    weight: np.ndarray  # rlnParticleFigureOfMerit = exp(def̂ µm) − 1
    zscore: np.ndarray  # rlnParticleSelectZScore, high = junk
    seconds: float
    report: dict[str, Any]


def run_whole_job(data: Dataset, work: Path, device: str, threads: int, seed: int) -> JobAnswer:
    """``relion_canon.job.run_job`` with its defaults (what pressing Run gives), on the scored rows."""
    import json

    from relion_canon.context import QUIET
    from relion_canon.job import JobConfig, run_job

    particles: ParticleStar = data.particles.subset(data.test)
    out = work / f"{data.name}__job"
    _log(f"{data.name}: running the whole relion_canon job (defaults) on {len(particles)} particles")
    t0 = time.perf_counter()
    result = run_job(particles, out, JobConfig(device=device, threads=threads, seed=seed), resume=False,
                     context=QUIET)
    seconds = time.perf_counter() - t0
    table = read_star(result.particles_star).particles
    # run_job keeps the input order; the image names say so, and a reordering would make every figure wrong.
    if table["rlnImageName"].astype(str).tolist() != particles.image_names:
        raise RuntimeError("the job's particles.star is not in the input's order")
    _log(f"{data.name}: job done in {seconds:.0f} s")
    return JobAnswer(
        psi_deg=table["rlnAnglePsi"].to_numpy(np.float64),
        defocus=table["rlnCanonDefocus"].to_numpy(np.float64),
        defocus_latent=table["rlnCanonDefocusLatent"].to_numpy(np.float64),
        weight=table["rlnParticleFigureOfMerit"].to_numpy(np.float64),
        zscore=table["rlnParticleSelectZScore"].to_numpy(np.float64),
        seconds=seconds,
        report=json.loads(json.dumps(result.report, default=str)),
    )
