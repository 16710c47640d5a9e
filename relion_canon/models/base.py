"""What every model offers the one training engine. Networks and losses only: no file I/O here.

A model trains in *phases* (one optimiser each): a plain auto-encoder has one phase, a GAN has a critic
phase and a generator phase. For every batch the engine asks :meth:`CanonModel.phases` which phases to
run, calls ``model(batch, phase)`` (through DistributedDataParallel when distributed), back-propagates the
returned ``"loss"`` and steps that phase's optimiser. Everything else the forward returns is logged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
"""A training batch. Always ``"image"`` (B, 1, H, W) float32 and ``"index"`` (B,) int64 (particle rows);
``"psi"`` (B,) radians where angle labels are used; ``"ctf"`` (B, H, W) on the unshifted FFT grid where
the decoder applies the CTF."""


@dataclasses.dataclass
class ModelConfig:
    """Base of every model's hyper-parameters; subclasses add theirs. Must hold only JSON-able values."""

    box: int = 64  # image size the networks are built for
    lr: float = 1e-4
    weight_decay: float = 0.0
    apply_ctf: bool = False  # multiply decoder output by the particle's CTF (physics in the decoder)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)


class CanonModel(nn.Module):
    """Base class. Subclasses set ``name`` and ``config_class`` and implement the four methods below."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    needs_labels: bool = False  # True when training needs "psi" in the batch

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def phases(self, step: int) -> tuple[str, ...]:
        """Phases to run on the batch of global step ``step`` (e.g. the paper's 1 critic : 4 decoder steps)."""
        return ("model",)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per phase name."""
        raise NotImplementedError

    def after_step(self, phase: str) -> None:
        """Called after each optimiser step of ``phase`` (e.g. to clip a critic's weights)."""

    def lr_milestones(self, epochs: int) -> list[int]:
        """Epochs at which every learning rate is multiplied by 0.1 (none by default)."""
        return []

    def forward(self, batch: Batch, phase: str) -> dict[str, torch.Tensor]:
        """Losses of one phase; must contain the scalar ``"loss"`` to back-propagate."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor, ctf: torch.Tensor | None = None, canonical: bool = False) -> dict[str, torch.Tensor]:
        """Per-particle outputs for (B, 1, H, W) images.

        Always ``"latent"`` (B, L): the representation the analysis works on. ``"psi"`` (B,) in radians
        where the model itself predicts an in-plane angle (in its own canonical frame). With
        ``canonical=True`` also ``"canonical"`` (B, H, W): the unrotated, denoised image.
        """
        raise NotImplementedError
