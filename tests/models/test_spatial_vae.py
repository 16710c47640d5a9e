"""spatial-VAE baseline: shapes, RELION's psi direction, KL terms, training, and θ on simulated particles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from relion_canon.analysis.metrics import align_angles
from relion_canon.models import model_class
from relion_canon.geometry import rotate, wrap_deg
from relion_canon.models.spatial_vae import SpatialVAE, SpatialVAEConfig, pixel_coordinates
from tests.models.helpers import simulated, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SMALL = dict(encoder_hidden=64, generator_hidden=32)


def test_registry_and_config_round_trip():
    assert model_class("spatial-vae") is SpatialVAE
    cfg = SpatialVAEConfig(box=40, latent_dim=3, encoder="conv", translate=False)
    assert SpatialVAEConfig.from_dict(cfg.to_dict()) == cfg
    d = SpatialVAEConfig()
    assert (d.latent_dim, d.encoder, d.generator_hidden, d.generator_layers, d.activation) == (2, "mlp", 500, 2, "tanh")
    assert d.theta_prior == pytest.approx(math.pi) and d.dx_scale == 0.1
    with pytest.raises(ValueError):
        SpatialVAEConfig(encoder="transformer")
    with pytest.raises(ValueError):
        SpatialVAEConfig(latent_dim=0)


def test_pixel_coordinates_centred_on_relion_origin():
    for box in (32, 33):
        c = pixel_coordinates(box).view(box, box, 2)
        assert torch.equal(c[box // 2, box // 2], torch.zeros(2))  # pixel (box//2, box//2) is the origin
        assert c[0, 0].tolist() == pytest.approx([-1.0, -1.0])  # x right, y down, scaled by box//2
        assert c[box // 2, box - 1, 0] > 0 and c[box - 1, box // 2, 1] > 0


@pytest.mark.parametrize(
    "box,encoder,apply_ctf,translate", [(32, "mlp", False, True), (40, "conv", True, True), (64, "mlp", True, False)]
)
def test_shapes(box, encoder, apply_ctf, translate):
    torch.manual_seed(0)
    model = SpatialVAE(SpatialVAEConfig(box=box, encoder=encoder, apply_ctf=apply_ctf, translate=translate,
                                        latent_dim=3, **SMALL))
    b = 4
    batch = {"image": torch.randn(b, 1, box, box), "index": torch.arange(b)}
    if apply_ctf:
        batch["ctf"] = torch.rand(b, box, box) * 2 - 1
    assert model.phases(0) == ("model",) and set(model.make_optimizers()) == {"model"}
    out = model(batch, "model")
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert torch.isclose(out["loss"].detach(), out["rec"] + out["kl"])
    pred = model.predict(batch["image"], canonical=True)
    assert pred["psi"].shape == (b,) and pred["latent"].shape == (b, 3)
    assert pred["canonical"].shape == (b, box, box)
    assert torch.all(pred["psi"].abs() <= math.pi)
    assert ("shift" in pred) == translate and (not translate or pred["shift"].shape == (b, 2))
    assert model.training
    if apply_ctf:
        with pytest.raises(KeyError):
            model({"image": batch["image"], "index": batch["index"]}, "model")


class _Blob(nn.Module):
    """A fixed, asymmetric generator: two Gaussian blobs of different size off the origin (ignores z)."""

    def forward(self, coords, z):
        x, y = coords[..., 0], coords[..., 1]
        big = torch.exp(-((x - 0.35) ** 2 + (y + 0.1) ** 2) / 0.04)
        return big + 0.5 * torch.exp(-((x + 0.1) ** 2 + (y - 0.3) ** 2) / 0.08)


def test_theta_turns_counter_clockwise_like_relion_psi():
    """The image decoded with θ is the canonical image turned counter-clockwise by θ (geometry.rotate), so θ is a
    psi; and predict's shift is the geometry.rotate shift that goes with Δx."""
    model = SpatialVAE(SpatialVAEConfig(box=32, latent_dim=1, **SMALL))
    model.generator = _Blob()
    z = torch.zeros(3, 1)
    theta = torch.tensor([0.7, -2.0, 3.0])
    canonical = model.decode(z, None, None)
    turned = model.decode(z, theta, None)
    assert (turned - rotate(canonical, theta)).abs().max() < 0.05  # bilinear interpolation of a sharp blob
    assert (turned - rotate(canonical, -theta)).abs().max() > 0.5
    # A counter-clockwise quarter turn (as displayed, row 0 on top) takes the blob right of centre to above it.
    quarter = model.decode(torch.zeros(1, 1), torch.tensor([math.pi / 2]), None)[0]
    row, col = divmod(int(quarter.argmax()), 32)
    assert (row, col) == pytest.approx((16 - round(0.35 * 16), 16 - round(0.1 * 16)), abs=1)
    dx = torch.tensor([[0.1, -0.05], [0.0, 0.2], [-0.15, 0.1]])
    moved = model.decode(z, theta, dx)
    shift = model.shift_pixels(theta, dx)
    assert (moved - rotate(canonical, theta, shift)).abs().max() < 0.05


