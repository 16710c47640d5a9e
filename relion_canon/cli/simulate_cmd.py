"""`relion-canon simulate`: a particle set with ground truth from the phantom, a map or an atomic model."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
from tqdm import tqdm

from relion_canon.errors import InputError
from relion_canon.simulate.dataset import SimulationConfig, junk_kinds_from_text, simulate_dataset

_DEFAULT = SimulationConfig()


def _views(value: str) -> int | str:
    if value == "uniform":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number of views or 'uniform', got {value!r}") from None


def _floats(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@click.command("simulate")
@click.option("--o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder: particles.star/.mrcs, ground_truth.star, ground_truth_clean.mrcs, simulation.json.")
@click.option("--n", "n_particles", type=int, default=_DEFAULT.n_particles, show_default=True,
              help="Number of particles.")
@click.option("--box", type=int, default=_DEFAULT.box, show_default=True, help="Box size in pixels (even).")
@click.option("--pixel-size", type=float, default=_DEFAULT.pixel_size, show_default=True, help="Pixel size in Å.")
@click.option("--source", default=_DEFAULT.source, show_default=True,
              help="'phantom' (built in), a map (.mrc/.map/.ccp4) or an atomic model (.pdb/.cif).")
@click.option("--map-pixel-size", type=float, default=None,
              help="Voxel size of the map in Å (needed when its header has none; overrides the header).")
@click.option("--views", default="1", show_default=True,
              help="1: one view at --rot/--tilt; K: K random views; 'uniform': uniform over all orientations.")
@click.option("--rot", type=float, default=0.0, show_default=True, help="rot of the single view (degrees).")
@click.option("--tilt", type=float, default=0.0, show_default=True, help="tilt of the single view (degrees).")
@click.option("--psi", type=float, default=None, help="One fixed psi for every particle (degrees).")
@click.option("--psi-sigma", type=float, default=None,
              help="psi ~ normal(0, sigma) in degrees; default: uniform in [-180, 180).")
@click.option("--shift-sigma", type=float, default=_DEFAULT.shift_sigma, show_default=True,
              help="Gaussian origin shifts, sigma in Å per axis (0: particles exactly centred).")
@click.option("--snr", type=float, default=_DEFAULT.snr, show_default=True,
              help="Mean signal variance of the good particles / noise variance; 'inf' for noise-free images.")
@click.option("--no-ctf", is_flag=True, help="No CTF (and no defocus columns in particles.star).")
@click.option("--voltage", type=float, default=_DEFAULT.voltage, show_default=True, help="kV.")
@click.option("--cs", type=float, default=_DEFAULT.cs, show_default=True, help="Spherical aberration, mm.")
@click.option("--amplitude-contrast", type=float, default=_DEFAULT.amplitude_contrast, show_default=True)
@click.option("--bfactor", type=float, default=_DEFAULT.bfactor, show_default=True, help="CTF B-factor, Å².")
@click.option("--defocus-range", type=(float, float), default=_DEFAULT.defocus_range, show_default=True,
              help="Defocus drawn uniformly between MIN and MAX, in Å (underfocus positive).")
@click.option("--defocus-values", default=None,
              help="Comma-separated defocus values in Å, equally many particles each (instead of --defocus-range).")
@click.option("--astigmatism", type=float, default=_DEFAULT.astigmatism, show_default=True,
              help="DefocusU - DefocusV in Å; the astigmatism angle is random.")
@click.option("--junk-fraction", type=float, default=_DEFAULT.junk_fraction, show_default=True)
@click.option("--junk-kinds", default="all", show_default=True,
              help="Comma-separated: noise, other_molecule, carbon_edge, off_centre, aggregate (or 'all').")
@click.option("--seed", type=int, default=_DEFAULT.seed, show_default=True, help="Same seed, same files, bit for bit.")
@click.option("--phantom-seed", type=int, default=_DEFAULT.phantom_seed, show_default=True,
              help="Which built-in phantom molecule.")
@click.option("--force", is_flag=True, help="Replace a simulated set already in the output folder.")
@click.option("--j", "threads", type=int, default=1, show_default=True,
              help="CPU threads for torch (as --j everywhere else).")
# The old spelling, kept working but out of --help: --j is the one name every command uses.
@click.option("--threads", "threads_alias", type=int, default=None, hidden=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def simulate(out_dir: Path, n_particles: int, box: int, pixel_size: float, source: str, map_pixel_size: float | None,
             views: str, rot: float, tilt: float, psi: float | None, psi_sigma: float | None, shift_sigma: float,
             snr: float, no_ctf: bool, voltage: float, cs: float, amplitude_contrast: float, bfactor: float,
             defocus_range: tuple[float, float], defocus_values: str | None, astigmatism: float, junk_fraction: float,
             junk_kinds: str, seed: int, phantom_seed: int, force: bool, threads: int, threads_alias: int | None,
             quiet: bool) -> None:
    """Simulate particles with ground truth, in RELION's conventions.

    The defaults are the "realistic" benchmark protocol: the built-in phantom, 64 px at 2.5 Å, one view,
    uniform psi, no shifts, defocus 0.5-2.5 µm, SNR 0.1, 10 % junk of five kinds.
    """
    if threads_alias is not None:
        threads = threads_alias
    try:
        if threads < 1:
            raise InputError(f"--j: must be at least 1, got {threads}")
        config = SimulationConfig(
            n_particles=n_particles, box=box, pixel_size=pixel_size, source=source, map_pixel_size=map_pixel_size,
            phantom_seed=phantom_seed, views=_views(views), rot=rot, tilt=tilt, psi_sigma=psi_sigma, psi=psi,
            shift_sigma=shift_sigma, ctf=not no_ctf, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
            defocus_range=tuple(defocus_range), defocus_values=_floats(defocus_values), astigmatism=astigmatism,
            bfactor=bfactor, snr=snr, junk_fraction=junk_fraction, junk_kinds=junk_kinds_from_text(junk_kinds),
            seed=seed, overwrite=force,
        )
        with tqdm(total=n_particles, desc="simulating", unit="particle", disable=quiet or None, leave=False,
                  file=sys.stderr) as bar:
            result = simulate_dataset(config, out_dir, progress=bar.update, threads=threads)
    except InputError as exc:
        # Same one-line report and status as the relion-canon group gives, also when called on its own.
        click.echo(f"relion-canon: error: {exc}", err=True)
        sys.exit(2)
    snr_text = "noise-free" if math.isinf(result.snr_measured) else f"SNR {result.snr_measured:.3g}"
    click.echo(
        f"Wrote {result.n_particles} particles ({result.n_junk} junk, {snr_text}) to {result.particles_star} "
        f"in {result.seconds:.1f} s"
    )
