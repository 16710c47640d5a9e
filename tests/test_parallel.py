"""The job's processes under torchrun: each reads its share, sums and per-particle results are joined, and the
whole job in 2 gloo processes on the CPU gives what one process gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from relion_canon import parallel
from relion_canon.cli import relaunch
from relion_canon.simulate import SimulationConfig, load_source, simulate_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_one_process_is_a_world_of_one():
    assert parallel.world() == (0, 1) and parallel.is_writer()
    assert np.array_equal(parallel.share(7), np.arange(7))
    t = torch.arange(4.0)
    assert parallel.summed(t) is t and torch.equal(t, torch.arange(4.0))
    new, old = torch.ones(3), torch.zeros(3)
    assert parallel.merged(new, old, torch.tensor([True, False, False])) is new
    rows, values = parallel.gathered(np.array([2, 5]), torch.ones(2, 3))
    assert rows.tolist() == [2, 5] and values.shape == (2, 3)


def _collectives(rank: int, size: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        n = 11
        mine = parallel.share(n)
        summed = parallel.summed(torch.tensor([float(len(mine)), rank + 1.0]))
        touched = torch.from_numpy(parallel.owned(n)) & (torch.arange(n) % 3 != 0)  # row 0, 3, 6, 9: nobody's
        new = torch.stack([torch.arange(n, dtype=torch.float32) * 10, torch.full((n,), float(rank))], dim=1)
        merged = parallel.merged(new, torch.full((n, 2), -1.0), touched)
        rows, values = parallel.gathered(mine[::-1].copy(), torch.from_numpy(mine[::-1] * 2.0))
        torch.save({"mine": mine, "summed": summed, "merged": merged, "rows": rows, "values": values},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_share_sum_merge_and_gather(tmp_path):
    mp.spawn(_collectives, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in range(2)]
    assert np.array_equal(np.concatenate([g["mine"] for g in got]), np.arange(11))  # disjoint, covering, in order
    for g in got:
        assert g["summed"].tolist() == [11.0, 3.0]
        expected = torch.stack([torch.arange(11.0) * 10, torch.tensor([0.0 if r < 5 else 1.0 for r in range(11)])], 1)
        nobody = torch.arange(11) % 3 == 0
        expected[nobody] = -1.0
        assert torch.equal(g["merged"], expected)
        assert g["rows"].tolist() == list(range(11)) and g["values"].tolist() == [2.0 * r for r in range(11)]


def _classify(root: Path) -> dict:
    """classify_particles as the job calls it, on a subset for the rounds, nothing cached, with the junk rule."""
    from relion_canon.analysis.alignment import AlignmentConfig
    from relion_canon.analysis.classification import ClassificationConfig
    from relion_canon.analysis.estimate.junk import junk_class_mask
    from tests.analysis.test_classification import _classify_with

    config = ClassificationConfig(n_classes=4, particles_per_class=50, alignment=AlignmentConfig(
        max_shift=4.0, reference_particles=200, cache_bytes=0))
    found = _classify_with(root, config, junk_class_mask)
    return {"classes": found.class_index, "psi": found.psi_deg, "shift": found.shift_px, "noise": found.noise}


def _classify_in(rank: int, size: int, init_file: str, root: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        torch.save(_classify(Path(root)), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_classification_in_two_processes_with_a_subset_and_no_cache(views, tmp_path, one_thread):
    """The passes of a classification too large for its cache, rounds on a subset, and re-homing: two gloo
    processes, each reading its half, hold the same result as one process, and the same as each other."""
    one = _classify(views)
    mp.spawn(_classify_in, args=(2, str(tmp_path / "init"), str(views), str(tmp_path / "out")), nprocs=2, join=True)
    two = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in range(2)]
    for key in one:
        assert np.array_equal(two[0][key], two[1][key]), key  # every process holds every particle's result
    assert len(np.unique(one["classes"])) >= 3
    assert np.allclose(one["noise"], two[0]["noise"], rtol=1e-5)
    same = one["classes"] == two[0]["classes"]
    assert same.mean() >= 0.99
    dpsi = (one["psi"] - two[0]["psi"] + 180) % 360 - 180
    assert np.median(np.abs(dpsi[same])) < 0.01


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> Path:
    sim = tmp_path_factory.mktemp("views")
    config = SimulationConfig(n_particles=500, box=40, pixel_size=4.0, views=4, snr=0.3, junk_fraction=0.1,
                              shift_sigma=4.0, seed=5)
    simulate_dataset(config, sim)
    with mrcfile.new(sim / "reference.mrc") as m:  # the true map, for --ref
        m.set_data(load_source(config.source, config.box, config.pixel_size).data.astype(np.float32))
        m.voxel_size = config.pixel_size
    return sim


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_job_in_two_processes_gives_what_one_gives(views, tmp_path):
    """One process trains and applies the model; two torchrun processes (gloo, CPU) apply the same model, each to
    its half of every pass. Classes, outlier flags and poses agree up to the order of the reductions, and so do
    the 3-D priors (--ref), which rank 0 finds alone after the passes."""
    job = [sys.executable, "-m", "relion_canon.cli.main", "run", "--i", str(views / "particles.star"), "--quiet",
           "--j", "1", "--classes", "6", "--ref", str(views / "reference.mrc")]
    _run([*job, "--o", "one"], tmp_path)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                *job[1:], "--o", "two", "--model-path", "one/model.pt"], tmp_path)
    assert two.stdout.count("Wrote two/particles.star") == 1  # rank 0 alone reports and writes
    assert not (tmp_path / "two" / ".relion_canon.lock").exists()
    a = starfile.read(tmp_path / "one" / "particles.star")["particles"]
    b = starfile.read(tmp_path / "two" / "particles.star")["particles"]
    assert a["rlnClassNumber"].nunique() >= 3
    assert (a["rlnClassNumber"] == b["rlnClassNumber"]).mean() >= 0.99
    assert (a["rlnCanonIsOutlier"] == b["rlnCanonIsOutlier"]).mean() >= 0.99
    same = (a["rlnClassNumber"] == b["rlnClassNumber"]).to_numpy()
    dpsi = (a["rlnAnglePsi"].to_numpy() - b["rlnAnglePsi"].to_numpy() + 180) % 360 - 180
    assert np.median(np.abs(dpsi[same])) < 0.01
    assert np.abs(a["rlnOriginXAngst"].to_numpy() - b["rlnOriginXAngst"].to_numpy())[same].max() < 0.5
    assert np.median(np.abs(a["rlnCanonDefocus"].to_numpy() - b["rlnCanonDefocus"].to_numpy())) < 5.0
    posed = (a["rlnAngleTiltPrior"] < 999).to_numpy()
    assert posed.mean() > 0.25 and (posed == (b["rlnAngleTiltPrior"] < 999).to_numpy()).mean() >= 0.99
    for column in ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior"):
        gap = (a[column].to_numpy() - b[column].to_numpy() + 180) % 360 - 180
        assert np.median(np.abs(gap[posed & same])) < 0.01, column


def test_several_gpu_ids_relaunch_the_command_under_torchrun(monkeypatch):
    """No GPUs here: what ``--gpu 0,1`` starts is checked, not run."""
    started = {}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["relion-canon", "run", "--i", "p.star", "--o", "out", "--gpu", "0,1"])
    monkeypatch.setattr(os, "execve", lambda exe, args, env: started.update(args=args, env=env))
    relaunch.relaunch_on_gpus("0")
    assert not started  # one GPU: this process runs on it
    relaunch.relaunch_on_gpus("0,1")
    assert started["args"][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert started["args"][6:] == ["relion_canon.cli.main", "run", "--i", "p.star", "--o", "out", "--gpu", "0,1"]
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
