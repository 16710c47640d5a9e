"""``--gpu 0,1``: the whole job in one torchrun process per device, sharing the training and every pass over the
particles; rank 0 writes the results into the folder the External job holds.

Without GPUs the same path runs on the CPU (two gloo processes), which is what this checks here.
"""

from __future__ import annotations

import json

from relion_canon.relion.external import main
from tests.relion.helpers import make_project


def test_the_job_in_two_processes(tmp_path, monkeypatch, capfd):
    project = make_project(tmp_path / "project", n=60, box=32, junk=0.1, seed=4)
    monkeypatch.chdir(project)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    job = project / "External/job001"
    job.mkdir(parents=True)
    (job / "class_gallery.png").write_text("an earlier run's figure")  # set aside: this run does not draw it
    rc = main(["--o", "External/job001/", "--in_parts", "Input/particles.star", "--epochs", "1", "--gpu", "0,1",
               "--j", "1", "--classes", "2"])
    captured = capfd.readouterr()  # the processes write to the file descriptors
    assert rc == 0, captured.err[-3000:]
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert "Running on GPUs 0,1, one process each" in captured.out
    assert captured.out.count("Predicting 60 particles") == 1  # rank 0's lines only
    report = json.loads((job / "report.json").read_text())
    assert report["n_particles"] == 60 and [h["epoch"] for h in report["training_history"]] == [1]
    assert report["classification"]["n_classes"] >= 1
    nodes = (job / "RELION_OUTPUT_NODES.star").read_text()
    assert "particles_selected.star" in nodes and "logfile.pdf" in nodes
    assert not (job / "distributed_job.json").exists()
    assert not (job / "class_gallery.png").exists() or "earlier" not in (job / "class_gallery.png").read_text(
        errors="replace")
    assert not (job / ".relion_canon.previous").exists() and not (job / ".relion_canon.journal").exists()
