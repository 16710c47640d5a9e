"""Paper A's rotation-invariant auto-encoder: shapes, losses, the critic's constraint, and that it learns.

The training tests use particles made with the project's own simulator (one view of the phantom, uniform psi
from the Fourier projector, white noise, RELION normalisation) and a tiny loop that follows the engine's
contract. Everything runs on one CPU thread so that the timing does not depend on how busy the machine is.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relion_canon.analysis.metrics import align_angles
from relion_canon.ctf import ctf_2d
from relion_canon.models import model_class
from relion_canon.geometry import circular_mask, rotate
from relion_canon.models.rotinv_ae import RotInvAE, RotInvAEConfig, angle_loss, gradient_penalty
from relion_canon.preprocess.normalise import normalise
from relion_canon.simulate import FourierProjector, phantom_volume

BOX = 32
PIXEL = 5.0  # Å, so that the CTF has a few rings inside a 32 px box


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def projector() -> FourierProjector:
    return FourierProjector(phantom_volume(BOX))


def particles(projector: FourierProjector, n: int, snr: float, seed: int, ctf: bool = False) -> dict[str, torch.Tensor]:
    """One view, psi uniform, optional CTF, white noise at ``snr`` (signal variance over the box), normalised."""
    rng = np.random.default_rng(seed)
    psi = rng.uniform(-180.0, 180.0, n)
    half = full = None
    if ctf:
        defocus = rng.uniform(5000.0, 15000.0, n)
        args = (BOX, PIXEL, defocus, defocus, 0.0, 300.0, 2.7, 0.1)
        half, full = ctf_2d(*args, rfft=True).astype(np.float32), ctf_2d(*args).astype(np.float32)
    clean = projector.project(np.zeros(n), np.zeros(n), psi, ctf=half)
    clean /= clean.std(axis=(1, 2)).mean()
    noisy = clean + rng.normal(size=clean.shape).astype(np.float32) / math.sqrt(snr)
    batch = {
        "image": torch.from_numpy(normalise(noisy))[:, None],
        "psi": torch.from_numpy(np.deg2rad(psi)).float(),
        "index": torch.arange(n),
    }
    if ctf:
        batch["ctf"] = torch.from_numpy(full)
    return batch


def train(model: RotInvAE, data: dict[str, torch.Tensor], epochs: int, batch_size: int = 32) -> list[float]:
    """The engine's contract, minimally: phases per step, one optimiser each, after_step, lr milestones."""
    opts = model.make_optimizers()
    milestones = model.lr_milestones(epochs)
    n = data["image"].shape[0]
    step, history = 0, []
    for epoch in range(epochs):
        if epoch in milestones:
            for opt in opts.values():
                for group in opt.param_groups:
                    group["lr"] *= 0.1
        model.train()
        losses = []
        for idx in torch.randperm(n)[: n - n % batch_size].view(-1, batch_size):
            batch = {k: v[idx] for k, v in data.items()}
            for phase in model.phases(step):
                out = model(batch, phase)
                opts[phase].zero_grad()
                out["loss"].backward()
                opts[phase].step()
                model.after_step(phase)
                if phase == "model":
                    losses.append(float(out["loss"].detach()))
            step += 1
        history.append(float(np.mean(losses)))
    model.eval()
    return history


def psi_error(model: RotInvAE, data: dict[str, torch.Tensor]):
    pred = model.predict(data["image"], data.get("ctf"))["psi"]
    return align_angles(np.rad2deg(pred.numpy()), np.rad2deg(data["psi"].numpy()))


