"""spatial-VAE (Bepler et al. 2019, tbepler/spatial-VAE), the baseline both papers compare with.

An inference network maps an image to a Gaussian posterior over (θ, Δx, z): an in-plane rotation, a
translation and an unstructured content code. The generator is a coordinate MLP: the image is
f(R(θ)·x + Δx, z) evaluated at every pixel's coordinate x. As in the original's ``train_particles.py``:

* coordinates are pixel offsets from RELION's origin (box//2, box//2) divided by box//2, so they span
  [−1, 1) (the original uses ``linspace(−1, 1, n)``, centred between pixels for even boxes);
* Gaussian likelihood with σ = 1: ½·squared error summed over pixels, mean over the batch;
* KL to N(0, I) for z and for Δx (Δx = dx_scale · a unit-normal latent, in the coordinates' units);
* θ has the "uniform" particle prior: the KL to N(0, theta_prior²) *without its mean term*, so any angle
  costs the same and only the posterior width is regularised;
* MLP inference network and generator, 2 hidden layers of 500, tanh (all configurable; a conv inference
  network is also offered).

Direction of θ: pixel coordinates here are (x right, y down), as in :mod:`relion_canon.geometry`,
and the generator samples its canonical image at R(θ)x with R(θ) = [[cos, −sin], [sin, cos]], which is
exactly what ``geometry.rotate(canonical, θ)`` does. So the image decoded with angle θ is the canonical
image turned counter-clockwise by θ, RELION's psi convention, and ``predict``'s ``"psi"`` is directly a
psi (in the model's own frame: one global offset from the truth remains, and no sign flip).

Options of the original kept: ``augment_rotation`` (infer θ from a randomly turned copy, decode the original
with θ minus the turn) and ``z_delay_steps`` (the original's ``--z-delay``, counted in optimiser steps: the
step comes from :meth:`SpatialVAE.phases`, which the engine calls with the global step). Additions:
``encoder_mask`` (on by default: the inference network sees only the inscribed disc, so that turned copies,
whose corners are zero, look like the originals) and a conv inference network.

On a molecule whose strongest angular harmonic about the centre is k = 1, θ follows psi in RELION's
direction, but parts of the circle can stay on the wrong half-turn depending on the seed. On the standard
phantom (k = 2 strongest) the generator first learns a 2-fold-symmetric blob and θ settles on psi mod 180° —
a local minimum, not a convention error. Measured: ``benchmarks/README.md`` ("Figures behind the defaults").
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from relion_canon.models.base import Batch, CanonModel, ModelConfig
from relion_canon.geometry import rotate, wrap_rad
from relion_canon.models.ctf_modulation import apply_ctf
from relion_canon.models.layers import ConvEncoder

ACTIVATIONS = {"tanh": nn.Tanh, "leakyrelu": nn.LeakyReLU, "relu": nn.ReLU}
ENCODERS = ("mlp", "conv")


@dataclasses.dataclass
class SpatialVAEConfig(ModelConfig):
    latent_dim: int = 2  # unstructured content dimensions z (the original's -z, default 2)
    encoder: str = "mlp"  # "mlp" (the original) or "conv" (ConvEncoder)
    encoder_hidden: int = 500  # MLP inference network: hidden width and number of hidden layers
    encoder_layers: int = 2
    encoder_width: int = 32  # conv inference network: first-stage channels
    generator_hidden: int = 500  # coordinate MLP: hidden width and number of hidden layers
    generator_layers: int = 2
    activation: str = "tanh"  # "tanh" (the original's default), "leakyrelu" or "relu"
    rotate: bool = True  # infer θ
    translate: bool = True  # infer Δx
    theta_prior: float = math.pi  # σ of the θ prior (only its width term is used: uniform rotations)
    dx_scale: float = 0.1  # σ of the Δx prior in coordinate units (1 = box//2 pixels)
    augment_rotation: bool = False  # the original's --augment-rotation: infer θ from a randomly turned copy
    encoder_mask: bool = True  # the inference network sees only the inscribed disc (radius box//2), so turned
    #                            copies (zero corners) and originals look alike
    z_delay_steps: int = 0  # the original's --z-delay (in optimiser steps here): decode with z = 0 at first
    batch_size: int = 100  # the original's mini-batch (a recommendation to the engine)
    logstd_min: float = -10.0  # clamp of the posterior log σ, for numerical safety only
    logstd_max: float = 5.0

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"spatial-vae: latent_dim must be at least 1, got {self.latent_dim}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"spatial-vae: encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"spatial-vae: activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if self.encoder_layers < 1 or self.generator_layers < 1:
            raise ValueError("spatial-vae: encoder_layers and generator_layers must be at least 1")
        if not self.theta_prior > 0 or not self.dx_scale > 0:
            raise ValueError("spatial-vae: theta_prior and dx_scale must be positive")
        if self.encoder == "conv" and not 24 <= self.box <= 256:
            raise ValueError(f"spatial-vae: the conv encoder needs a box of 24-256 px, got {self.box}")


def pixel_coordinates(box: int) -> torch.Tensor:
    """(box², 2) coordinates (x right, y down) of every pixel, row-major, relative to pixel box//2 and
    divided by box//2."""
    c = box // 2
    r = (torch.arange(box, dtype=torch.float32) - c) / c
    y, x = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


