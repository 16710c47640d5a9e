"""The one training loop for every model: device, precision, data feeding, checkpoints, resume, distributed.

Launch with ``torchrun --nproc_per_node K relion-canon train ...`` (or ``python -m torch.distributed.run``)
for several GPUs or processes: each process finds its rank in the environment, takes an equal share of
every global batch, and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from relion_canon.context import RunContext
from relion_canon.errors import InputError
from relion_canon.io.particles import read_particles
from relion_canon.io.star import ParticleStar
from relion_canon.models import CanonModel, model_class
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train import checkpoint
from relion_canon.train.data import DataSpec, EpochSampler, ParticleBatches, make_loader
from relion_canon.train.devices import (
    device_text,
    distributed,
    reduce_mean,
    resolve_device,
    resolve_precision,
    seed_everything,
)

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left in place."""


class TrainingStopped(RuntimeError):
    """``RunContext.should_stop`` asked for a stop (e.g. RELION's abort file); the last epoch's checkpoint is kept."""


@dataclass
class TrainConfig:
    model: str = "rotinv-ae"
    model_options: dict[str, Any] = field(default_factory=dict)  # overrides of the model's config fields
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    epochs: int = 20
    batch_size: int = 64  # global batch: split across processes when distributed
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp16; fp32 on CPU) | fp32 | bf16 | fp16
    workers: int = 0  # DataLoader worker processes
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # This process trains alone even under torchrun (a network only rank 0 needs, trained after the shared passes)
    single_process: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d


@dataclass
class TrainResult:
    model_path: Path
    history: list[dict[str, float]]
    epochs_run: int
    resumed_from: int  # epoch the run started at (0 = fresh)


# --- set-up helpers ---------------------------------------------------------------------------------------------


def build_model(name: str, box: int, options: dict[str, Any]) -> CanonModel:
    cls = model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(f"model {name} has no option(s) {', '.join(unknown)}; it has: {', '.join(sorted(fields))}")
    config = cls.config_class(**{**options, "box": box})
    return cls(config)


def _lr_factor(epoch: int, milestones: list[int]) -> float:
    return 0.1 ** sum(epoch >= m for m in milestones)


# --- the loop ---------------------------------------------------------------------------------------------------


def train(
    particles: str | Path | ParticleStar,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = True,
    context: RunContext = RunContext(),
) -> TrainResult:
    """Train ``config.model`` on the particles of a STAR file; write ``model.pt`` and ``checkpoint.pt`` to ``out_dir``.

    With ``resume`` and a compatible ``checkpoint.pt`` in ``out_dir``, training continues after its last
    completed epoch and ends exactly where an uninterrupted run would (on the CPU, bit for bit).
    ``context.should_stop`` is polled after every epoch; a stop raises :class:`TrainingStopped`.
    """
    run = _set_up(particles, Path(out_dir), config, context.project_dir)
    if resume and run.checkpoint_path.exists():
        _resume(run)
    feed = _feed(run)
    if run.is_main and run.start_epoch == 0:
        log.info(_start_line(run))
    for epoch in range(run.start_epoch, config.epochs):
        record = _one_epoch(run, feed, epoch, context.progress)
        run.history.append(record)
        if run.is_main:
            log.info(_epoch_line(record, config.epochs))
            _save(run, epoch + 1)
        if context.should_stop():
            raise TrainingStopped(f"stopped after epoch {epoch + 1}; resume from {run.checkpoint_path}")
    if run.world > 1:
        dist.barrier()
    return TrainResult(run.out_dir / MODEL_FILE, run.history, max(0, config.epochs - run.start_epoch), run.start_epoch)


@dataclass
class _Run:
    """One training run's state, carried from epoch to epoch and into its checkpoints."""

    config: TrainConfig
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None
    dataset: ParticleBatches
    model: CanonModel
    optimizers: dict[str, torch.optim.Optimizer]
    base_lrs: dict[str, list[float]]
    milestones: list[int]
    scaler: torch.amp.GradScaler
    meta: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    global_step: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE


