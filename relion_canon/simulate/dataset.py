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
drawn up front (:mod:`relion_canon.simulate.plan`) and the noise of each fixed-size chunk from its own child
seed, so a run is bit-identical to any other run with the same configuration.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from relion_canon import __version__
from relion_canon.errors import InputError
from relion_canon.io.atomic import atomic_path
from relion_canon.io.ground_truth import GROUND_TRUTH_STAR
from relion_canon.io.mrc import stack_writer
from relion_canon.io.star import VERSION_31, write_star
from relion_canon.simulate.config import SimulationConfig, junk_kinds_from_text
from relion_canon.simulate.plan import Plan, draw_plan
from relion_canon.simulate.simulator import Simulator
from relion_canon.simulate.sources import Volume, load_source
from relion_canon.simulate.tables import (
    CLEAN_STACK,
    OUTPUT_FILES,
    PARTICLES_STACK,
    PARTICLES_STAR,
    SIMULATION_JSON,
    project_relative,
    star_tables,
)

__all__ = [
    "CLEAN_STACK",
    "GROUND_TRUTH_STAR",
    "OUTPUT_FILES",
    "PARTICLES_STACK",
    "PARTICLES_STAR",
    "SIMULATION_JSON",
    "SimulationConfig",
    "SimulationResult",
    "draw_plan",
    "junk_kinds_from_text",
    "simulate_dataset",
]

# Fixed, so that the noise (drawn per chunk) does not depend on anything but the configuration.
CHUNK = 512
# Good particles whose signal variance sets the signal scale; with fewer good particles the SNR is exact.
PILOT = 2048


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


@dataclass
class _Scaling:
    """How signal and noise are scaled: image = scale · signal + noise_sigma · N(0, 1)."""

    scale: float
    noise_sigma: float

    @property
    def noise_free(self) -> bool:
        return self.noise_sigma == 0.0


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
    faster; one thread also keeps results independent of the machine's core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        return _simulate(config, out_dir, progress)
    finally:
        torch.set_num_threads(previous)


def _check_output_folder(config: SimulationConfig, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", out)
    if (out / PARTICLES_STAR).exists() and not config.overwrite:
        raise InputError(
            f"already holds a simulated set ({PARTICLES_STAR}); choose another folder, or replace it with --force "
            "(overwrite=True)",
            out,
        )


def _scaling(config: SimulationConfig, sim: Simulator, plan: Plan, volume: Volume) -> _Scaling:
    """Signal scale from the good particles' mean signal variance (exact when there are <= PILOT of them)."""
    good_rows = np.flatnonzero(plan["kind"] < 0)
    pilot = good_rows[:PILOT] if len(good_rows) else np.arange(min(config.n_particles, PILOT))
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
    return _Scaling(scale=math.sqrt(target_var / mean_var), noise_sigma=noise_sigma)


def _write_stacks(
    config: SimulationConfig,
    sim: Simulator,
    plan: Plan,
    out: Path,
    scaling: _Scaling,
    progress: Callable[[int], None] | None,
) -> float:
    """Write the particle and clean stacks chunk by chunk; return the measured mean signal variance of the
    good particles (after scaling)."""
    n, box, scale = config.n_particles, config.box, scaling.scale
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
            if not scaling.noise_free:
                rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(1, k)))
                signal += scaling.noise_sigma * rng.standard_normal(signal.shape, dtype=np.float32)
            images[rows] = signal
            clean[rows] = canonical * scale
            _drop_pages(images)
            _drop_pages(clean)
            if progress is not None:
                progress(len(rows))
    return signal_var_sum / max(n_good, 1)


def _info(config: SimulationConfig, plan: Plan, volume: Volume, scaling: _Scaling, snr_measured: float) -> dict:
    """The content of ``simulation.json``."""
    noise_free, noise_sigma = scaling.noise_free, scaling.noise_sigma
    return {
        "relion_canon_version": __version__,
        "config": config.to_json(),
        "source": volume.info,
        "noise_sigma": noise_sigma,
        "signal_scale": scaling.scale,
        "snr_requested": "inf" if noise_free else config.snr,
        "snr_measured": "inf" if noise_free else snr_measured,
        "mean_signal_variance": snr_measured * (noise_sigma**2 if not noise_free else 1.0),
        "n_particles": config.n_particles,
        "n_junk": int((plan["kind"] >= 0).sum()),
        "junk_counts": {name: int((plan["kind"] == i).sum()) for i, name in enumerate(config.junk_kinds)},
        "views": {"rot": plan["view_rot"].tolist(), "tilt": plan["view_tilt"].tolist()},
        "image_model": "image = s * IFT[CTF * FT[projection moved by -origin]] + N(0, noise_sigma^2)",
        "files": {
            "particles": PARTICLES_STAR,
            "stack": PARTICLES_STACK,
            "ground_truth": GROUND_TRUTH_STAR,
            "clean": CLEAN_STACK,
        },
    }


def _simulate(
    config: SimulationConfig, out_dir: str | Path, progress: Callable[[int], None] | None
) -> SimulationResult:
    t0 = time.perf_counter()
    config.validate()
    out = Path(out_dir)
    _check_output_folder(config, out)
    volume = load_source(config.source, config.box, config.pixel_size, config.map_pixel_size, config.phantom_seed)
    plan = draw_plan(config)
    sim = Simulator(config, volume, plan)
    scaling = _scaling(config, sim, plan, volume)

    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        if config.overwrite:
            # A stale particles.star must not survive a failed re-run next to new stacks.
            (out / PARTICLES_STAR).unlink(missing_ok=True)
        mean_signal_var = _write_stacks(config, sim, plan, out, scaling, progress)
        written += [out / PARTICLES_STACK, out / CLEAN_STACK]
        snr_measured = mean_signal_var / (scaling.noise_sigma**2 if not scaling.noise_free else 1.0)
        gt, particles, optics = star_tables(config, plan, project_relative(out_dir))
        info = _info(config, plan, volume, scaling, snr_measured)
        write_star({"optics": optics, "particles": gt}, out / GROUND_TRUTH_STAR, version=VERSION_31)
        written.append(out / GROUND_TRUTH_STAR)
        with atomic_path(out / SIMULATION_JSON) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n")
        written.append(out / SIMULATION_JSON)
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
        n_particles=config.n_particles,
        n_junk=info["n_junk"],
        signal_scale=scaling.scale,
        noise_sigma=scaling.noise_sigma,
        snr_measured=math.inf if scaling.noise_free else snr_measured,
        seconds=time.perf_counter() - t0,
        info=info,
    )
