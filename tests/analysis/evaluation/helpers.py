"""Builders shared by the evaluation, report and CLI tests: a small simulated set and "job outputs" made from it
with known mistakes (a global psi offset and a flipped sign plus noise, a defocus bias, outlier scores that
separate junk perfectly, canonical images that are the clean truth turned by a global angle and possibly
mirrored), so every expected number follows from how the output was made.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from relion_canon.geometry import wrap_deg
from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import write_stack
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star, write_star
from relion_canon.geometry import rotate_images
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset


def simulated_set(folder: Path, n: int = 100, seed: int = 3) -> Path:
    """~100 particles at 32 px, 20 % junk of every kind, small shifts, defocus 0.5-2.5 µm."""
    simulate_dataset(SimulationConfig(n_particles=n, box=32, junk_fraction=0.2, shift_sigma=1.0, seed=seed), folder)
    return folder


def mirror(images: np.ndarray) -> np.ndarray:
    """Left-right mirror about column box//2 (written out here, independently of the module under test)."""
    box = images.shape[-1]
    out = np.zeros_like(images)
    c = box // 2
    for x in range(box):
        src = 2 * c - x
        if 0 <= src < box:
            out[..., x] = images[..., src]
    return out


def fake_job(
    sim: Path,
    out: Path,
    *,
    psi_offset: float = 40.0,
    sign: int = -1,
    psi_noise: float = 2.0,
    defocus_bias: float = 300.0,
    defocus_noise: float = 200.0,
    rotation: float = 25.0,
    mirrored: bool = False,
    canonical: bool = True,
    spoil_row: int | None = None,
    seed: int = 0,
) -> Path:
    """A job folder for the simulated set ``sim`` with known errors: sign·psi = truth + offset + N(0, noise);
    defocus = truth + bias + N(0, noise) Å; Z-score 5 ± 1 for junk and 0 ± 1 otherwise (flags at 2); canonical
    images = clean truth turned by ``rotation`` (mirrored after turning if ``mirrored``), affinely rescaled;
    ``spoil_row`` (0-based) gets a noise image as its canonical."""
    rng = np.random.default_rng(seed)
    star = read_star(sim / "particles.star")
    truth = read_ground_truth(sim)
    n = len(star)
    junk = truth["rlnCanonIsJunk"].to_numpy(bool)
    psi = sign * (truth["rlnAnglePsi"].to_numpy() + psi_offset + rng.normal(0, psi_noise, n))
    psi[junk] = rng.uniform(-180, 180, junk.sum())
    true_defocus = (truth["rlnDefocusU"] + truth["rlnDefocusV"]).to_numpy() / 2
    defocus = true_defocus + defocus_bias + rng.normal(0, defocus_noise, n)
    z = np.where(junk, 5.0, 0.0) + rng.uniform(-1, 1, n)
    columns = {
        "rlnAnglePsi": wrap_deg(psi),
        "rlnAnglePsiPrior": wrap_deg(psi),
        "rlnCanonDefocus": defocus,
        "rlnParticleFigureOfMerit": np.exp(defocus / 1e4) - 1,
        "rlnParticleSelectZScore": z,
        "rlnCanonIsOutlier": (z > 2).astype(int),
    }
    out.mkdir(parents=True, exist_ok=True)
    if canonical:
        clean = ParticleSource.from_stack(sim / "ground_truth_clean.mrcs").read(np.arange(n)).astype(np.float64)
        images = rotate_images(clean, np.full(n, rotation), order=3)
        if mirrored:
            images = mirror(images)
        images = 3.0 * images + 0.5
        if spoil_row is not None:
            images[spoil_row] = rng.normal(0, 1, images.shape[1:])
        stack = out / "canonical.mrcs"
        write_stack(stack, images.astype(np.float32), 2.5)
        columns["rlnCanonCanonicalImage"] = [format_image_name(i, str(stack)) for i in range(n)]
    write_star(star.with_columns(columns), out / "particles.star")
    (out / "report.json").write_text(json.dumps({"outliers": {"method": "iforest", "threshold": 2.0}}))
    return out


def relion_reference(sim: Path, path: Path, *, psi_noise: float = 1.0, shuffle: bool = True, seed: int = 1) -> Path:
    """A Class2D-like STAR for the set: psi = truth + N(0, noise), Z-score 3 for junk and 0 otherwise,
    rows shuffled (RELION writes particles in its own order)."""
    rng = np.random.default_rng(seed)
    star = read_star(sim / "particles.star")
    truth = read_ground_truth(sim)
    junk = truth["rlnCanonIsJunk"].to_numpy(int)
    ref = star.with_columns({
        "rlnAnglePsi": wrap_deg(truth["rlnAnglePsi"].to_numpy() + rng.normal(0, psi_noise, len(star))),
        "rlnClassNumber": np.ones(len(star), int),
        "rlnParticleSelectZScore": 3.0 * junk + rng.uniform(-0.5, 0.5, len(star)),
    })
    if shuffle:
        ref = ref.with_particles(ref.particles.iloc[rng.permutation(len(star))].reset_index(drop=True))
    write_star(ref, path)
    return path
