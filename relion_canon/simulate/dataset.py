"""Simulated particle sets with ground truth, written the way RELION writes extracted particles.

Output folder (``particles.star`` is written last, so its presence means the set is complete):

* ``particles.mrcs`` / ``particles.star``: the particles, a RELION 3.1 STAR with optics and CTF only;
* ``ground_truth.star``: same rows, with the true angles, origins, CTF and our labels (``rlnCanon*``);
* ``ground_truth_clean.mrcs``: per particle, the clean canonical image (psi = 0, no shift, no CTF, no noise,
  same intensity scale as the particles);
* ``simulation.json``: the configuration, seed, noise sigma, signal scale, measured SNR, version.

Image model (RELION's, checked against ``relion_project``): image = s · IFT[CTF · FT[shift(P)]] + noise, where
P is the projection at (rot, tilt, psi), the shift moves it by −origin, noise is white with σ = 1 and the signal
scale s makes SNR = mean over good particles of var(signal) / σ². ``snr = inf`` gives noise-free images scaled
so that this mean signal variance is 1.

Determinism: every random number comes from ``numpy.random.SeedSequence(seed)``; per-particle parameters are
drawn up front and the noise of each fixed-size chunk from its own child seed, so a run is bit-identical to
any other run with the same configuration.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from relion_canon import __version__
from relion_canon.ctf import ctf_2d
from relion_canon.errors import InputError
from relion_canon.geometry import canonicalise, wrap_deg
from relion_canon.io.atomic import atomic_path
from relion_canon.io.imagename import format_image_name
from relion_canon.io.mrc import stack_writer
from relion_canon.io.ground_truth import GROUND_TRUTH_STAR
from relion_canon.io.star import VERSION_31, write_star
from relion_canon.simulate.junk import (
    DISPLACEMENT_RANGE,
    JUNK_KINDS,
    NOT_JUNK,
    carbon_edge,
    displace,
)
from relion_canon.simulate.phantom import DECOY_SEED, phantom_volume
from relion_canon.simulate.project import (
    FourierProjector,
    euler_matrix,
    half_from_images,
    images_from_half,
    shift_phase,
)
from relion_canon.simulate.sources import Volume, load_source

PARTICLES_STAR = "particles.star"
PARTICLES_STACK = "particles.mrcs"
CLEAN_STACK = "ground_truth_clean.mrcs"
SIMULATION_JSON = "simulation.json"
OUTPUT_FILES = (PARTICLES_STACK, CLEAN_STACK, GROUND_TRUTH_STAR, SIMULATION_JSON, PARTICLES_STAR)

# Fixed, so that the noise (drawn per chunk) does not depend on anything but the configuration.
CHUNK = 512
# Good particles whose signal variance sets the signal scale; with fewer good particles the SNR is exact.
PILOT = 2048


@dataclass
class SimulationConfig:
    """Everything that defines a simulated set. Units: Å, degrees, kV, mm; defocus in Å (positive underfocus).

    The defaults are the "realistic" benchmark protocol: 64 px at 2.5 Å, one view (rot = tilt = 0), uniform
    psi, no shifts, defocus uniform in 5,000-25,000 Å, SNR 0.1, 10 % junk of all kinds.
    """

    n_particles: int = 2000
    box: int = 64
    pixel_size: float = 2.5
    source: str = "phantom"  # "phantom", a map (.mrc/.map/.ccp4) or an atomic model (.pdb/.cif)
    map_pixel_size: float | None = None  # overrides / supplies the map header's voxel size
    phantom_seed: int = 0  # which built-in molecule (0 = the standard one)
    views: int | str = 1  # 1: the fixed view (rot, tilt); K > 1: K random views; "uniform": uniform SO(3)
    rot: float = 0.0
    tilt: float = 0.0
    psi_sigma: float | None = None  # None: psi uniform in [-180, 180); else normal(0, psi_sigma)
    psi: float | None = None  # a fixed psi for every particle (overrides psi_sigma)
    shift_sigma: float = 0.0  # Å, per axis
    ctf: bool = True
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    defocus_range: tuple[float, float] = (5000.0, 25000.0)  # Å, uniform
    defocus_values: tuple[float, ...] | None = None  # Å; if given, equally many particles at each value
    astigmatism: float = 0.0  # Å, DefocusU − DefocusV; the astigmatism angle is uniform in [0, 180)
    bfactor: float = 0.0  # Å², CTF envelope exp(−B k²/4)
    snr: float = 0.1  # math.inf: no noise
    junk_fraction: float = 0.1
    junk_kinds: tuple[str, ...] = JUNK_KINDS
    seed: int = 0
    particles_per_micrograph: int = 100  # rlnMicrographName groups (a label only; defocus is per particle)
    overwrite: bool = False

    def validate(self) -> None:
        """Raise :class:`InputError` (one line) for impossible settings."""

        def bad(msg: str) -> InputError:
            return InputError(f"simulate: {msg}")

        if self.n_particles < 1:
            raise bad(f"number of particles must be at least 1, got {self.n_particles}")
        if self.box < 8 or self.box % 2:
            raise bad(f"box must be an even number of pixels >= 8 (RELION extracts even boxes), got {self.box}")
        if not self.pixel_size > 0:
            raise bad(f"pixel size must be positive, got {self.pixel_size}")
        if isinstance(self.views, str):
            if self.views != "uniform":
                raise bad(f"views must be a number of views or 'uniform', got {self.views!r}")
        elif int(self.views) < 1:
            raise bad(f"number of views must be at least 1, got {self.views}")
        if self.psi_sigma is not None and not self.psi_sigma >= 0:
            raise bad(f"psi sigma must be >= 0, got {self.psi_sigma}")
        if not self.shift_sigma >= 0:
            raise bad(f"shift sigma must be >= 0, got {self.shift_sigma}")
        if not (self.snr > 0):
            raise bad(f"SNR must be positive (use inf for noise-free images), got {self.snr}")
        if not 0 <= self.junk_fraction <= 1:
            raise bad(f"junk fraction must be in [0, 1], got {self.junk_fraction}")
        unknown = [k for k in self.junk_kinds if k not in JUNK_KINDS]
        if unknown:
            raise bad(f"unknown junk kind(s) {', '.join(unknown)}; choose from {', '.join(JUNK_KINDS)}")
        if self.junk_fraction > 0 and not self.junk_kinds:
            raise bad("junk fraction > 0 but no junk kinds given")
        if self.ctf:
            if not 0 <= self.amplitude_contrast < 1:
                raise bad(f"amplitude contrast must be in [0, 1), got {self.amplitude_contrast}")
            if not self.voltage > 0:
                raise bad(f"voltage must be positive (kV), got {self.voltage}")
            values = list(self.defocus_values) if self.defocus_values else list(self.defocus_range)
            if self.defocus_values is None and (len(values) != 2 or values[0] > values[1]):
                raise bad(f"defocus range must be (min, max) with min <= max, got {tuple(values)}")
            if any(not np.isfinite(v) or v <= 0 for v in values):
                raise bad(f"defocus values must be positive (Å, underfocus), got {tuple(values)}")
            if any(v < 100 for v in values):
                raise bad(f"defocus is in Å, not µm: {tuple(values)} (e.g. 1 µm = 10000)")
            if self.astigmatism < 0 or self.astigmatism / 2 >= min(values):
                raise bad(f"astigmatism must be >= 0 and below twice the smallest defocus, got {self.astigmatism}")
        if self.particles_per_micrograph < 1:
            raise bad("particles per micrograph must be at least 1")

    def to_json(self) -> dict:
        d = asdict(self)
        del d["overwrite"]  # how to write, not what was simulated
        d["source"] = str(self.source)
        d["snr"] = "inf" if math.isinf(self.snr) else self.snr
        d["defocus_range"] = list(self.defocus_range)
        d["defocus_values"] = None if self.defocus_values is None else list(self.defocus_values)
        d["junk_kinds"] = list(self.junk_kinds)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SimulationConfig":
        """Inverse of :meth:`to_json` (e.g. the ``config`` of a simulation.json), to regenerate a set."""
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("snr") == "inf":
            d["snr"] = math.inf
        for key in ("defocus_range", "defocus_values", "junk_kinds"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class SimulationResult:
    out_dir: Path
    particles_star: Path
    n_particles: int
    n_junk: int
    signal_scale: float
    noise_sigma: float
    snr_measured: float
    seconds: float
    info: dict = field(default_factory=dict)


def _uniform_sphere(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) of directions uniform on the sphere."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return rot, tilt


def _balanced(rng: np.random.Generator, n_classes: int, n: int) -> np.ndarray:
    """n labels in 0..n_classes-1, as equal in number as possible, in random order."""
    return rng.permutation(np.resize(np.arange(n_classes), n))


def draw_plan(config: SimulationConfig) -> dict[str, np.ndarray]:
    """Every per-particle random parameter, drawn in a fixed order from the configuration's seed."""
    n = config.n_particles
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    plan: dict[str, np.ndarray] = {}

    if config.views == "uniform":
        rot, tilt = _uniform_sphere(rng, n)
        view_id = np.full(n, -1)
        view_rot = view_tilt = np.zeros(0)
    else:
        k = int(config.views)
        if k == 1:
            view_rot, view_tilt = np.array([config.rot], float), np.array([config.tilt], float)
        else:
            view_rot, view_tilt = _uniform_sphere(rng, k)
        view_id = _balanced(rng, k, n)
        rot, tilt = view_rot[view_id], view_tilt[view_id]
    plan["view_rot"], plan["view_tilt"] = view_rot, view_tilt

    psi_u = rng.uniform(-180.0, 180.0, n)
    psi_n = rng.normal(0.0, 1.0, n)
    if config.psi is not None:
        psi = np.full(n, float(config.psi))
    elif config.psi_sigma is None:
        psi = psi_u
    else:
        psi = psi_n * config.psi_sigma
    origin = rng.normal(0.0, 1.0, (n, 2)) * config.shift_sigma + 0.0  # no "-0.0" in the STAR file

    if config.defocus_values:
        values = np.asarray(config.defocus_values, dtype=np.float64)
        defocus = values[_balanced(rng, len(values), n)]
    else:
        lo, hi = config.defocus_range
        defocus = rng.uniform(lo, hi, n)
    astig_angle = rng.uniform(0.0, 180.0, n)

    n_junk = int(round(config.junk_fraction * n))
    junk_rows = rng.permutation(n)[:n_junk]
    kind = np.full(n, -1)
    if n_junk:
        kind[junk_rows] = _balanced(rng, len(config.junk_kinds), n_junk)

    # Parameters only some junk kinds use; drawn for every particle so the stream never depends on the kinds.
    j_rot, j_tilt = _uniform_sphere(rng, n)
    j_psi = rng.uniform(-180.0, 180.0, n)
    j_dir = rng.uniform(0.0, 360.0, n)
    j_dist = rng.uniform(*DISPLACEMENT_RANGE, n) * config.box
    edge_offset = rng.uniform(-0.3, 0.3, n) * config.box
    edge_width = rng.uniform(0.5, 2.0, n)
    edge_step = rng.uniform(1.5, 4.0, n)
    grad = rng.uniform(0.5, 1.5, n)
    grad_dir = rng.uniform(0.0, 360.0, n)

    plan.update(
        rot=wrap_deg(rot),
        tilt=np.asarray(tilt, dtype=np.float64),
        psi=wrap_deg(psi),
        origin=origin,
        view_id=view_id,
        defocus_u=defocus + config.astigmatism / 2,
        defocus_v=defocus - config.astigmatism / 2,
        defocus_angle=astig_angle,
        kind=kind,
        j_rot=wrap_deg(j_rot),
        j_tilt=j_tilt,
        j_psi=j_psi,
        j_dir=j_dir,
        j_dist=j_dist,
        edge_offset=edge_offset,
        edge_width=edge_width,
        edge_step=edge_step,
        grad=grad,
        grad_dir=grad_dir,
    )
    return plan