@dataclass
class _Feed:
    """How batches reach the network: this rank's share of every epoch, and the (maybe distributed) network."""

    net: torch.nn.Module
    sampler: EpochSampler
    loader: DataLoader


def _set_up(particles: str | Path | ParticleStar, out_dir: Path, config: TrainConfig,
            project_dir: Path | None) -> _Run:
    """Process group, device, precision, seeded data and a fresh model with its optimisers."""
    rank, world, local_rank = distributed()
    if config.single_process:
        rank, world = 0, 1
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = resolve_precision(config.precision, device)
    star = particles if isinstance(particles, ParticleStar) else read_particles(particles, project_dir=project_dir)

    seed_everything(config.seed, rank)  # before the model is built: its initial weights come from this seed
    dataset = ParticleBatches(star, config.preprocess, project_dir=project_dir)
    model = build_model(config.model, dataset.box, config.model_options)
    dataset.set_spec(data_spec(model))
    model.to(device)
    optimizers = model.make_optimizers()
    return _Run(
        config=config, out_dir=out_dir, rank=rank, world=world, device=device, amp_dtype=amp_dtype,
        dataset=dataset, model=model, optimizers=optimizers,
        base_lrs={name: [g["lr"] for g in opt.param_groups] for name, opt in optimizers.items()},
        milestones=model.lr_milestones(config.epochs),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        meta=_metadata(config, model, dataset),
    )


def _resume(run: _Run) -> None:
    """Continue from ``checkpoint.pt``: weights, optimisers, scaler, random state, epoch, step and history."""
    state = checkpoint.load(run.checkpoint_path, map_location=run.device)
    _check_compatible(state, run.meta, run.checkpoint_path)
    run.model.load_state_dict(state["state_dict"])
    for name, opt in run.optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    run.start_epoch, run.global_step, run.history = state["epoch"], state["global_step"], list(state["history"])
    if run.is_main:
        log.info(f"Resuming from {run.checkpoint_path} after epoch {run.start_epoch}/{run.config.epochs}")


