"""Training that goes numerically wrong with a real network: caught, reported in one line, last good state kept.

The toy-model tests in test_engine.py fake a NaN inside the model; here real inputs cause it: hot pixels at the
top of the float32 range in one particle (a detector defect that normalisation cannot tame, since the background
is fine), and an absurd learning rate.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from relion_canon.cli.main import cli
from relion_canon.train import load_model

REPO = Path(__file__).resolve().parents[2]
SIM_TINY = REPO / "test_data" / "sim_tiny"
SMALL_NET = ["--set", "width=8", "--set", "max_width=16", "--set", "critic_width=8"]
JUNK_PARTICLE = 5


@pytest.fixture
def particles(tmp_path) -> Path:
    """A private copy of sim_tiny (24 particles, 32 px) whose stack the test may spoil."""
    shutil.copy(SIM_TINY / "particles.mrcs", tmp_path / "particles.mrcs")
    text = (SIM_TINY / "particles.star").read_text().replace("test_data/sim_tiny/particles.mrcs", "particles.mrcs")
    (tmp_path / "particles.star").write_text(text)
    return tmp_path / "particles.star"


def _train(particles: Path, out: Path, *extra: str):
    args = ["train", "--i", str(particles), "--o", str(out), "--model", "rotinv-ae", *SMALL_NET, "--batch-size", "8",
            "--device", "cpu", "--j", "1", "--seed", "0", "--quiet", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_hot_pixels_stop_training_with_one_line_and_keep_the_last_good_checkpoint(particles, tmp_path):
    out = tmp_path / "run"
    first = _train(particles, out, "--epochs", "1")
    assert first.exit_code == 0, first.output
    good_model = (out / "model.pt").read_bytes()
    good_checkpoint = (out / "checkpoint.pt").read_bytes()

    # One particle gets a 4x4 patch of 3e38 (float32 max: 3.4e38) in its centre: finite pixels, so reading accepts
    # them, and a normal background, so normalisation leaves them huge; the network's sums overflow to inf.
    with mrcfile.open(particles.parent / "particles.mrcs", "r+") as m:
        m.data[JUNK_PARTICLE, 14:18, 14:18] = 3e38

    res = _train(particles, out, "--epochs", "3")  # resumes after epoch 1, then meets the junk particle
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("relion-canon: error: training diverged: ")
    assert "loss is inf at epoch 2" in lines[0]
    assert f"the last good checkpoint is {out / 'checkpoint.pt'}" in lines[0]
    assert "Resuming from" in res.stdout and "epoch 2/3" not in res.stdout

    # Nothing from the diverged epoch was written; both files load and hold finite weights.
    assert (out / "model.pt").read_bytes() == good_model
    assert (out / "checkpoint.pt").read_bytes() == good_checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.pt"]
    for path in (out / "model.pt", out / "checkpoint.pt"):
        loaded = load_model(path)
        assert loaded.meta["history"][-1]["epoch"] == 1
        assert _finite(loaded.model.state_dict())
        with mrcfile.open(SIM_TINY / "particles.mrcs") as m:
            images = torch.from_numpy(np.array(m.data[:4], np.float32)).unsqueeze(1)
        assert torch.isfinite(loaded.model.predict(images)["psi"]).all()


def test_absurd_learning_rate_stops_in_the_first_epoch_and_writes_nothing(particles, tmp_path):
    out = tmp_path / "run"
    res = _train(particles, out, "--epochs", "2", "--lr", "1e6")
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "training diverged: model loss is nan at epoch 1" in lines[0]
    assert "the last good checkpoint is none (first epoch)" in lines[0] and "lower --lr" in lines[0]
    assert not out.exists() or not any(out.iterdir())  # no model file that looks usable, nothing half-written
