"""devices: which device, precision and process a training run gets from the options and the environment."""

from __future__ import annotations

import pytest
import torch

from relion_canon.errors import InputError
from relion_canon.train.devices import device_from_gpu_ids, distributed, resolve_device, resolve_precision


@pytest.mark.parametrize("gpu, device, expected", [
    (None, "auto", "auto"), ("", "cpu", "cpu"), ("1", "auto", "cuda:1"), (" 2 ", "cpu", "cuda:2"),
    ("0,1", "auto", "auto"),  # several GPUs: one process each, every one on its own
])
def test_device_from_gpu_ids(gpu, device, expected):
    assert device_from_gpu_ids(gpu, device) == expected


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is visible")
def test_resolve_device_cuda_without_gpu_is_an_input_error():
    with pytest.raises(InputError, match="device cuda:1 asked for, but no CUDA GPU is visible"):
        resolve_device("cuda:1")


def test_resolve_precision_names():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None  # no autocast on the CPU unless asked for
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp16", cpu) is torch.float16


def test_distributed_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed() == (0, 1, 0)
