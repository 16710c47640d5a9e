"""The training engine with a toy model: checkpoints, bit-identical resume, divergence, safe loading."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from relion_canon.context import QUIET, RunContext
from relion_canon.errors import InputError
from relion_canon.train import TrainConfig, TrainingDiverged, TrainingStopped, load_model, train
from relion_canon.train import checkpoint


def _lines(caplog) -> list[str]:
    """The engine's messages, as a front door's ``log_to`` would show them."""
    return [r.getMessage() for r in caplog.records if r.name == "relion_canon.train.engine"]


def _config(**kw):
    base = dict(model="toy", epochs=3, batch_size=32, seed=1, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_trains_and_writes_model_with_everything_predict_needs(small_set, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="relion_canon"):
        result = train(small_set, tmp_path / "run", _config(), context=QUIET)
    lines = _lines(caplog)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["model/loss"] < result.history[0]["model/loss"]
    assert any(line.startswith("epoch 3/3") and "particles/s" in line for line in lines)
    data = checkpoint.load(result.model_path)
    assert data["model"] == "toy" and data["box"] == 24 and data["pixel_size"] == pytest.approx(5.0)
    assert data["preprocess"]["normalise"] is True
    assert data["model_config"]["latent_dim"] == 4
    assert len(data["history"]) == 3
    # The milestone of the toy model (last epoch) scaled the learning rate by 0.1.
    assert [h["lr_factor"] for h in result.history] == [1.0, 1.0, pytest.approx(0.1)]
    loaded = load_model(result.model_path)
    assert loaded.model.config.latent_dim == 4


def test_cpu_reruns_are_bit_identical(small_set, tmp_path):
    a = train(small_set, tmp_path / "a", _config(epochs=2), context=QUIET)
    b = train(small_set, tmp_path / "b", _config(epochs=2), context=QUIET)
    sa, sb = checkpoint.load(a.model_path)["state_dict"], checkpoint.load(b.model_path)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_stop_equals_uninterrupted_run(small_set, tmp_path, caplog):
    full = train(small_set, tmp_path / "full", _config(epochs=3), context=QUIET)
    calls = {"n": 0}

    def stop_after_first_epoch():
        calls["n"] += 1
        return calls["n"] == 1

    with pytest.raises(TrainingStopped):
        train(small_set, tmp_path / "cut", _config(epochs=3),
              context=RunContext(progress=False, should_stop=stop_after_first_epoch))
    assert checkpoint.load(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="relion_canon"):
        resumed = train(small_set, tmp_path / "cut", _config(epochs=3), context=QUIET)
    assert resumed.resumed_from == 1 and "Resuming" in _lines(caplog)[0]
    sa, sb = checkpoint.load(full.model_path)["state_dict"], checkpoint.load(resumed.model_path)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["model/loss"] for h in resumed.history] == [h["model/loss"] for h in full.history]


def test_incompatible_checkpoint_refused(small_set, tmp_path):
    train(small_set, tmp_path / "run", _config(epochs=1), context=QUIET)
    with pytest.raises(InputError, match="incompatible checkpoint: its model_config"):
        train(small_set, tmp_path / "run", _config(epochs=2, model_options={"latent_dim": 6}), context=QUIET)


def test_divergence_stops_with_clear_error_and_keeps_last_good_checkpoint(small_set, tmp_path):
    # 200 particles / 32 per batch = 6 steps per epoch: step 8 falls in the second epoch.
    cfg = _config(epochs=3, model_options={"explode_at_step": 8})
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, step 8"):
        train(small_set, tmp_path / "run", cfg, context=QUIET)
    good = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


def test_unknown_model_option_named(small_set, tmp_path):
    with pytest.raises(InputError, match="model toy has no option\\(s\\) nonsense"):
        train(small_set, tmp_path / "run", _config(model_options={"nonsense": 1}), context=QUIET)


# --- safe loading -----------------------------------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_crafted_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "model.pt"
    torch.save({"format": "relion_canon.model", "format_version": 1, "x": _Payload()}, evil)
    with pytest.raises(InputError, match="refusing to load: .*Unsupported global: GLOBAL exec"):
        checkpoint.load(evil)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "model file not found"),
        (b"not a torch file", "not a readable model file"),
        ({"format": "something.else"}, "not a relion_canon model file"),
        ({"format": "relion_canon.model", "format_version": 99}, "model file format 99 is not supported"),
    ],
)
def test_bad_model_files(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(InputError, match=message):
        checkpoint.load(path)


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(path, {"a": torch.ones(2)})
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be saved
        checkpoint.save(path, {"a": lambda: 0})
    assert torch.equal(checkpoint.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_worker_processes_feed_the_same_batches(small_set, tmp_path):
    a = train(small_set, tmp_path / "a", _config(epochs=1), context=QUIET)
    b = train(small_set, tmp_path / "b", _config(epochs=1, workers=2), context=QUIET)
    sa, sb = checkpoint.load(a.model_path)["state_dict"], checkpoint.load(b.model_path)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bf16_autocast_on_cpu(small_set, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="relion_canon"):
        result = train(small_set, tmp_path / "run", _config(epochs=2, precision="bf16"), context=QUIET)
    assert "with bf16 autocast" in _lines(caplog)[0]
    assert all(np.isfinite(h["model/loss"]) for h in result.history)
