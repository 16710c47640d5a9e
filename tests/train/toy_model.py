"""A tiny model that follows the CanonModel contract, so engine tests do not depend on the papers' networks.

It has two phases (like the GANs) and an angle head trained without labels, which exercises everything
the engine does in a few seconds.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from relion_canon.models.base import Batch, CanonModel, ModelConfig
from relion_canon.geometry import rotate, wrap_rad


@dataclasses.dataclass
class ToyConfig(ModelConfig):
    latent_dim: int = 4
    lr: float = 3e-3
    explode_at_step: int = -1  # > 0: make the loss NaN at that step (divergence tests)
    augment: bool = True  # random rotations; off, the loss is a deterministic function of the batch


class ToyModel(CanonModel):
    name = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        n = config.box * config.box
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, 32), nn.Tanh(), nn.Linear(32, config.latent_dim + 2))
        self.decoder = nn.Linear(config.latent_dim, n)
        self.critic = nn.Linear(n, 1)
        self.step = 0

    def phases(self, step: int) -> tuple[str, ...]:
        self.step = step
        return ("critic", "model") if step % 2 == 0 else ("model",)

    def make_optimizers(self):
        gen = list(self.encoder.parameters()) + list(self.decoder.parameters())
        return {"model": torch.optim.Adam(gen, lr=self.config.lr), "critic": torch.optim.Adam(self.critic.parameters(), lr=1e-3)}

    def lr_milestones(self, epochs: int) -> list[int]:
        return [max(1, epochs - 1)]

    def _encode(self, x):
        h = self.encoder(x)
        return h[:, :-2], torch.atan2(h[:, -1], h[:, -2])

    def forward(self, batch: Batch, phase: str):
        x = batch["image"]
        z, psi = self._encode(x)
        canon = self.decoder(z).view_as(x)
        if phase == "critic":
            fake = canon.detach().flatten(1)
            loss = self.critic(fake).mean() - self.critic(x.flatten(1)).mean()
            return {"loss": loss}
        if self.config.augment:
            alpha = (torch.rand(len(x), device=x.device) * 2 - 1) * torch.pi
        else:  # fixed per particle, so that any split of a batch across processes sees the same rotations
            alpha = torch.remainder(batch["index"].to(x.dtype) * 0.7, 2 * torch.pi) - torch.pi
        _, psi_rot = self._encode(rotate(x, alpha))
        equiv = (1 - torch.cos(wrap_rad(psi_rot - psi - alpha))).mean()
        rec = ((rotate(canon, psi) - x) ** 2).mean()
        loss = rec + equiv - 0.01 * self.critic(canon.flatten(1)).mean()
        if self.config.explode_at_step > 0 and self.step >= self.config.explode_at_step:
            loss = loss * float("nan")
        return {"loss": loss, "rec": rec, "equiv": equiv}

    @torch.no_grad()
    def predict(self, images, ctf=None, canonical=False):
        z, psi = self._encode(images)
        out = {"psi": psi, "latent": z}
        if canonical:
            out["canonical"] = self.decoder(z).view(len(images), images.shape[-2], images.shape[-1])
        return out
