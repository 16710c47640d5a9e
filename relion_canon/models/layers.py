"""Convolutional encoder and decoder blocks shared by the models, for any image size from 24 to 256 px."""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def n_levels(box: int, min_size: int = 4) -> int:
    """How many stride-2 stages take ``box`` down to about ``min_size`` (at least 2)."""
    return max(2, int(math.floor(math.log2(box / min_size))))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)  # default eps; paper A's public code set eps=0.8 by mistake
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ConvEncoder(nn.Module):
    """(B, C, box, box) → (B, out_features): stride-2 conv stages, then a linear head.

    ``norm="none"`` is for Wasserstein critics, where batch statistics would break the Lipschitz constraint.
    """

    def __init__(self, box: int, out_features: int, in_channels: int = 1, width: int = 32, max_width: int = 256,
                 norm: str = "batch", activation: type[nn.Module] = nn.LeakyReLU):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        size = box
        for level in range(n_levels(box)):
            out = min(width * 2**level, max_width)
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), _norm(norm, out), activation()]
            channels, size = out, (size + 1) // 2 if size % 2 else size // 2
        self.features = nn.Sequential(*layers)
        self.pool_size = max(1, min(size, 4))
        self.head = nn.Linear(channels * self.pool_size**2, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if h.shape[-1] != self.pool_size:
            h = F.adaptive_avg_pool2d(h, self.pool_size)
        return self.head(h.flatten(1))


class ConvDecoder(nn.Module):
    """(B, in_features) → (B, C, box, box): a linear stem to a small feature map, then upsampling stages."""

    def __init__(self, box: int, in_features: int, out_channels: int = 1, width: int = 32, max_width: int = 256,
                 norm: str = "batch", activation: type[nn.Module] = nn.LeakyReLU):
        super().__init__()
        levels = n_levels(box)
        self.box = box
        self.start = math.ceil(box / 2**levels)
        channels = min(width * 2 ** (levels - 1), max_width)
        self.stem_channels = channels
        self.stem = nn.Sequential(nn.Linear(in_features, channels * self.start**2), activation())
        layers: list[nn.Module] = []
        for level in reversed(range(levels - 1)):
            out = min(width * 2**level, max_width)
            layers += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1), _norm(norm, out), activation()]
            channels = out
        layers += [nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1)]
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stem(z).view(z.shape[0], self.stem_channels, self.start, self.start)
        out = self.features(h)
        if out.shape[-1] != self.box:  # box not a multiple of 2**levels: centre-crop the slightly larger map
            extra = out.shape[-1] - self.box
            lo = extra // 2
            out = out[..., lo : lo + self.box, lo : lo + self.box]
        return out
