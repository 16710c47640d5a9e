"""Two CPU processes with the gloo backend, launched by torchrun, against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from relion_canon.context import QUIET
from relion_canon.io import read_star
from relion_canon.train import dataset_for, load_model, run_inference

REPO = Path(__file__).resolve().parents[2]
# Two epochs: the self-supervised angle loss is where the model picks its frame (a symmetry breaking), and
# there rounding differences between one and two processes grow many-fold every epoch, so only the first
# epochs can be compared step for step.
EPOCHS = 2


def _run(star: Path, out: Path, nproc: int) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "tests/train/ddp_worker.py"), str(star), str(out), str(EPOCHS)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    histories = [json.loads((out / f"history_rank{r}.json").read_text()) for r in range(nproc)]  # every rank finished
    losses = [[{k: v for k, v in rec.items() if "/" in k} for rec in h] for h in histories]
    assert all(x == losses[0] for x in losses)  # logged losses are averaged across ranks
    assert res.stdout.count(f"epoch {EPOCHS}/{EPOCHS}") == 1  # only rank 0 logs
    return histories[0]


def test_two_gloo_processes_match_one(small_set, tmp_path):
    single = _run(small_set, tmp_path / "one", 1)
    double = _run(small_set, tmp_path / "two", 2)
    # Same global batch, same data order, a loss that is a mean over the batch: averaging the two
    # processes' gradients must give the single process's steps, up to floating-point summation order
    # (which Adam carries forward, hence the tolerance).
    for key in ("model/loss", "model/rec", "model/equiv", "critic/loss"):
        np.testing.assert_allclose([h[key] for h in double], [h[key] for h in single], rtol=5e-3, atol=1e-2, err_msg=key)
    assert double[-1]["model/loss"] < double[0]["model/loss"]
    # The two trained models make the same predictions (weights drift apart slightly where Adam divides
    # tiny gradients by tiny second moments, so compare what the models do, not their raw weights).
    outputs = []
    for run in ("one", "two"):
        loaded = load_model(tmp_path / run / "model.pt")
        assert loaded.meta["epoch"] == EPOCHS
        outputs.append(run_inference(loaded, dataset_for(loaded, read_star(small_set)), context=QUIET))
    assert np.corrcoef(outputs[0]["latent"].ravel(), outputs[1]["latent"].ravel())[0, 1] > 0.99
    dpsi = np.rad2deg(np.angle(np.exp(1j * (outputs[0]["psi"] - outputs[1]["psi"]))))
    assert np.median(np.abs(dpsi)) < 2.0
