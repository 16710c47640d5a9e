"""Paper A's rotation-invariant auto-encoder, with a working Wasserstein critic and an unsupervised mode.

Networks: a conv encoder → content latent ``z`` and an in-plane angle (predicted as a (cos, sin) pair, so it
is periodic); a conv decoder ``z`` → the *canonical* (unrotated) image; a Wasserstein critic (no batch norm)
on decoder outputs versus real images, Lipschitz-constrained by a gradient penalty (WGAN-GP, default) or by
real weight clipping. Losses (paper A, eqs. 1-5): angle exp(|Δθ|) − 1 with Δθ wrapped to (−π, π];
reconstruction L2 + L1 inside a circular mask; adversarial (Wasserstein).

Angle convention (RELION's, product.md): a particle with angle ψ is the canonical image rotated
counter-clockwise by ψ, so the model's image of a particle is ``rotate(decoder(z), ψ̂)`` (then × CTF when
``apply_ctf``), and ``predict`` returns ψ̂ in that convention.

Two ways to learn the angle (``angle_mode``):

* ``"labels"`` (what paper A's public code does): the batch carries ``"psi"`` (radians); the angle head
  regresses it and the decoder reproduces the input rotated back by the *label*. Inputs are augmented by a
  random extra rotation α (label ψ + α), as the paper describes.
* ``"self"`` (no labels): for every image a random α is drawn and both ``x`` and ``rotate(x, α)`` are
  encoded. The angle head must be *equivariant*: θ̂(rotate(x, α)) − θ̂(x) = α (wrapped angle loss), so
  ψ_a = θ̂(x) and ψ_b = θ̂(rotate(x, α)) − α are two estimates of the particle's angle; the content latent
  must be invariant (z_a ≈ z_b); and the decoder's canonical image rendered at either estimate, from either
  latent (cross-reconstruction), must reproduce ``x``. Equivariance excludes an angle head that ignores the
  content (it would move by 0, not α) and fixes the direction (an angle that turned the other way would move
  by −α); reconstruction through the rotation excludes a rotationally symmetric decoder output (the
  particle is not symmetric, so a blob reconstructs badly) and makes the decoder output the one image that,
  turned by ψ̂, is the particle: the canonical frame, unique up to one global rotation. (Reconstruction
  through the rotation alone, ``lambda_angle=0``, gets stuck in local minima: ~60° psi error where the full
  loss gives ~3°.) With several views or conformations each may get its own frame offset.

The critic compares images in one frame: without CTF, decoder outputs against the inputs turned back to the
canonical frame (by the label, or by the detached ψ̂ in "self" mode); with ``apply_ctf``, the model's image of
the particle (turned, × CTF) against the input. The real images are noisy and the decoder's are not, so at low
SNR the critic mostly rewards noise-like texture: keep ``lambda_adv`` small (default 1e-3) or 0.

Inputs may carry ``"origin"`` (B, 2) px (RELION's origin over the pixel size): the image is shifted by
+origin before anything else, as product.md's canonicalisation says.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from relion_canon.models.base import Batch, CanonModel, ModelConfig
from relion_canon.geometry import circular_mask, rotate, wrap_rad
from relion_canon.models.ctf_modulation import apply_ctf
from relion_canon.models.layers import ConvDecoder, ConvEncoder

ANGLE_MODES = ("labels", "self")
CRITIC_CONSTRAINTS = ("gp", "clip")


@dataclasses.dataclass
class RotInvAEConfig(ModelConfig):
    """Hyper-parameters of :class:`RotInvAE` (paper A's values where the paper gives them)."""

    weight_decay: float = 1e-5  # paper A
    latent_dim: int = 16  # content latent, without the angle
    angle_mode: str = "self"  # "labels": regress the batch's "psi"; "self": learn a canonical frame
    width: int = 32  # channels of the first conv stage (doubling per stage up to max_width)
    max_width: int = 256
    norm: str = "batch"  # encoder/decoder normalisation: "batch" | "group" | "none" (the critic never has any)
    augment: bool = True  # "labels": also rotate inputs by a random α (label ψ + α)
    mask_radius: float | None = None  # px; losses and encoder input inside this circle; None: box/2 − 1
    lambda_angle: float = 1.0  # angle loss (labels) / equivariance loss (self)
    lambda_rec: float = 1.0  # reconstruction L2 + L1
    lambda_inv: float = 0.1  # "self": content latent invariance ‖z(x) − z(rot(x, α))‖²
    cross: bool = True  # "self": also reconstruct x from each latent at the other view's angle estimate
    lambda_adv: float = 1e-3  # Wasserstein adversarial weight; 0 switches the critic off
    lambda_gp: float = 10.0  # gradient penalty weight (critic_constraint "gp")
    critic_constraint: str = "gp"  # "gp" (WGAN-GP) | "clip" (weight clipping to ±clip_value)
    clip_value: float = 0.01
    critic_every: int = 4  # one critic step per this many decoder steps (paper A: 4)
    critic_width: int = 32
    lr_drop_fraction: float = 2 / 3  # lr × 0.1 at this fraction of the epochs (paper A: 200 of 300)
    lambda_norm: float = 0.01  # keeps the raw (cos, sin) output near the unit circle
    predict_rotations: int = 4  # predict: average over this many turned copies (test-time augmentation)

    def validate(self) -> None:
        if self.angle_mode not in ANGLE_MODES:
            raise ValueError(f"angle_mode must be one of {ANGLE_MODES}, got {self.angle_mode!r}")
        if self.critic_constraint not in CRITIC_CONSTRAINTS:
            raise ValueError(f"critic_constraint must be one of {CRITIC_CONSTRAINTS}, got {self.critic_constraint!r}")
        if not 24 <= self.box <= 256:
            raise ValueError(f"box must be 24-256 px, got {self.box}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.predict_rotations < 1:
            raise ValueError(f"predict_rotations must be >= 1, got {self.predict_rotations}")
        if self.critic_every < 1:
            raise ValueError(f"critic_every must be >= 1, got {self.critic_every}")
        if self.lambda_adv < 0 or self.lambda_gp < 0:
            raise ValueError("loss weights must be >= 0")


def angle_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Paper A's eq. 1, per element: exp(|Δθ|) − 1 with Δθ = pred − target wrapped to (−π, π], in float32."""
    delta = wrap_rad(pred.float() - target.float())
    return torch.expm1(delta.abs())


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean (‖∇D(x̃)‖₂ − 1)² at random points between real and fake, in float32.

    Uses ``torch.autograd.grad(create_graph=True)``, i.e. double backward through the critic.
    """
    device_type = real.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        real, fake = real.detach().float(), fake.detach().float()
        eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        score = critic(mixed)
        (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
        norm = grad.flatten(1).norm(dim=1)
        return ((norm - 1.0) ** 2).mean()


class RotInvAE(CanonModel):
    """Paper A's rotation-invariant auto-encoder (see the module docstring). Phases: "model" and "critic"."""

    name = "rotinv-ae"
    config_class = RotInvAEConfig

    def __init__(self, config: RotInvAEConfig):
        if not isinstance(config, RotInvAEConfig):
            config = RotInvAEConfig.from_dict(config.to_dict())
        config.validate()
        super().__init__(config)
        c = config
        self.needs_labels = c.angle_mode == "labels"
        self.encoder = ConvEncoder(c.box, c.latent_dim + 2, width=c.width, max_width=c.max_width, norm=c.norm)
        self.decoder = ConvDecoder(c.box, c.latent_dim, width=c.width, max_width=c.max_width, norm=c.norm)
        self.critic = (
            ConvEncoder(c.box, 1, width=c.critic_width, max_width=c.max_width, norm="none")
            if c.lambda_adv > 0
            else None
        )
        radius = c.box / 2 - 1 if c.mask_radius is None else float(c.mask_radius)
        self.register_buffer("mask", circular_mask(c.box, radius), persistent=False)

    # ---------------------------------------------------------------- engine contract
    def phases(self, step: int) -> tuple[str, ...]:
        if self.critic is not None and step % self.config.critic_every == 0:
            return ("critic", "model")
        return ("model",)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        model_params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        opts = {"model": torch.optim.Adam(model_params, lr=c.lr, weight_decay=c.weight_decay)}
        if self.critic is not None:
            # WGAN-GP's usual Adam betas; paper A's lr and weight decay.
            opts["critic"] = torch.optim.Adam(self.critic.parameters(), lr=c.lr, betas=(0.5, 0.9),
                                              weight_decay=c.weight_decay)
        return opts

    def after_step(self, phase: str) -> None:
        if phase == "critic" and self.critic is not None and self.config.critic_constraint == "clip":
            v = self.config.clip_value
            with torch.no_grad():
                for p in self.critic.parameters():
                    p.clamp_(-v, v)

    def lr_milestones(self, epochs: int) -> list[int]:
        m = round(self.config.lr_drop_fraction * epochs)
        return [m] if 0 < m < epochs else []

    # ---------------------------------------------------------------- pieces
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) → content latent (B, L), angle (B,) radians in float32, raw (cos, sin) (B, 2)."""
        out = self.encoder(images * self.mask)
        z, raw = out[:, : self.config.latent_dim], out[:, self.config.latent_dim :].float()
        theta = torch.atan2(raw[:, 1], raw[:, 0])
        return z, theta, raw

    def render(self, canonical: torch.Tensor, psi: torch.Tensor, ctf: torch.Tensor | None) -> torch.Tensor:
        """The model's image of a particle: the canonical image turned by ψ (then × CTF when configured)."""
        img = rotate(canonical.float(), psi.float())  # float32 sampling grid, also under autocast
        if self.config.apply_ctf:
            if ctf is None:
                raise ValueError("apply_ctf is set but the batch has no 'ctf'")
            img = apply_ctf(img, ctf)
        return img

    def rec_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared + mean absolute error inside the circular mask (paper A's eq. 2), float32."""
        d = pred.float() - target.float()
        w = self.mask
        per = (d.pow(2) + d.abs()) * w
        return per.sum(dim=(-2, -1)).mean() / w.sum()

    def _norm_loss(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw.norm(dim=1) - 1.0).pow(2).mean()

    @staticmethod
    def _centred(batch: Batch) -> torch.Tensor:
        """The input with its origin applied (shifted by +origin px), so that it is centred."""
        x = batch["image"]
        origin = batch.get("origin")
        if origin is None:
            return x
        zero = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        return rotate(x, zero, shift_px=origin)

    # ---------------------------------------------------------------- forward
    def forward(self, batch: Batch, phase: str) -> dict[str, torch.Tensor]:
        if phase == "model":
            return self._model_step(batch)
        if phase == "critic":
            if self.critic is None:
                raise ValueError("this model has no critic (lambda_adv = 0)")
            return self._critic_step(batch)
        raise ValueError(f"unknown phase {phase!r}")

    def _views(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Encodings, canonical images and the real/fake pair the critic compares, for one batch."""
        c = self.config
        x = batch["image"]
        b = x.shape[0]
        x0 = self._centred(batch)
        ctf = batch.get("ctf")
        if c.apply_ctf and ctf is None:
            raise ValueError("apply_ctf is set but the batch has no 'ctf'")
        out: dict[str, torch.Tensor] = {}
        if c.angle_mode == "labels":
            if "psi" not in batch:
                raise ValueError("angle_mode 'labels' needs 'psi' (radians) in the batch")
            psi = batch["psi"].float()
            if c.augment and self.training:
                alpha = (torch.rand(b, device=x.device) * 2 - 1) * math.pi
                x_in = rotate(x0, alpha)
            else:
                alpha = torch.zeros(b, device=x.device)
                x_in = x0
            z, theta, raw = self.encode(x_in)
            canon = self.decoder(z)
            out.update(z=z, raw=raw, angle=angle_loss(theta, psi + alpha).mean(), canon=canon)
            if c.apply_ctf:  # compare in the particle's frame, where the CTF applies; rendered at the label
                out["pred"], out["target"] = self.render(canon, psi, ctf), x0
            else:  # paper A: the decoder output against the input turned back by the label
                out["pred"], out["target"] = canon, self.canonicalised(x, psi, batch.get("origin"))
            return out

        # "self": x0 and a copy turned by a random α; both estimates of x0's angle must agree.
        alpha = (torch.rand(b, device=x.device) * 2 - 1) * math.pi
        x_b = rotate(x0, alpha)
        z2, theta2, raw = self.encode(torch.cat([x0, x_b]))
        z_a, z_b = z2[:b], z2[b:]
        psi_a, psi_b = theta2[:b], theta2[b:] - alpha
        canon2 = self.decoder(z2)
        canon_a, canon_b = canon2[:b], canon2[b:]
        out.update(z=z2, raw=raw, angle=angle_loss(psi_b, psi_a).mean(), canon=canon_a)
        out["inv"] = (z_a.float() - z_b.float()).pow(2).mean()
        if c.cross:
            # Each latent, rendered at each estimate: 4 renderings of the same particle.
            canon4 = torch.cat([canon_a, canon_b, canon_a, canon_b])
            psi4 = torch.cat([psi_a, psi_b, psi_b, psi_a])
        else:
            canon4, psi4 = canon2, torch.cat([psi_a, psi_b])
        k = canon4.shape[0] // b
        ctf4 = None if ctf is None else ctf.repeat(k, 1, 1)
        out["pred"] = self.render(canon4, psi4, ctf4)
        out["target"] = x0.repeat(k, 1, 1, 1)
        if not c.apply_ctf:  # the critic's "real" in the canonical frame: the input turned back by ψ̂
            out["real_canon"] = rotate(x0, -psi_a.detach())
        return out

    def canonicalised(self, x: torch.Tensor, psi: torch.Tensor, origin: torch.Tensor | None) -> torch.Tensor:
        """Shift by +origin, then turn by −ψ, in one interpolation: turning by −ψ moves a shift s to R(−ψ)s."""
        if origin is None:
            return rotate(x, -psi)
        cos, sin = torch.cos(psi), torch.sin(psi)
        o = origin.float()
        shift = torch.stack([cos * o[:, 0] - sin * o[:, 1], sin * o[:, 0] + cos * o[:, 1]], dim=1)
        return rotate(x, -psi, shift_px=shift)

    def _critic_pair(self, batch: Batch, v: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, fake) images for the critic, both in the same frame and masked."""
        b = batch["image"].shape[0]
        if self.config.apply_ctf:  # particle frame, with CTF: the model's image of the particle vs the particle
            real, fake = v["target"][:b], v["pred"][:b]
        elif self.config.angle_mode == "labels":  # canonical frame: decoder output vs input turned back
            real, fake = v["target"], v["canon"]
        else:
            real, fake = v["real_canon"], v["canon"]
        return real * self.mask, fake * self.mask

    def _model_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        v = self._views(batch)
        rec = self.rec_loss(v["pred"], v["target"])
        norm = self._norm_loss(v["raw"])
        loss = c.lambda_angle * v["angle"] + c.lambda_rec * rec + c.lambda_norm * norm
        logs = {"angle": v["angle"].detach(), "rec": rec.detach()}
        if "inv" in v:
            loss = loss + c.lambda_inv * v["inv"]
            logs["inv"] = v["inv"].detach()
        if self.critic is not None:
            _, fake = self._critic_pair(batch, v)
            adv = -self.critic(fake).float().mean()
            loss = loss + c.lambda_adv * adv
            logs["adv"] = adv.detach()
        return {"loss": loss, **logs}

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        assert self.critic is not None
        with torch.no_grad():
            v = self._views(batch)
            real, fake = self._critic_pair(batch, v)
        d_real = self.critic(real).float().mean()
        d_fake = self.critic(fake).float().mean()
        wdist = d_real - d_fake
        loss = -wdist
        logs = {"wdist": wdist.detach()}
        if self.config.critic_constraint == "gp" and self.config.lambda_gp > 0:
            gp = gradient_penalty(self.critic, real, fake)
            loss = loss + self.config.lambda_gp * gp
            logs["gp"] = gp.detach()
        return {"loss": loss, **logs}

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, images: torch.Tensor, ctf: torch.Tensor | None = None, canonical: bool = False) -> dict[str, torch.Tensor]:
        """ψ̂ (radians, RELION's convention, in the model's frame), the content latent and optionally the
        CTF-free canonical image. With ``predict_rotations`` K > 1 the images are also encoded turned by
        2πk/K; the K angle estimates (each turned back) are averaged on the circle and the latents averaged."""
        k_rot = self.config.predict_rotations
        b = images.shape[0]
        if k_rot == 1:
            z, theta, _ = self.encode(images)
        else:
            beta = (2 * math.pi / k_rot) * torch.arange(k_rot, device=images.device, dtype=torch.float32)
            beta = beta.repeat_interleave(b)
            turned = torch.cat([images] + [rotate(images, beta[i * b : (i + 1) * b]) for i in range(1, k_rot)])
            z_all, theta_all, _ = self.encode(turned)
            est = wrap_rad(theta_all - beta).view(k_rot, b)
            theta = torch.atan2(torch.sin(est).mean(0), torch.cos(est).mean(0))
            z = z_all.view(k_rot, b, -1).mean(0)
        out = {"psi": wrap_rad(theta.float()), "latent": z.float()}
        if canonical:
            out["canonical"] = self.decoder(z).float()[:, 0]
        return out
