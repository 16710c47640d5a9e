"""What a job used, for its report: the peak resident memory of its process and, when it ran on a GPU, the
peak GPU memory torch allocated there."""

from __future__ import annotations

import resource
import sys
from typing import Any


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def resources_used(device_name: str) -> dict[str, Any]:
    """``peak_rss_mb`` and, where ``device_name`` resolved to a CUDA device, the GPU's name and
    ``gpu_peak_allocated_mb`` (torch's allocations only: the CUDA context's own memory is not in it)."""
    used: dict[str, Any] = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if "torch" in sys.modules:
        import torch

        if device_name != "cpu" and torch.cuda.is_available() and torch.cuda.is_initialized():
            index = torch.cuda.current_device() if device_name in ("auto", "cuda") else torch.device(device_name).index
            used["gpu"] = torch.cuda.get_device_name(index)
            used["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(index) / 2**20, 1)
    return used