def _feed(run: _Run) -> _Feed:
    """Wrap the network for DistributedDataParallel (after resuming: it starts every rank from rank 0's
    weights) and give this rank its share of each global batch."""
    net: torch.nn.Module = run.model
    if run.world > 1:
        device = run.device
        net = DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    n, world = len(run.dataset), run.world
    local_batch = max(1, run.config.batch_size // world)
    sampler = EpochSampler(n, run.config.seed, shuffle=True, rank=run.rank, world_size=world)
    loader = make_loader(run.dataset, sampler, local_batch, run.config.workers, drop_last=n // world >= local_batch)
    return _Feed(net, sampler, loader)


def _one_epoch(run: _Run, feed: _Feed, epoch: int, progress: bool) -> dict[str, float]:
    """Train one epoch at its learning rate; its history record (losses averaged over steps and ranks)."""
    feed.sampler.set_epoch(epoch)
    factor = _lr_factor(epoch, run.milestones)
    for name, opt in run.optimizers.items():
        for group, lr in zip(opt.param_groups, run.base_lrs[name]):
            group["lr"] = lr * factor
    run.model.train()
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    # Each step's loss (this process's): the figures show them, since a short job has too few epochs for a curve.
    steps: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    seen = 0
    bar = tqdm(feed.loader, desc=f"epoch {epoch + 1}/{run.config.epochs}", unit="batch", leave=False,
               disable=not (progress and run.is_main) or None)
    for batch in bar:
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        for phase in run.model.phases(run.global_step):
            out = _step(run, feed.net, batch, phase, epoch)
            for key, value in out.items():
                sums[f"{phase}/{key}"] += float(value.detach())
                counts[f"{phase}/{key}"] += 1
                if key == "loss":
                    steps[f"{phase}/{key}"].append(round(float(value.detach()), 6))
        run.global_step += 1
        seen += len(batch["index"]) * run.world
        if run.is_main and progress:
            bar.set_postfix({k.split("/")[0]: f"{sums[k] / counts[k]:.4g}" for k in sums if k.endswith("/loss")})
    seconds = time.perf_counter() - t0
    record = {"epoch": epoch + 1, "seconds": seconds, "particles_per_s": seen / max(seconds, 1e-9), "lr_factor": factor}
    record.update({k: reduce_mean(sums[k] / counts[k], run.world) for k in sorted(sums)})
    record["step_losses"] = dict(steps)
    return record


def _step(run: _Run, net: torch.nn.Module, batch: dict[str, torch.Tensor], phase: str,
          epoch: int) -> dict[str, torch.Tensor]:
    """One optimiser step of ``phase`` on ``batch``; the network's outputs. A NaN/inf loss stops the run."""
    amp_dtype = run.amp_dtype
    with torch.autocast(run.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = net(batch, phase)
    loss = out["loss"]
    if not torch.isfinite(loss.detach()).all():
        last_good = run.checkpoint_path if epoch > run.start_epoch or run.start_epoch else "none (first epoch)"
        raise TrainingDiverged(
            f"training diverged: {phase} loss is {loss.item()} at epoch {epoch + 1}, step {run.global_step}; "
            f"the last good checkpoint is {last_good}"
            " — lower --lr, or check the particles with `relion-canon info`"
        )
    opt = run.optimizers[phase]
    opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(opt)
    run.scaler.update()
    run.model.after_step(phase)
    return out


def _save(run: _Run, epochs_done: int) -> None:
    """``model.pt`` (what prediction needs) and ``checkpoint.pt`` (that, plus what resuming needs)."""
    state = {**run.meta, "state_dict": run.model.state_dict(), "history": run.history, "epoch": epochs_done}
    checkpoint.save(run.checkpoint_path, {
        **state,
        "global_step": run.global_step,
        "optimizers": {name: opt.state_dict() for name, opt in run.optimizers.items()},
        "scaler": run.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    })
    checkpoint.save(run.out_dir / MODEL_FILE, state)


def _start_line(run: _Run) -> str:
    dataset, config = run.dataset, run.config
    return (
        f"Training {config.model} on {len(dataset)} particles ({dataset.box} px, "
        f"{float(np.median(dataset.pixel_size)):.3g} Å/px) for {config.epochs} epochs on {device_text(run.device, run.world)}"
        f"{'' if run.amp_dtype is None else f' with {_DTYPE_NAMES[run.amp_dtype]} autocast'}"
    )


def data_spec(model: CanonModel) -> DataSpec:
    """What the batches must carry for this model: labels (and origins, to centre the targets), CTFs."""
    return DataSpec(labels=model.needs_labels, origins=model.needs_labels, ctf=model.config.apply_ctf)


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _metadata(config: TrainConfig, model: CanonModel, dataset: ParticleBatches) -> dict[str, Any]:
    """What a model file must carry to be applied to new particles exactly as in training."""
    return {
        "model": config.model,
        "model_config": model.config.to_dict(),
        "preprocess": config.preprocess.to_dict(),
        "input_box": int(dataset.preprocessor.in_box),
        "box": int(dataset.box),
        "pixel_size": float(np.median(dataset.pixel_size)),
        "n_particles": len(dataset),
        "train_config": config.to_dict(),
    }


def _check_compatible(state: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    for key in ("model", "model_config", "preprocess", "box", "n_particles"):
        if state.get(key) != meta[key]:
            raise InputError(
                f"incompatible checkpoint: its {key} is {state.get(key)!r}, this run's is {meta[key]!r} "
                "(use another output folder, or start afresh without resuming)",
                path,
            )


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    losses = "  ".join(f"{k}={v:.4g}" for k, v in record.items() if "/" in k)
    return (f"epoch {int(record['epoch'])}/{epochs}  {losses}  "
            f"{record['seconds']:.1f} s ({record['particles_per_s']:.0f} particles/s)")
