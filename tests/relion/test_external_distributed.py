"""``--gpu 0,1``: training in one torchrun process per device, then prediction in the job's own process.

Without GPUs the same path runs on the CPU (two gloo processes), which is what this checks here: the
processes train the job's own network, rank 0 leaves the checkpoint, and the job resumes from it with
nothing left to train.
"""

from __future__ import annotations

import json

from relion_canon.relion.external import main
from tests.relion.helpers import make_project


def test_two_processes_then_predict(tmp_path, monkeypatch, capsys):
    project = make_project(tmp_path / "project", n=24, box=32, junk=0.0, seed=4)
    monkeypatch.chdir(project)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rc = main(["--o", "External/job001/", "--in_parts", "Input/particles.star", "--epochs", "1", "--gpu", "0,1",
               "--j", "1", "--refine", "no", "--outlier_method", "iforest"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    job = project / "External/job001"
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert "Training on GPUs 0,1, one process each" in captured.out
    # The parent found the distributed run's finished checkpoint and trained no further.
    assert "Resuming from External/job001/checkpoint.pt after epoch 1/1" in captured.out
    report = json.loads((job / "report.json").read_text())
    assert [h["epoch"] for h in report["training_history"]] == [1]
    assert not (job / "distributed_training.json").exists()