class MLPEncoder(nn.Module):
    def __init__(self, n_in: int, n_out: int, hidden: int, layers: int, activation: type[nn.Module]):
        super().__init__()
        mods: list[nn.Module] = [nn.Linear(n_in, hidden), activation()]
        for _ in range(1, layers):
            mods += [nn.Linear(hidden, hidden), activation()]
        mods.append(nn.Linear(hidden, n_out))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


class SpatialGenerator(nn.Module):
    """f(coordinates, z): (B, N, 2) coordinates and (B, L) codes → (B, N) pixel values."""

    def __init__(self, latent_dim: int, hidden: int, layers: int, activation: type[nn.Module]):
        super().__init__()
        self.coord_linear = nn.Linear(2, hidden)
        self.latent_linear = nn.Linear(latent_dim, hidden, bias=False)
        mods: list[nn.Module] = [activation()]
        for _ in range(1, layers):
            mods += [nn.Linear(hidden, hidden), activation()]
        mods.append(nn.Linear(hidden, 1))
        self.layers = nn.Sequential(*mods)

    def forward(self, coords: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # The first layer runs in float32 even under autocast: bfloat16 would round the coordinates to about
        # 1/256 of the box (cheap to avoid: 2 inputs per pixel). The hidden layers, where the cost is, follow
        # whatever autocast says.
        with torch.autocast(coords.device.type, enabled=False):
            h = self.coord_linear(coords.float()) + self.latent_linear(z.float()).unsqueeze(1)
        return self.layers(h).squeeze(-1)


class SpatialVAE(CanonModel):
    name = "spatial-vae"
    config_class = SpatialVAEConfig
    needs_labels = False

    def __init__(self, config: SpatialVAEConfig):
        super().__init__(config)
        c = config
        act = ACTIVATIONS[c.activation]
        self.n_structured = int(c.rotate) + 2 * int(c.translate)
        n_out = 2 * (self.n_structured + c.latent_dim)  # posterior mean and log σ of (θ, Δx, z)
        if c.encoder == "mlp":
            self.encoder: nn.Module = MLPEncoder(c.box * c.box, n_out, c.encoder_hidden, c.encoder_layers, act)
        else:
            self.encoder = ConvEncoder(c.box, n_out, width=c.encoder_width)
        self.generator = SpatialGenerator(c.latent_dim, c.generator_hidden, c.generator_layers, act)
        self.register_buffer("coords", pixel_coordinates(c.box), persistent=False)
        disc = (self.coords.pow(2).sum(dim=1) <= 1.0).to(torch.float32).view(1, 1, c.box, c.box)
        self.register_buffer("disc", disc, persistent=False)
        self._step = 0  # the engine's global step, seen through phases(); drives z_delay_steps

    # --- the engine's contract -------------------------------------------------------------------------

    def phases(self, step: int) -> tuple[str, ...]:
        self._step = int(step)
        return ("model",)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {"model": torch.optim.Adam(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)}

    def forward(self, batch: Batch, phase: str) -> dict[str, torch.Tensor]:
        if phase != "model":
            raise ValueError(f"spatial-vae: unknown phase {phase!r}")
        c = self.config
        x = batch["image"]
        offset = None
        if c.rotate and c.augment_rotation:
            # Infer from a copy turned counter-clockwise by a random angle, whose psi is therefore psi + offset;
            # decode the original with θ − offset. This pushes the inference network to be equivariant.
            offset = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * math.pi
            mu, logstd = self.encode(rotate(x, offset.to(x.dtype)))
        else:
            mu, logstd = self.encode(x)
        std = logstd.exp()
        sample = mu + std * torch.randn_like(mu)
        theta, dx, z = self.split(sample)
        if offset is not None:
            theta = theta - offset
        if self.training and self._step < c.z_delay_steps:
            z = z * 0.0
        y_hat = self.decode(z, theta, dx)
        if c.apply_ctf:
            if "ctf" not in batch:
                raise KeyError("spatial-vae: apply_ctf is on but the batch has no 'ctf'")
            y_hat = apply_ctf(y_hat, batch["ctf"])
        diff = y_hat.float() - x.reshape(y_hat.shape).float()
        rec = 0.5 * diff.pow(2).flatten(1).sum(dim=1).mean()

        mu, logstd, std = mu.float(), logstd.float(), std.float()
        k = int(c.rotate)
        # Unit-normal prior on Δx and z: KL = −log σ + (σ² + μ²)/2 − ½ per dimension.
        kl_normal = (-logstd[:, k:] + 0.5 * (std[:, k:] ** 2 + mu[:, k:] ** 2) - 0.5).sum(dim=1)
        kl = kl_normal
        out: dict[str, torch.Tensor] = {}
        if c.rotate:
            # spatial-VAE's particle prior on θ: the KL to N(0, s²) without the mean term (uniform rotations).
            s = c.theta_prior
            kl_theta = -logstd[:, 0] + math.log(s) + std[:, 0] ** 2 / (2 * s**2) - 0.5
            kl = kl + kl_theta
            out["kl_theta"] = kl_theta.mean().detach()
        kl = kl.mean()
        out.update({"loss": rec + kl, "rec": rec.detach(), "kl": kl.detach()})
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, ctf: torch.Tensor | None = None, canonical: bool = False) -> dict[str, torch.Tensor]:
        """``"latent"`` z means (B, L); ``"psi"`` θ means wrapped to (−π, π] (with ``rotate``); ``"shift"``
        (B, 2) px (x, y) (with ``translate``) such that image ≈ ``geometry.rotate(canonical, psi, shift)``
        (RELION's origin is −shift · pixel size); with ``canonical`` the generator's image at θ = 0, Δx = 0
        (B, H, W), no CTF."""
        was_training = self.training
        self.eval()
        try:
            mu, _ = self.encode(images)
            theta, dx, z = self.split(mu)
            out = {"latent": z.float()}
            if self.config.rotate:
                out["psi"] = wrap_rad(theta.float())
            if self.config.translate:
                out["shift"] = self.shift_pixels(theta, dx).float()
            if canonical:
                out["canonical"] = self.decode(z, None, None).float()
            return out
        finally:
            self.train(was_training)

    # --- pieces ------------------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) → posterior mean and log σ of (θ, Δx/dx_scale, z), each (B, n_structured + L)."""
        if self.config.encoder_mask:
            images = images * self.disc.to(images.dtype)
        # float32 even under autocast: bfloat16 would round θ to about 1° (cheap: the generator is the cost).
        with torch.autocast(images.device.type, enabled=False):
            h = self.encoder(images.float())
        mu, logstd = h.chunk(2, dim=1)
        return mu, logstd.clamp(self.config.logstd_min, self.config.logstd_max)

    def split(self, v: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(θ or None, Δx in coordinate units or None, z) from a (B, n_structured + L) latent vector."""
        c = self.config
        i = 0
        theta = dx = None
        if c.rotate:
            theta, i = v[:, 0], 1
        if c.translate:
            dx, i = v[:, i : i + 2] * c.dx_scale, i + 2
        return theta, dx, v[:, i:]

    def decode(self, z: torch.Tensor, theta: torch.Tensor | None, dx: torch.Tensor | None) -> torch.Tensor:
        """f(R(θ)x + Δx, z) on the pixel grid → (B, H, W)."""
        b = z.shape[0]
        coords = self.coords.to(z.dtype).unsqueeze(0)  # (1, N, 2)
        if theta is not None:
            cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
            x, y = coords[..., 0], coords[..., 1]
            coords = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)  # same map as geometry.rotate
        if dx is not None:
            coords = coords + dx[:, None, :]
        coords = coords.expand(b, -1, -1)
        box = self.config.box
        return self.generator(coords, z).view(b, box, box)

    def shift_pixels(self, theta: torch.Tensor | None, dx: torch.Tensor) -> torch.Tensor:
        """The ``geometry.rotate`` shift (px) equivalent to Δx: f(Rx + Δx) = canonical(R(p − s)), s = −c·R⁻¹Δx."""
        c = self.config.box // 2
        if theta is None:
            return -c * dx
        cos, sin = torch.cos(theta), torch.sin(theta)
        return -c * torch.stack([cos * dx[:, 0] + sin * dx[:, 1], -sin * dx[:, 0] + cos * dx[:, 1]], dim=1)
