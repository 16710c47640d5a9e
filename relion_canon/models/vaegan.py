"""Paper B's VAE-GAN with a cone regulariser (Miolane et al., Sec. 3.1).

A convolutional VAE (encoder → Gaussian posterior over an L-dimensional latent, L = 3 or 4; decoder →
image) refined by a GAN whose discriminator tells training images from the decoder's reconstructions, plus
a geometric regulariser that pulls the latent means onto the cone z1² + z2² = z3²:

    L = L_rec + λ_reg·KL(q(z|x) ‖ N(0, I)) + λ_GAN·L_GAN + λ_cone·mean_i (z1,i² + z2,i² − z3,i²)²

(per sample on the posterior means, averaged over the batch: *not* the square of a batch sum). The
in-plane angle is not predicted by the network: it is read off the latent means afterwards by
:func:`relion_canon.analysis.latent_angle.polar_readout` (PCA → polar angle), so :meth:`VAEGAN.predict`
returns the latent and no ``"psi"``.

Differences from the paper, on purpose:

* Reconstruction is by default a Gaussian log-likelihood, i.e. the mean squared error, not the paper's binary
  cross-entropy: our particles are RELION-normalised (background mean 0, standard deviation 1, unbounded),
  not intensities in [0, 1]. ``reconstruction="bce"`` gives the paper's choice on images mapped into [0, 1]
  (``unit_scaling``); the comparison is in ``benchmarks/papers/README.md``. Either is averaged over pixels
  (and the batch) as the authors' code averages its BCE (``F.binary_cross_entropy`` with its default mean,
  ninamiolane/vaetree), which is the scale against which λ_cone = 1 was fixed; the KL is summed over latent
  dimensions and averaged over the batch, the GAN and cone terms averaged over the batch.
* The discriminator sees the CTF-modulated reconstruction when ``apply_ctf`` is on, so that it compares
  like with like.

Training phases per batch: ``("discriminator", "model")`` (just ``("model",)`` when λ_GAN = 0). The
discriminator phase runs the encoder and decoder without gradients and with their batch-norm running
statistics frozen, so it changes nothing but the discriminator; the model phase leaves the discriminator's
running statistics alone in the same way (its parameters do receive gradients there, which the engine's
``zero_grad`` before each phase discards).

The polar read-out works best on a molecule whose strongest angular harmonic about the centre is k = 1; with
k = 2 strongest (the standard phantom) the latent loop often twists in 3-D, so the PCA plane does not see it
wind once around its centre. The measured accuracy of both cases is in ``benchmarks/README.md`` ("Figures
behind the defaults") and ``benchmarks/papers``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import torch
from torch import nn
import torch.nn.functional as F

from relion_canon.models.base import Batch, CanonModel, ModelConfig
from relion_canon.models.ctf_modulation import apply_ctf
from relion_canon.models.layers import ConvDecoder, ConvEncoder

GAN_LOSSES = ("nonsaturating", "standard")
RECONSTRUCTIONS = ("mse", "bce")
UNIT_SCALINGS = ("minmax", "global")


@dataclasses.dataclass
class VAEGANConfig(ModelConfig):
    latent_dim: int = 3  # paper B: 3 for simulated sets (circle + defocus), 4 for experimental ones
    width: int = 32  # channels of the first encoder stage (doubling per stage, capped at max_width)
    max_width: int = 256
    disc_width: int = 32  # same for the discriminator
    disc_norm: str = "batch"  # "batch", "group" or "none"
    lr: float = 1e-3  # paper B tunes it (hyperopt); 1e-3 trains our 32-px tests in a few epochs
    # Loss weights, relative to the per-pixel mean squared error (see reconstruction_loss). Paper B tunes λ_reg
    # and λ_GAN by hyper-parameter search and fixes λ_cone = 1; our λ_reg and λ_GAN defaults were picked on
    # simulated 32-px single-view sets (SNR 10), not searched.
    lambda_reg: float = 0.04  # KL weight (2/box² would be the exact ELBO for unit noise: a β-VAE, β ≈ 20 at 32 px)
    lambda_gan: float = 0.01  # generator's GAN-loss weight; 0 turns the GAN (and its phase) off
    lambda_cone: float = 1.0  # paper B: fixed at 1, not tuned
    gan_loss: str = "nonsaturating"  # generator loss: −log D(x̂) ("nonsaturating") or log(1 − D(x̂)) ("standard")
    disc_lr: float | None = None  # discriminator learning rate; None: the same as lr
    beta1: float = 0.9  # Adam, paper B
    beta2: float = 0.999
    batch_size: int = 16  # paper B's mini-batch (a recommendation to the engine; the model works with any)
    # "bce": paper B's binary cross-entropy. The images (encoder input, target and what the discriminator sees)
    # are mapped to [0, 1] by unit_scaling and the decoder outputs logits: "minmax" per image, or "global", one
    # affine map fixed from the first training batch's minimum and maximum (kept with the weights) so that
    # contrast differences between particles survive.
    reconstruction: str = "mse"
    unit_scaling: str = "minmax"
    logvar_min: float = -12.0  # clamp of the encoder's log-variance, for numerical safety only
    logvar_max: float = 8.0

    def __post_init__(self) -> None:
        if self.latent_dim < 3:
            raise ValueError(f"vaegan: latent_dim must be at least 3 (the cone needs z1, z2, z3), got {self.latent_dim}")
        if not 24 <= self.box <= 256:
            raise ValueError(f"vaegan: box must be 24-256 px, got {self.box}")
        if self.disc_norm not in ("batch", "group", "none"):
            raise ValueError(f"vaegan: disc_norm must be 'batch', 'group' or 'none', got {self.disc_norm!r}")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"vaegan: gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"vaegan: reconstruction must be one of {RECONSTRUCTIONS}, got {self.reconstruction!r}")
        if self.unit_scaling not in UNIT_SCALINGS:
            raise ValueError(f"vaegan: unit_scaling must be one of {UNIT_SCALINGS}, got {self.unit_scaling!r}")
        if self.reconstruction == "bce" and self.apply_ctf:
            raise ValueError("vaegan: reconstruction='bce' works on images in [0, 1]; a CTF in the decoder does not")
        for name in ("lambda_reg", "lambda_gan", "lambda_cone"):
            if getattr(self, name) < 0:
                raise ValueError(f"vaegan: {name} must be >= 0, got {getattr(self, name)}")


def cone_loss(mu: torch.Tensor) -> torch.Tensor:
    """Paper B's cone regulariser on (B, L) latent means: mean over samples of (z1² + z2² − z3²)²."""
    mu = mu.float()
    per_sample = mu[:, 0] ** 2 + mu[:, 1] ** 2 - mu[:, 2] ** 2
    return (per_sample**2).mean()


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over latent dimensions, mean over the batch."""
    mu, logvar = mu.float(), logvar.float()
    return (0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)).sum(dim=1).mean()


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean over pixels and batch of the squared error (a Gaussian log-likelihood, up to scale and constant) or,
    with ``kind="bce"``, of the binary cross-entropy between logits ``prediction`` and a target in [0, 1]."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(prediction.float(), target.float())
    diff = prediction.float() - target.float()
    return diff.pow(2).mean()


def minmax_unit(images: torch.Tensor) -> torch.Tensor:
    """Each image mapped affinely onto [0, 1] by its own minimum and maximum (a flat image gives 0)."""
    flat = images.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (images.dim() - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (images.dim() - 1))
    return (images - lo) / (hi - lo).clamp_min(1e-12)


@contextlib.contextmanager
def frozen_running_stats(*modules: nn.Module) -> Iterator[None]:
    """Batch norms keep normalising with batch statistics (train mode) but do not update running ones."""
    saved = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
                tracked = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
                saved.append((m, m.momentum, tracked))
                m.momentum = 0.0  # running = (1 − 0)·running + 0·batch
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class VAEGAN(CanonModel):
    name = "vaegan"
    config_class = VAEGANConfig
    needs_labels = False

    def __init__(self, config: VAEGANConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(c.box, 2 * c.latent_dim, width=c.width, max_width=c.max_width)
        self.decoder = ConvDecoder(c.box, c.latent_dim, width=c.width, max_width=c.max_width)
        self.discriminator = ConvEncoder(c.box, 1, width=c.disc_width, max_width=c.max_width, norm=c.disc_norm)
        # (low, high) of the "global" unit scaling; NaN until the first batch fixes it, saved with the weights.
        self.register_buffer("unit_range", torch.full((2,), float("nan")))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Model files written before unit_range existed stay loadable; they were all "mse", which never reads it.
        state_dict.setdefault(prefix + "unit_range", torch.full((2,), float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the engine's contract -------------------------------------------------------------------------

    def phases(self, step: int) -> tuple[str, ...]:
        return ("discriminator", "model") if self.config.lambda_gan > 0 else ("model",)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        betas = (c.beta1, c.beta2)
        model_params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        optimizers = {"model": torch.optim.Adam(model_params, lr=c.lr, betas=betas, weight_decay=c.weight_decay)}
        if c.lambda_gan > 0:
            disc_lr = c.lr if c.disc_lr is None else c.disc_lr
            optimizers["discriminator"] = torch.optim.Adam(
                self.discriminator.parameters(), lr=disc_lr, betas=betas, weight_decay=c.weight_decay
            )
        return optimizers

    def forward(self, batch: Batch, phase: str) -> dict[str, torch.Tensor]:
        x = self.to_model_space(batch["image"])
        ctf = self._ctf(batch)
        if phase == "discriminator":
            return self._discriminator_step(x, ctf)
        if phase == "model":
            return self._model_step(x, ctf)
        raise ValueError(f"vaegan: unknown phase {phase!r}")

    @torch.no_grad()
    def predict(self, images: torch.Tensor, ctf: torch.Tensor | None = None, canonical: bool = False) -> dict[str, torch.Tensor]:
        """``"latent"``: the posterior means μ (B, L); with ``canonical`` also the decoded μ (B, H, W), no CTF.

        No ``"psi"``: the angle comes from :func:`~relion_canon.analysis.latent_angle.polar_readout` of the
        latents of the whole set. Runs in eval mode (batch-norm running statistics) and restores the mode.
        """
        was_training = self.training
        self.eval()
        try:
            mu, _ = self.encode(self.to_model_space(images))
            out = {"latent": mu.float()}
            if canonical:
                out["canonical"] = self._decode(mu)[:, 0].float()
            return out
        finally:
            self.train(was_training)

    # --- pieces ------------------------------------------------------------------------------------------

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """The images the networks see: unchanged for "mse", mapped into [0, 1] for "bce"."""
        if self.config.reconstruction != "bce":
            return images
        if self.config.unit_scaling == "minmax":
            return minmax_unit(images)
        if torch.isnan(self.unit_range).any():
            self.unit_range.copy_(torch.stack([images.min(), images.max()]).detach().float())
        lo, hi = self.unit_range[0], self.unit_range[1]
        return ((images - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output as an image: logits through a sigmoid for "bce" (the discriminator sees [0, 1])."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.config.reconstruction == "bce" else out

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) → posterior mean and log-variance, each (B, L)."""
        h = self.encoder(images)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def _ctf(self, batch: Batch) -> torch.Tensor | None:
        if not self.config.apply_ctf:
            return None
        if "ctf" not in batch:
            raise KeyError("vaegan: apply_ctf is on but the batch has no 'ctf'")
        return batch["ctf"]

    def _reconstruct(self, x: torch.Tensor, ctf: torch.Tensor | None):
        """(decoder output, mu, logvar): the output is logits for "bce" (the loss takes them; images elsewhere)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        x_hat = self.decoder(z)
        if ctf is not None:
            x_hat = apply_ctf(x_hat, ctf)
        return x_hat, mu, logvar

    def _as_image(self, x_hat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x_hat) if self.config.reconstruction == "bce" else x_hat

    def _generator_gan_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        fake_logits = fake_logits.float()
        if self.config.gan_loss == "nonsaturating":
            return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))  # −log D(x̂)
        return -F.softplus(fake_logits).mean()  # log(1 − D(x̂)) = −softplus(logit)

    def _discriminator_step(self, x: torch.Tensor, ctf: torch.Tensor | None) -> dict[str, torch.Tensor]:
        with torch.no_grad(), frozen_running_stats(self.encoder, self.decoder):
            fake, _, _ = self._reconstruct(x, ctf)
            fake = self._as_image(fake)
        real_logits = self.discriminator(x).float()
        fake_logits = self.discriminator(fake.detach()).float()
        loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
            F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return {
            "loss": loss,
            "d_real": torch.sigmoid(real_logits).mean().detach(),
            "d_fake": torch.sigmoid(fake_logits).mean().detach(),
        }

    def _model_step(self, x: torch.Tensor, ctf: torch.Tensor | None) -> dict[str, torch.Tensor]:
        c = self.config
        x_hat, mu, logvar = self._reconstruct(x, ctf)
        rec = reconstruction_loss(x_hat, x, c.reconstruction)
        kl = kl_standard_normal(mu, logvar)
        cone = cone_loss(mu)
        loss = rec + c.lambda_reg * kl + c.lambda_cone * cone
        out = {"rec": rec.detach(), "kl": kl.detach(), "cone": cone.detach()}
        if c.lambda_gan > 0:
            with frozen_running_stats(self.discriminator):
                gan = self._generator_gan_loss(self.discriminator(self._as_image(x_hat)))
            loss = loss + c.lambda_gan * gan
            out["gan"] = gan.detach()
        out["loss"] = loss
        return out
