"""`relion-canon train` and `relion-canon predict`: fit a model to particles, apply it to particles."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from relion_canon.cli.relaunch import relaunch_on_gpus
from relion_canon.context import RunContext
from relion_canon.io.output_dir import output_folder, stack_files
from relion_canon.io.particles import is_cryosparc, read_particles
from relion_canon.logs import log_to
from relion_canon.models import MODEL_CLASSES
from relion_canon.options import parse_model_options
from relion_canon.parallel import is_writer
from relion_canon.preprocess import PreprocessConfig
from relion_canon.threads import cpu_threads
from relion_canon.train.checkpoint import save_model_from_checkpoint
from relion_canon.train.devices import device_from_gpu_ids, resolve_device
from relion_canon.train.engine import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    TrainConfig,
    TrainingDiverged,
    train,
)
from relion_canon.predict_star import predict_file


def _model_options(pairs: tuple[str, ...]) -> dict:
    try:
        return parse_model_options(pairs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None


@click.command("train")
@click.option("--i", "particles", required=True, type=click.Path(path_type=Path),
              help="Particle STAR file or cryoSPARC particles .cs.")
@click.option("--passthrough", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="cryoSPARC: the passthrough .cs that goes with the .cs given to --i (joined on uid).")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project folder image paths are relative to (RELION's, or cryoSPARC's for a .cs; default: here).")
@click.option("--o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: model.pt (the trained model), checkpoint.pt (for resuming). One job at a time.")
@click.option("--model", type=click.Choice(list(MODEL_CLASSES)), default="rotinv-ae", show_default=True)
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True,
              help="Global batch size (split across processes when distributed).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: the model's).")
@click.option("--box", type=int, default=None, help="Fourier-crop the particles to this box (px) first.")
@click.option("--labels/--no-labels", default=False, show_default=True,
              help="rotinv-ae: learn psi from the STAR's rlnAnglePsi (e.g. after Class2D) instead of without labels.")
@click.option("--apply-ctf", is_flag=True, help="Apply each particle's CTF to the decoder output (physics in the decoder).")
@click.option("--phase-flip", is_flag=True, help="Phase-flip the particles before training.")
@click.option("--mask", "mask_fraction", type=float, default=None,
              help="Soft circular mask, as a fraction of the image radius (e.g. 0.9).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any model option, e.g. --set latent_dim=4 --set lambda_cone=1 (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--gpu", default=None, help="GPU ids, e.g. 0 or 0,1 (several: one process each through torchrun).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--j", "threads", type=int, default=None, help="CPU threads.")
@click.option("--workers", type=int, default=0, show_default=True, help="Processes reading particles.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start afresh even if the output folder holds a checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(particles: Path, passthrough: Path | None, project_dir: Path | None, out_dir: Path, model: str,
                  epochs: int, batch_size: int, lr: float | None, box: int | None, labels: bool, apply_ctf: bool,
                  phase_flip: bool, mask_fraction: float | None, settings: tuple[str, ...], device: str,
                  gpu: str | None, precision: str, threads: int | None, workers: int, seed: int, no_resume: bool,
                  quiet: bool) -> None:
    """Train a model on the particles of a STAR file (no labels needed)."""
    if gpu:
        relaunch_on_gpus(gpu)
    options = _model_options(settings)
    if lr is not None:
        options["lr"] = lr
    if apply_ctf:
        options["apply_ctf"] = True
    if labels:
        options["angle_mode"] = "labels"
    config = TrainConfig(
        model=model, model_options=options,
        preprocess=PreprocessConfig(box=box, phase_flip=phase_flip, mask_radius_fraction=mask_fraction),
        epochs=epochs, batch_size=batch_size, seed=seed, device=device_from_gpu_ids(gpu, device), precision=precision,
        workers=workers, threads=threads,
    )
    context = RunContext(project_dir=project_dir, progress=not quiet)
    # Under torchrun only rank 0 writes, so only it holds the folder.
    writer = is_writer()
    folder = output_folder(out_dir, inputs=[particles, passthrough], outputs=[MODEL_FILE, CHECKPOINT_FILE]) \
        if writer else contextlib.nullcontext()
    try:
        with log_to(click.echo), folder as held:
            if no_resume and writer:
                (out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
            star = read_particles(particles, passthrough, project_dir)
            if held is not None:
                held.protect(stack_files(star, project_dir))
            result = train(star, out_dir, config, resume=not no_resume, context=context)
            if writer and result.epochs_run == 0:
                # Resumed from a finished checkpoint: its model file (one a killed run wrote is gone with it).
                save_model_from_checkpoint(out_dir / CHECKPOINT_FILE, result.model_path)
    except TrainingDiverged as exc:
        click.echo(f"relion-canon: error: {exc}", err=True)
        sys.exit(3)
    if result.history:
        click.echo(f"Model: {result.model_path}")


@click.command("predict")
@click.option("--i", "particles", required=True, type=click.Path(path_type=Path),
              help="Particle STAR file or cryoSPARC particles .cs.")
@click.option("--passthrough", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="cryoSPARC: the passthrough .cs that goes with the .cs given to --i (joined on uid).")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Project folder image paths are relative to (RELION's, or cryoSPARC's for a .cs; default: here).")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="A model.pt from `relion-canon train` (or its folder).")
@click.option("--o", "out_star", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output STAR: the input with rlnAnglePsi / rlnAnglePsiPrior set.")
@click.option("--device", default="auto", show_default=True)
@click.option("--gpu", default=None, help="GPU id.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--j", "threads", type=int, default=None, help="CPU threads.")
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True)
def predict_command(particles: Path, passthrough: Path | None, project_dir: Path | None, model_path: Path,
                    out_star: Path, device: str, gpu: str | None, batch_size: int, threads: int | None, workers: int,
                    quiet: bool) -> None:
    """Predict each particle's in-plane angle with a trained model."""
    with cpu_threads(threads), log_to(click.echo):
        _predict(particles, passthrough, project_dir, model_path, out_star, device, gpu, batch_size, workers, quiet)


def _predict(particles, passthrough, project_dir, model_path, out_star, device, gpu, batch_size, workers,
             quiet) -> None:
    dev = resolve_device(device_from_gpu_ids(gpu, device))
    # A STAR file is handed over by path, to be read a slice at a time (flat memory for any number of particles).
    source = particles if passthrough is None and not is_cryosparc(particles) else read_particles(
        particles, passthrough, project_dir)
    out = predict_file(source, model_path, out_star, dev, batch_size, workers,
                       context=RunContext(project_dir=project_dir, progress=not quiet))
    click.echo(f"Wrote {out}")


__all__ = ["predict_command", "train_command"]
