"""Shared by the model tests: simulated particles in memory and the engine's training contract by hand."""

from __future__ import annotations

import numpy as np
import torch

from relion_canon.io import ParticleSource, read_star
from relion_canon.preprocess import normalise
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset




def simulated(tmp_path, n: int, box: int = 32, snr: float = 10.0, ctf: bool = False, seed: int = 0, phantom_seed: int = 0):
    """(images (N, 1, box, box) normalised as RELION does, true psi in degrees, CTFs (N, box, box) or None)."""
    cfg = SimulationConfig(n_particles=n, box=box, pixel_size=5.0 * 32 / box, snr=snr, ctf=ctf,
                           junk_fraction=0.0, seed=seed, phantom_seed=phantom_seed)
    simulate_dataset(cfg, tmp_path)
    star = read_star(tmp_path / "particles.star")
    with ParticleSource.from_star(star) as source:
        images = normalise(source.read(np.arange(n)))
    truth = read_ground_truth(tmp_path)
    ctfs = torch.from_numpy(star.ctf_params().ctf(box, cfg.pixel_size).astype(np.float32)) if ctf else None
    return torch.from_numpy(images).unsqueeze(1), truth["rlnAnglePsi"].to_numpy(), ctfs


def train(model, images, epochs: int, batch_size: int, ctf=None, seed: int = 0) -> list[dict[str, float]]:
    """The engine's contract, by hand: per batch, for each phase: forward, zero_grad, backward, step, after_step.
    Returns the mean of every logged value per epoch, keyed "phase/name"."""
    optimizers = model.make_optimizers()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    history, step = [], 0
    for _ in range(epochs):
        sums: dict[str, list[float]] = {}
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            batch = {"image": images[index], "index": index}
            if ctf is not None:
                batch["ctf"] = ctf[index]
            for phase in model.phases(step):
                out = model(batch, phase)
                optimizers[phase].zero_grad()
                out["loss"].backward()
                optimizers[phase].step()
                model.after_step(phase)
                for key, value in out.items():
                    sums.setdefault(f"{phase}/{key}", []).append(float(value.detach()))
            step += 1
        history.append({k: float(np.mean(v)) for k, v in sums.items()})
    return history