class _Simulator:
    """The image-making part: projectors for the particle and the decoy, CTF, junk, scaling."""

    def __init__(self, config: SimulationConfig, volume: Volume, plan: dict[str, np.ndarray]):
        self.c = config
        self.plan = plan
        self.box = config.box
        self.main = FourierProjector(volume.data)
        kinds = {config.junk_kinds[k] for k in np.unique(plan["kind"]) if k >= 0}
        self.kind_names = list(config.junk_kinds)
        # Fixed probe views to compare the molecules' projection strength (independent of the seed).
        probe = np.random.default_rng(12345)
        prot, ptilt = _uniform_sphere(probe, 32)
        ppsi = probe.uniform(-180, 180, 32)
        main_var = float(np.mean(np.var(self.main.project(prot, ptilt, ppsi), axis=(1, 2))))
        if main_var <= 0:
            raise InputError("the map is empty (all projections are constant)", volume.info.get("path"))
        # Scale of the clean projections, for sizing the carbon edges relative to the particle.
        self.ref_std = math.sqrt(main_var)
        self.decoy: FourierProjector | None = None
        if "other_molecule" in kinds:
            decoy_vol = phantom_volume(self.box, seed=DECOY_SEED + 1000 * config.phantom_seed)
            decoy = FourierProjector(decoy_vol)
            decoy_var = float(np.mean(np.var(decoy.project(prot, ptilt, ppsi), axis=(1, 2))))
            self.decoy = FourierProjector(decoy_vol * math.sqrt(main_var / decoy_var))
        self._canonical_views: dict[int, np.ndarray] = {}
        if len(plan["view_rot"]):
            canon = self.main.project(plan["view_rot"], plan["view_tilt"], np.zeros(len(plan["view_rot"])))
            self._canonical_views = {i: canon[i] for i in range(len(canon))}

    def ctf(self, rows: np.ndarray, size: int | None = None) -> np.ndarray | None:
        if not self.c.ctf:
            return None
        p, c = self.plan, self.c
        return ctf_2d(
            size or self.box,
            c.pixel_size,
            p["defocus_u"][rows],
            p["defocus_v"][rows],
            p["defocus_angle"][rows],
            c.voltage,
            c.cs,
            c.amplitude_contrast,
            bfactor=c.bfactor,
            rfft=True,
        ).astype(np.float32)

    def clean(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(signal, canonical) images of the given particles before scaling: signal = CTF-modulated image in
        the particle's frame; canonical = psi 0, no shift, no CTF."""
        p, box = self.plan, self.box
        m = len(rows)
        names = np.array([self.kind_names[k] if k >= 0 else NOT_JUNK for k in p["kind"][rows]])
        origin_px = p["origin"][rows] / self.c.pixel_size
        phase_np = shift_phase(box, -origin_px)  # content moves by −origin
        phase = None if phase_np is None else torch.from_numpy(phase_np)
        canonical = np.zeros((m, box, box), dtype=np.float32)

        def slices(projector: FourierProjector, sel: np.ndarray, rot: str, tilt: str, psi: str) -> torch.Tensor:
            r = rows[sel]
            f = projector.slices(euler_matrix(p[rot][r], p[tilt][r], p[psi][r]))
            return f if phase is None else f * phase[sel]

        # CTF-free transforms in the particle frame; displaced particles start from the particle projection.
        f_proj = torch.zeros((m, box, box // 2 + 1), dtype=torch.complex64)
        sel = np.isin(names, (NOT_JUNK, "off_centre", "aggregate"))
        if sel.any():
            f_proj[sel] = slices(self.main, sel, "rot", "tilt", "psi")
        sel = names == NOT_JUNK
        if sel.any():
            canonical[sel] = self._canonical(rows[sel])
        sel = names == "other_molecule"
        if sel.any():
            r = rows[sel]
            f_proj[sel] = slices(self.decoy, sel, "j_rot", "j_tilt", "psi")
            canonical[sel] = self.decoy.project(p["j_rot"][r], p["j_tilt"][r], np.zeros(len(r)))

        ctf = self.ctf(rows)
        signal = images_from_half(f_proj if ctf is None else f_proj * torch.from_numpy(ctf), box).numpy()

        real_space = np.isin(names, ("off_centre", "aggregate", "carbon_edge"))
        if real_space.any():
            signal[real_space], canonical[real_space] = self._real_space_junk(
                rows, names, real_space, images_from_half(f_proj[real_space], box).numpy(), slices, origin_px
            )
        return signal, canonical

    def _real_space_junk(
        self,
        rows: np.ndarray,
        names: np.ndarray,
        real_space: np.ndarray,
        projection: np.ndarray,
        slices: Callable[..., torch.Tensor],
        origin_px: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Junk built in real space (displaced particles, film edges), made on a canvas twice the box and
        cropped after the CTF: as in a box extracted from a micrograph, what lies outside the box is cut off
        but its CTF fringes still reach in, and nothing wraps around."""
        p, box = self.plan, self.box
        big = 2 * box
        r_rows, r_names = rows[real_space], names[real_space]
        content = np.zeros((len(r_rows), big, big), dtype=np.float32)
        direction = np.deg2rad(p["j_dir"][r_rows])
        dx = p["j_dist"][r_rows] * np.cos(direction)
        dy = p["j_dist"][r_rows] * np.sin(direction)
        sel = r_names == "off_centre"
        if sel.any():
            content[sel] = displace(_pad_canvas(projection[sel], big), dx[sel], dy[sel])
        sel = r_names == "aggregate"
        if sel.any():
            # The second copy in its own random orientation; the pair is centred between the two.
            f_second = slices(self.main, real_space & (names == "aggregate"), "j_rot", "j_tilt", "j_psi")
            first = _pad_canvas(projection[sel], big)
            second = _pad_canvas(images_from_half(f_second, box).numpy(), big)
            content[sel] = displace(first, -dx[sel] / 2, -dy[sel] / 2) + displace(second, dx[sel] / 2, dy[sel] / 2)
        sel = r_names == "carbon_edge"
        if sel.any():
            r = r_rows[sel]
            content[sel] = self.ref_std * carbon_edge(
                big,
                p["j_dir"][r],
                p["edge_offset"][r],
                p["edge_width"][r],
                p["edge_step"][r],
                p["grad"][r],
                p["grad_dir"][r],
                length=box,
            )
        f_big = half_from_images(torch.from_numpy(content))
        ctf = self.ctf(r_rows, size=big)
        if ctf is not None:
            f_big = f_big * torch.from_numpy(ctf)
        signal = _crop_canvas(images_from_half(f_big, big).numpy(), box)
        canonical = canonicalise(content, p["psi"][r_rows], origin_px[real_space], out_size=box)
        return signal, canonical

    def _canonical(self, rows: np.ndarray) -> np.ndarray:
        p = self.plan
        vid = p["view_id"][rows]
        if self._canonical_views and (vid >= 0).all():
            return np.stack([self._canonical_views[int(v)] for v in vid])
        return self.main.project(p["rot"][rows], p["tilt"][rows], np.zeros(len(rows)))


def _drop_pages(array: np.ndarray) -> None:
    """Unmap the written pages of a memory-mapped output so resident memory stays flat however many
    particles are written. The pages stay in the page cache (a shared file mapping), so nothing is lost."""
    mm = getattr(array, "_mmap", None)
    if mm is None and isinstance(getattr(array, "base", None), np.memmap):
        mm = getattr(array.base, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED)


def _variances(images: np.ndarray) -> np.ndarray:
    """Per-image pixel variance (float64 result; float32 sums are exact enough over one image)."""
    return torch.var(torch.from_numpy(images), dim=(-2, -1), unbiased=False).numpy().astype(np.float64)


def _pad_canvas(images: np.ndarray, size: int) -> np.ndarray:
    """Embed (n, box, box) images in zeros of (n, size, size), centre pixel on centre pixel."""
    box = images.shape[-1]
    out = np.zeros((len(images), size, size), dtype=images.dtype)
    lo = size // 2 - box // 2
    out[:, lo : lo + box, lo : lo + box] = images
    return out


def _crop_canvas(images: np.ndarray, box: int) -> np.ndarray:
    size = images.shape[-1]
    lo = size // 2 - box // 2
    return np.ascontiguousarray(images[:, lo : lo + box, lo : lo + box])


def simulate_dataset(
    config: SimulationConfig,
    out_dir: str | Path,
    progress: Callable[[int], None] | None = None,
    threads: int = 1,
) -> SimulationResult:
    """Simulate ``config.n_particles`` particles into ``out_dir`` (see the module docstring for the files).

    Inputs are checked before anything is written; on any failure no output file is left behind (in
    particular no ``particles.star``). ``progress`` is called with the number of particles just finished.
    ``threads`` bounds torch's CPU threads while simulating: the work is many small batched operations, and on
    a shared 2-core machine a second OpenMP thread that has to wait for a busy core makes it slower, not
    faster (measured 3-4x); one thread also keeps results independent of the machine's core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        return _simulate(config, out_dir, progress)
    finally:
        torch.set_num_threads(previous)


def _simulate(
    config: SimulationConfig, out_dir: str | Path, progress: Callable[[int], None] | None
) -> SimulationResult:
    t0 = time.perf_counter()
    config.validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", out)
    if (out / PARTICLES_STAR).exists() and not config.overwrite:
        raise InputError(
            f"already holds a simulated set ({PARTICLES_STAR}); choose another folder, or replace it with --force "
            "(overwrite=True)",
            out,
        )
    volume = load_source(config.source, config.box, config.pixel_size, config.map_pixel_size, config.phantom_seed)
    plan = draw_plan(config)
    sim = _Simulator(config, volume, plan)
    n, box = config.n_particles, config.box

    # Signal scale from the good particles' mean signal variance (exact when there are <= PILOT of them).
    good_rows = np.flatnonzero(plan["kind"] < 0)
    pilot = good_rows[:PILOT] if len(good_rows) else np.arange(min(n, PILOT))
    pilot_var = []
    for start in range(0, len(pilot), CHUNK):
        signal, _ = sim.clean(pilot[start : start + CHUNK])
        pilot_var.append(_variances(signal))
    mean_var = float(np.mean(np.concatenate(pilot_var)))
    if not mean_var > 0:
        raise InputError("the simulated particles have no signal (empty map?)", volume.info.get("path"))
    noise_free = math.isinf(config.snr)
    noise_sigma = 0.0 if noise_free else 1.0
    target_var = 1.0 if noise_free else config.snr * noise_sigma**2
    scale = math.sqrt(target_var / mean_var)

    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        if config.overwrite:
            # A stale particles.star must not survive a failed re-run next to new stacks.
            (out / PARTICLES_STAR).unlink(missing_ok=True)
        signal_var_sum, n_good = 0.0, 0
        with contextlib.ExitStack() as stack:
            images = stack.enter_context(stack_writer(out / PARTICLES_STACK, n, box, config.pixel_size))
            clean = stack.enter_context(stack_writer(out / CLEAN_STACK, n, box, config.pixel_size))
            for k, start in enumerate(range(0, n, CHUNK)):
                rows = np.arange(start, min(n, start + CHUNK))
                signal, canonical = sim.clean(rows)
                signal *= scale
                good = plan["kind"][rows] < 0
                signal_var_sum += float(_variances(signal[good]).sum())
                n_good += int(good.sum())
                if not noise_free:
                    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(1, k)))
                    signal += noise_sigma * rng.standard_normal(signal.shape, dtype=np.float32)
                images[rows] = signal
                clean[rows] = canonical * scale
                _drop_pages(images)
                _drop_pages(clean)
                if progress is not None:
                    progress(len(rows))
            snr_measured = signal_var_sum / max(n_good, 1) / (noise_sigma**2 if not noise_free else 1.0)
            gt, particles, optics = _tables(config, plan, _project_relative(out_dir))
            info = {
                "relion_canon_version": __version__,
                "config": config.to_json(),
                "source": volume.info,
                "noise_sigma": noise_sigma,
                "signal_scale": scale,
                "snr_requested": "inf" if noise_free else config.snr,
                "snr_measured": "inf" if noise_free else snr_measured,
                "mean_signal_variance": snr_measured * (noise_sigma**2 if not noise_free else 1.0),
                "n_particles": n,
                "n_junk": int((plan["kind"] >= 0).sum()),
                "junk_counts": {
                    name: int((plan["kind"] == i).sum()) for i, name in enumerate(config.junk_kinds)
                },
                "views": {"rot": plan["view_rot"].tolist(), "tilt": plan["view_tilt"].tolist()},
                "image_model": "image = s * IFT[CTF * FT[projection moved by -origin]] + N(0, noise_sigma^2)",
                "files": {
                    "particles": PARTICLES_STAR,
                    "stack": PARTICLES_STACK,
                    "ground_truth": GROUND_TRUTH_STAR,
                    "clean": CLEAN_STACK,
                },
            }
            write_star({"optics": optics, "particles": gt}, out / GROUND_TRUTH_STAR, version=VERSION_31)
            written.append(out / GROUND_TRUTH_STAR)
            with atomic_path(out / SIMULATION_JSON) as tmp:
                tmp.write_text(json.dumps(info, indent=2) + "\n")
            written.append(out / SIMULATION_JSON)
            written += [out / PARTICLES_STACK, out / CLEAN_STACK]
        write_star({"optics": optics, "particles": particles}, out / PARTICLES_STAR, version=VERSION_31)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created_dir:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return SimulationResult(
        out_dir=out,
        particles_star=out / PARTICLES_STAR,
        n_particles=n,
        n_junk=info["n_junk"],
        signal_scale=scale,
        noise_sigma=noise_sigma,
        snr_measured=math.inf if noise_free else snr_measured,
        seconds=time.perf_counter() - t0,
        info=info,
    )


def _project_relative(out_dir: Path) -> str:
    """The output folder as RELION will look for it: relative to the project directory (the working directory)
    when it lies inside it, absolute otherwise. Readers fall back to the STAR file's folder, so the set still
    reads after being moved."""
    out = Path(out_dir).resolve()
    try:
        return out.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return out.as_posix()


def _tables(
    config: SimulationConfig, plan: dict[str, np.ndarray], folder: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ground truth, particles, optics) tables; image names point into ``folder`` (project-relative)."""
    n = config.n_particles
    idx = np.arange(n)
    prefix = "" if folder in ("", ".") else folder + "/"
    names = [format_image_name(i, prefix + PARTICLES_STACK) for i in idx]
    mics = [f"Micrographs/mic{i // config.particles_per_micrograph + 1:06d}.mrc" for i in idx]
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [float(config.amplitude_contrast)],
            "rlnSphericalAberration": [float(config.cs)],
            "rlnVoltage": [float(config.voltage)],
            "rlnImagePixelSize": [float(config.pixel_size)],
            "rlnImageSize": [int(config.box)],
            "rlnImageDimensionality": [2],
        }
    )
    ctf_cols: dict[str, np.ndarray] = {}
    if config.ctf:
        ctf_cols = {
            "rlnDefocusU": plan["defocus_u"],
            "rlnDefocusV": plan["defocus_v"],
            "rlnDefocusAngle": plan["defocus_angle"],
        }
        if config.bfactor:
            ctf_cols["rlnCtfBfactor"] = np.full(n, float(config.bfactor))
    particles = pd.DataFrame({"rlnImageName": names, "rlnMicrographName": mics, **ctf_cols, "rlnOpticsGroup": 1})

    kind = plan["kind"]
    kind_names = np.array([config.junk_kinds[k] if k >= 0 else NOT_JUNK for k in kind], dtype=object)
    # The decoy's own orientation is its truth; every other particle keeps the drawn one.
    decoy = kind_names == "other_molecule"
    rot = np.where(decoy, plan["j_rot"], plan["rot"])
    tilt = np.where(decoy, plan["j_tilt"], plan["tilt"])
    shows_view = np.isin(kind_names, (NOT_JUNK, "off_centre", "aggregate"))
    zeros = np.zeros(n)
    gt = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnMicrographName": mics,
            "rlnAngleRot": rot,
            "rlnAngleTilt": tilt,
            "rlnAnglePsi": plan["psi"],
            "rlnOriginXAngst": plan["origin"][:, 0],
            "rlnOriginYAngst": plan["origin"][:, 1],
            "rlnDefocusU": ctf_cols.get("rlnDefocusU", zeros),
            "rlnDefocusV": ctf_cols.get("rlnDefocusV", zeros),
            "rlnDefocusAngle": ctf_cols.get("rlnDefocusAngle", zeros),
            **({"rlnCtfBfactor": ctf_cols["rlnCtfBfactor"]} if "rlnCtfBfactor" in ctf_cols else {}),
            "rlnOpticsGroup": 1,
            "rlnCanonIsJunk": (kind >= 0).astype(int),
            "rlnCanonJunkKind": kind_names,
            "rlnCanonViewId": np.where(shows_view, plan["view_id"], -1).astype(int),
            "rlnCanonCleanImageName": [format_image_name(i, prefix + CLEAN_STACK) for i in idx],
        }
    )
    return gt, particles, optics


def junk_kinds_from_text(text: str | Sequence[str]) -> tuple[str, ...]:
    """'noise,aggregate' or ['noise', 'aggregate'] → a validated tuple; 'all' → every kind."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [s.strip() for s in items if s.strip()]
    if items == ["all"]:
        return JUNK_KINDS
    unknown = [s for s in items if s not in JUNK_KINDS]
    if unknown:
        raise InputError(f"simulate: unknown junk kind(s) {', '.join(unknown)}; choose from {', '.join(JUNK_KINDS)}")
    return tuple(items)