def masked_corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    inside = mask > 0
    a = (a - a[inside].mean()) * mask
    b = (b - b[inside].mean()) * mask
    return float((a * b).sum() / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------- interface and shapes
@pytest.mark.parametrize("box", [32, 40, 64])
@pytest.mark.parametrize("mode", ["labels", "self"])
def test_shapes_and_phases(box, mode):
    torch.manual_seed(0)
    model = RotInvAE(RotInvAEConfig(box=box, angle_mode=mode, latent_dim=8, width=8))
    assert model.needs_labels == (mode == "labels")
    batch = {"image": torch.randn(4, 1, box, box), "psi": torch.rand(4) * 6 - 3, "index": torch.arange(4)}
    if box == 40:
        batch["origin"] = torch.randn(4, 2)
    opts = model.make_optimizers()
    assert set(opts) == {"model", "critic"}
    for phase in ("critic", "model"):
        out = model(batch, phase)
        assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
        opts[phase].zero_grad()
        out["loss"].backward()
    model.eval()
    pred = model.predict(batch["image"], canonical=True)
    assert pred["psi"].shape == (4,) and pred["latent"].shape == (4, 8)
    assert pred["canonical"].shape == (4, box, box)
    assert bool(((pred["psi"] > -math.pi - 1e-6) & (pred["psi"] <= math.pi + 1e-6)).all())


def test_phase_schedule_optimisers_and_milestones():
    model = RotInvAE(RotInvAEConfig(box=32, width=8))
    assert [model.phases(s) for s in range(5)] == [("critic", "model"), ("model",), ("model",), ("model",), ("critic", "model")]
    opt = model.make_optimizers()["model"]
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 1e-5
    assert model.lr_milestones(300) == [200]
    no_critic = RotInvAE(RotInvAEConfig(box=32, width=8, lambda_adv=0.0))
    assert no_critic.phases(0) == ("model",) and set(no_critic.make_optimizers()) == {"model"}
    assert model_class("rotinv-ae") is RotInvAE
    cfg = RotInvAEConfig(box=40, angle_mode="labels", critic_constraint="clip")
    assert RotInvAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        RotInvAE(RotInvAEConfig(angle_mode="supervised"))


def test_angle_loss_is_wrapped_exp():
    target = torch.tensor([0.3, -2.0, 3.0, 0.0])
    pred = torch.tensor([0.5, -2.5, -3.0, 1.0])
    expected = torch.exp(torch.tensor([0.2, 0.5, 2 * math.pi - 6.0, 1.0])) - 1  # 3 → −3 is 0.28 rad apart, not 6
    torch.testing.assert_close(angle_loss(pred, target), expected, atol=1e-5, rtol=1e-5)
    for k in (-2, 1, 3):  # periodic in either argument
        torch.testing.assert_close(angle_loss(pred + 2 * math.pi * k, target), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(angle_loss(pred, target - 2 * math.pi * k), expected, atol=1e-4, rtol=1e-4)
    assert angle_loss(pred.half(), target.half()).dtype == torch.float32
    assert float(angle_loss(torch.tensor([math.pi]), torch.tensor([-math.pi]))) == pytest.approx(0.0, abs=1e-5)


def test_weight_clipping_really_clips():
    torch.manual_seed(0)
    model = RotInvAE(RotInvAEConfig(box=32, width=8, critic_constraint="clip", clip_value=0.01))
    with torch.no_grad():
        for p in model.critic.parameters():
            p.normal_(0.0, 1.0)
    batch = {"image": torch.randn(8, 1, 32, 32), "index": torch.arange(8)}
    opt = model.make_optimizers()["critic"]
    out = model(batch, "critic")
    assert "gp" not in out
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert max(float(p.detach().abs().max()) for p in model.critic.parameters()) > 0.5
    model.after_step("critic")
    assert max(float(p.detach().abs().max()) for p in model.critic.parameters()) <= 0.01
    model.after_step("model")  # other phases leave the critic alone, without error


def test_gradient_penalty_finite_nonzero_and_trains_the_critic():
    torch.manual_seed(0)
    model = RotInvAE(RotInvAEConfig(box=32, width=8))
    real, fake = torch.randn(6, 1, 32, 32), torch.randn(6, 1, 32, 32) * 0.1
    gp = gradient_penalty(model.critic, real, fake)
    assert torch.isfinite(gp) and float(gp.detach()) > 0
    gp.backward()  # double backward reaches the critic's weights
    assert any(float(p.grad.abs().sum()) > 0 for p in model.critic.parameters())
    out = model({"image": real, "index": torch.arange(6)}, "critic")
    assert torch.isfinite(out["gp"]) and float(out["gp"]) > 0
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.critic.modules())


def test_autocast_bfloat16_keeps_losses_float32():
    torch.manual_seed(0)
    model = RotInvAE(RotInvAEConfig(box=32, width=8, angle_mode="self"))
    batch = {"image": torch.randn(4, 1, 32, 32), "index": torch.arange(4)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [model(batch, phase) for phase in ("critic", "model")]
    for out in outs:
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        out["loss"].backward()


def test_labels_target_applies_origin_then_psi(projector):
    """A particle made as RELION's image model (turn by ψ, move by −origin) is canonicalised exactly."""
    canonical = torch.from_numpy(projector.project(0.0, 0.0, 0.0))[:, None].expand(3, 1, BOX, BOX)
    psi = torch.tensor([0.4, -2.0, 3.0])
    origin = torch.tensor([[1.5, -2.0], [0.0, 3.0], [-2.5, 0.5]])
    particle = rotate(canonical, psi, shift_px=-origin)
    model = RotInvAE(RotInvAEConfig(box=BOX, angle_mode="labels", width=8))
    back = model.canonicalised(particle, psi, origin)
    inner = circular_mask(BOX, BOX / 2 - 4)
    for i in range(3):
        assert masked_corr(back[i, 0], canonical[i, 0], inner) > 0.99
    # A wrong order (turn back first, then shift) would not be.
    wrong = rotate(rotate(particle, -psi), torch.zeros(3), shift_px=origin)
    assert masked_corr(wrong[0, 0], canonical[0, 0], inner) < 0.99


def test_missing_inputs_are_clear_errors():
    x = {"image": torch.randn(2, 1, 32, 32), "index": torch.arange(2)}
    with pytest.raises(ValueError, match="psi"):
        RotInvAE(RotInvAEConfig(box=32, width=8, angle_mode="labels"))(x, "model")
    with pytest.raises(ValueError, match="ctf"):
        RotInvAE(RotInvAEConfig(box=32, width=8, apply_ctf=True))(x, "model")


# ----------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def data(projector):
    return particles(projector, 800, snr=4.0, seed=1), particles(projector, 200, snr=4.0, seed=2)


def test_learns_psi_from_labels(projector, data):
    train_set, test_set = data
    torch.manual_seed(0)
    model = RotInvAE(RotInvAEConfig(box=BOX, angle_mode="labels", width=16, critic_width=16, lr=2e-3))
    history = train(model, train_set, epochs=6)
    assert history[-1] < history[0]
    err = psi_error(model, test_set)
    print(f"labels: psi rmse {err.rmse:.2f} deg, median {err.median:.2f}, offset {err.offset:.2f}, sign {err.sign}")
    assert err.rmse < 5.0 and err.sign == 1 and abs(err.offset) < 2.0
    # The canonical image is the unrotated particle (the labels' frame).
    truth = torch.from_numpy(projector.project(0.0, 0.0, 0.0))[0]
    canon = model.predict(test_set["image"][:16], canonical=True)["canonical"]
    assert masked_corr(canon.mean(0), truth, model.mask) > 0.95


def test_learns_a_canonical_frame_without_labels(projector, data):
    train_set, test_set = data
    torch.manual_seed(0)
    model = RotInvAE(RotInvAEConfig(box=BOX, angle_mode="self", width=16, lr=2e-3, lambda_adv=0.0))
    train_set = {k: v for k, v in train_set.items() if k != "psi"}  # no labels in the batch
    history = train(model, train_set, epochs=8)
    assert history[-1] < 0.9 * history[0]
    err = psi_error(model, test_set)
    print(f"self: psi rmse {err.rmse:.2f} deg, median {err.median:.2f}, offset {err.offset:.2f}, sign {err.sign}")
    # Chance is ~104 deg; the equivariance loss also fixes the direction, so the sign must come out +1.
    assert err.rmse < 20.0 and err.sign == 1
    # The canonical image is the particle in the learned frame: the truth turned by −offset.
    truth = rotate(torch.from_numpy(projector.project(0.0, 0.0, 0.0)), torch.tensor([math.radians(-err.offset)]))[0]
    canon = model.predict(test_set["image"][:16], canonical=True)["canonical"]
    assert masked_corr(canon.mean(0), truth, model.mask) > 0.9


def test_ctf_in_the_decoder(projector):
    train_set = particles(projector, 256, snr=2.0, seed=3, ctf=True)
    torch.manual_seed(0)
    model = RotInvAE(RotInvAEConfig(box=BOX, angle_mode="self", apply_ctf=True, width=16, critic_width=16, lr=2e-3))
    history = train(model, train_set, epochs=4)
    assert history[-1] < history[0]
    out = model.predict(train_set["image"][:8], train_set["ctf"][:8], canonical=True)
    assert out["canonical"].shape == (8, BOX, BOX) and torch.isfinite(out["canonical"]).all()
