"""Where training runs: the process's rank in a torchrun launch, its device, its autocast precision and seeds,
and the few collective operations the loop needs across processes."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from relion_canon.errors import InputError


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, initialising the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        # CPU tensors through gloo as well: the analysis's passes reduce their sums on the CPU
        # (relion_canon.parallel) while training reduces gradients on the GPUs.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
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


def reduce_mean(value: float, world: int) -> float:
    if world <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / world)


def device_text(device: torch.device, world: int) -> str:
    name = "CPU" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{world} processes, {name}" if world > 1 else name
