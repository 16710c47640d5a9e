"""The one training loop for every model: device, precision, data feeding, checkpoints, resume, distributed.

Launch with ``torchrun --nproc_per_node K relion-canon train ...`` (or ``python -m torch.distributed.run``)
for several GPUs or processes: each process finds its rank in the environment, takes an equal share of
every global batch, and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from relion_canon.errors import InputError
from relion_canon.io.particles import read_particles
from relion_canon.io.star import ParticleStar
from relion_canon.models import CanonModel, model_class
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train import checkpoint
from relion_canon.train.data import DataSpec, EpochSampler, ParticleBatches, make_loader

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left in place."""


class TrainingStopped(RuntimeError):
    """``should_stop`` asked for a stop (e.g. RELION's abort file); the last epoch's checkpoint is kept."""


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


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, initialising the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is the GPU of this process when there is one (honouring ``CUDA_VISIBLE_DEVICES``), else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name} asked for, but no CUDA GPU is visible to this process")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def device_from_gpu_ids(gpu: str | None, device: str) -> str:
    """The device a ``--gpu`` value picks: one id is that GPU; empty or several ids keep ``device`` (``auto``
    honours CUDA_VISIBLE_DEVICES; several GPUs are one process each, every one on its own GPU)."""
    if not gpu:
        return device
    ids = [g for g in gpu.split(",") if g.strip()]
    if len(ids) == 1:
        return f"cuda:{int(ids[0])}"
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def seed_everything(seed: int, rank: int = 0) -> None:
    torch.manual_seed(seed + rank)  # ranks draw different augmentations, as different GPUs would
    np.random.seed((seed + rank) % 2**32)


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
    resume: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    project_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``config.model`` on the particles of a STAR file; write ``model.pt`` and ``checkpoint.pt`` to ``out_dir``.

    With ``resume`` and a compatible ``checkpoint.pt`` in ``out_dir``, training continues after its last
    completed epoch and ends exactly where an uninterrupted run would (on the CPU, bit for bit).
    ``should_stop`` is polled after every epoch.
    """
    rank, world, local_rank = _distributed()
    is_main = rank == 0
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = resolve_precision(config.precision, device)
    out_dir = Path(out_dir)
    star = particles if isinstance(particles, ParticleStar) else read_particles(particles, project_dir=project_dir)

    seed_everything(config.seed, rank)
    dataset = ParticleBatches(star, config.preprocess, project_dir=project_dir)
    model = build_model(config.model, dataset.box, config.model_options)
    dataset.set_spec(data_spec(model))
    model.to(device)
    optimizers = model.make_optimizers()
    base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in optimizers.items()}
    milestones = model.lr_milestones(config.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    meta = _metadata(config, model, dataset)
    history: list[dict[str, float]] = []
    start_epoch, global_step = 0, 0
    ckpt_path = out_dir / CHECKPOINT_FILE
    if resume and ckpt_path.exists():
        state = checkpoint.load(ckpt_path, map_location=device)
        _check_compatible(state, meta, ckpt_path)
        model.load_state_dict(state["state_dict"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, global_step, history = state["epoch"], state["global_step"], list(state["history"])
        if is_main:
            log(f"Resuming from {ckpt_path} after epoch {start_epoch}/{config.epochs}")

    net: torch.nn.Module = model
    if world > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    local_batch = max(1, config.batch_size // world)
    sampler = EpochSampler(len(dataset), config.seed, shuffle=True, rank=rank, world_size=world)
    loader = make_loader(dataset, sampler, local_batch, config.workers, drop_last=len(dataset) // world >= local_batch)
    if is_main and start_epoch == 0:
        log(
            f"Training {config.model} on {len(dataset)} particles ({dataset.box} px, "
            f"{float(np.median(dataset.pixel_size)):.3g} Å/px) for {config.epochs} epochs on {_device_text(device, world)}"
            f"{'' if amp_dtype is None else f' with {_DTYPE_NAMES[amp_dtype]} autocast'}"
        )

    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        factor = _lr_factor(epoch, milestones)
        for name, opt in optimizers.items():
            for group, lr in zip(opt.param_groups, base_lrs[name]):
                group["lr"] = lr * factor
        model.train()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        t0 = time.perf_counter()
        seen = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                   disable=not (progress and is_main) or None)
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            for phase in model.phases(global_step):
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = net(batch, phase)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingDiverged(
                        f"training diverged: {phase} loss is {loss.item()} at epoch {epoch + 1}, step {global_step}; "
                        f"the last good checkpoint is {ckpt_path if epoch > start_epoch or start_epoch else 'none (first epoch)'}"
                        " — lower --lr, or check the particles with `relion-canon info`"
                    )
                opt = optimizers[phase]
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                model.after_step(phase)
                for key, value in out.items():
                    sums[f"{phase}/{key}"] += float(value.detach())
                    counts[f"{phase}/{key}"] += 1
            global_step += 1
            seen += len(batch["index"]) * world
            if is_main and progress:
                bar.set_postfix({k.split("/")[0]: f"{sums[k] / counts[k]:.4g}" for k in sums if k.endswith("/loss")})
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "seconds": seconds, "particles_per_s": seen / max(seconds, 1e-9), "lr_factor": factor}
        record.update({k: _reduce_mean(sums[k] / counts[k], world) for k in sorted(sums)})
        history.append(record)
        if is_main:
            log(_epoch_line(record, config.epochs))
            state = {
                **meta,
                "state_dict": model.state_dict(),
                "history": history,
                "epoch": epoch + 1,
            }
            checkpoint.save(ckpt_path, {
                **state,
                "global_step": global_step,
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
            })
            checkpoint.save(out_dir / MODEL_FILE, state)
        if should_stop is not None and should_stop():
            raise TrainingStopped(f"stopped after epoch {epoch + 1}; resume from {ckpt_path}")

    if world > 1:
        dist.barrier()
    return TrainResult(out_dir / MODEL_FILE, history, max(0, config.epochs - start_epoch), start_epoch)


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


def _reduce_mean(value: float, world: int) -> float:
    if world <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / world)


def _device_text(device: torch.device, world: int) -> str:
    name = "CPU" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{world} processes, {name}" if world > 1 else name


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    losses = "  ".join(f"{k}={v:.4g}" for k, v in record.items() if "/" in k)
    return (f"epoch {int(record['epoch'])}/{epochs}  {losses}  "
            f"{record['seconds']:.1f} s ({record['particles_per_s']:.0f} particles/s)")