def test_kl_terms():
    """θ's KL has no mean term (uniform rotations); Δx and z have unit-normal KLs."""
    torch.manual_seed(0)
    model = SpatialVAE(SpatialVAEConfig(box=32, latent_dim=2, **SMALL))
    model.generator = _Blob()
    x = torch.randn(6, 1, 32, 32)
    out = model({"image": x, "index": torch.arange(6)}, "model")
    mu, logstd = model.encode(x)
    mu, logstd = mu.detach().double(), logstd.detach().double()
    s = math.pi
    kl_theta = -logstd[:, 0] + math.log(s) + torch.exp(2 * logstd[:, 0]) / (2 * s**2) - 0.5
    kl_rest = (-logstd[:, 1:] + 0.5 * (torch.exp(2 * logstd[:, 1:]) + mu[:, 1:] ** 2) - 0.5).sum(1)
    assert out["kl"].item() == pytest.approx((kl_theta + kl_rest).mean().item(), rel=1e-4)
    assert out["kl_theta"].item() == pytest.approx(kl_theta.mean().item(), rel=1e-4)
    # Moving θ's mean by any amount costs nothing.
    with torch.no_grad():
        model.encoder.layers[-1].bias[0] += 2.5
    again = model({"image": x, "index": torch.arange(6)}, "model")
    assert again["kl_theta"].item() == pytest.approx(out["kl_theta"].item(), rel=1e-5)


def test_losses_fall_with_ctf(tmp_path):
    """Particles with CTF and a generator whose image the CTF multiplies (apply_ctf): the losses fall."""
    images, _, ctf = simulated(tmp_path, 160, snr=10.0, ctf=True, seed=3)
    torch.manual_seed(0)
    model = SpatialVAE(SpatialVAEConfig(box=32, apply_ctf=True, lr=3e-3, encoder_hidden=128, generator_hidden=64))
    history = train(model, images, epochs=10, batch_size=10, ctf=ctf)
    assert history[-1]["model/rec"] < 0.7 * history[0]["model/rec"]
    assert history[-1]["model/loss"] < history[0]["model/loss"]


# The in-plane angle is only well defined when the particle is far from 2-fold symmetric. The standard phantom's
# strongest angular harmonic (about the box centre) is k = 2, and spatial-VAE settles there on θ = psi mod 180°
# (θ accurate to 2-4° modulo 180°, about 90° rMSE on the full circle); phantom 7's strongest is k = 1
# (|k=1| 354 vs |k=2| 158), so it is the molecule used here.
PSI_PHANTOM = 7


def spatial_vae_psi_error(tmp_path, seed: int = 0, n: int = 500, epochs: int = 20, phantom_seed: int = PSI_PHANTOM,
                          batch_size: int = 10, **config):
    images, psi_true, _ = simulated(tmp_path, n, snr=10.0, seed=0, phantom_seed=phantom_seed)
    torch.manual_seed(seed)
    config = {"lr": 1e-3, "encoder_hidden": 256, "generator_hidden": 64, **config}
    model = SpatialVAE(SpatialVAEConfig(box=32, **config))
    history = train(model, images, epochs=epochs, batch_size=batch_size, seed=seed)
    psi = np.rad2deg(model.predict(images)["psi"].numpy())
    return psi, psi_true, history


def test_theta_is_psi(tmp_path):
    """500 single-view particles, 32 px, SNR 10, uniform psi, no CTF, 20 epochs: θ's posterior mean follows psi
    and turns the same way (one global offset, no sign flip allowed). Chance is an rMSE of about 104° (52° for
    angles modulo 180°).

    spatial-VAE is seed-sensitive at this budget: over torch seeds 0-6 the full-circle rMSE was 23, 52, 57, 80,
    13, 38 and 5.5° (parts of the circle left on the wrong half-turn), the rMSE modulo 180° 5.5-15°, the
    direction always RELION's. The bounds hold for all seven; seed 0 is the one run here.
    """
    psi, psi_true, history = spatial_vae_psi_error(tmp_path)
    assert history[-1]["model/rec"] < 0.3 * history[0]["model/rec"]
    fit = align_angles(psi, psi_true, allow_sign=False)
    assert fit.rmse < 90.0, (fit.rmse, fit.median)
    half_turn = align_angles(wrap_deg(2 * psi), wrap_deg(2 * psi_true), allow_sign=False)
    assert half_turn.rmse / 2 < 25.0, half_turn.rmse / 2


def test_options_and_bf16_autocast():
    """The original's --augment-rotation and --z-delay, and bfloat16 autocast (as the engine uses it): finite
    losses, float32 predictions."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32, 32)
    batch = {"image": x, "index": torch.arange(4), "ctf": torch.rand(4, 32, 32)}
    for extra in ({"augment_rotation": True}, {"z_delay_steps": 5}, {"encoder": "conv", "apply_ctf": True}):
        model = SpatialVAE(SpatialVAEConfig(box=32, **{**SMALL, **extra}))
        opt = model.make_optimizers()
        for step in range(2):
            (phase,) = model.phases(step)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(batch, phase)
            opt[phase].zero_grad()
            out["loss"].backward()
            opt[phase].step()
            assert torch.isfinite(out["loss"]), extra
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model.predict(x, canonical=True)
        assert all(v.dtype == torch.float32 for v in pred.values())
