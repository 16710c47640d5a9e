"""relion_canon_external inside a real RELION 3.1 pipeline: added and run by relion_pipeliner, its outputs read
by relion_star_handler and consumed by a downstream Class2D with --sigma_psi; a broken input ends Failed, an
abort request ends Aborted, and a continued job resumes its training.

One scratch project (200 simulated particles, 32 px) serves the whole module; every subprocess has a timeout
so that a job that never writes an exit file fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from relion_canon.io.star import read_star
from relion_canon.relion.job_star import parse_star_text
from tests.relion.helpers import external_script, make_project, snapshot, write_job_star

pytestmark = pytest.mark.relion

REPO = Path(__file__).resolve().parents[2]
N_PARTICLES = 200
RELION_FILES = ("default_pipeline.star", "pipeline_", ".pipeline_has_changed", ".gui_", ".Nodes/", ".relion_lock")


def pipeliner(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(["relion_pipeliner", *args], cwd=project, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res


def add_job(project: Path, job_type: str, options: str) -> str:
    """Add a scheduled job; returns its name (e.g. External/job003/)."""
    before = _processes(project)
    pipeliner(project, "--addJob", job_type, "--addJobOptions", options, timeout=60)
    (name,) = set(_processes(project)) - set(before)
    return name


def _processes(project: Path) -> dict[str, str]:
    """process name → status (3.1: 0 running, 1 scheduled, 2 succeeded, 3 failed, 4 aborted)."""
    _, _, loops = parse_star_text((project / "default_pipeline.star").read_text())
    return {row[0]: row[3] for row in loops.get("pipeline_processes", [])}


def _nodes(project: Path) -> dict[str, str]:
    _, _, loops = parse_star_text((project / "default_pipeline.star").read_text())
    return {row[0]: row[1] for row in loops.get("pipeline_nodes", [])}


def _edges(project: Path, table: str) -> list[tuple[str, str]]:
    _, _, loops = parse_star_text((project / "default_pipeline.star").read_text())
    return [tuple(row) for row in loops.get(table, [])]


def _exit_files(job: Path) -> list[str]:
    return sorted(p.name for p in job.glob("RELION_JOB_EXIT_*"))


def _data_rows(star: Path) -> int:
    return len(read_star(star))


@pytest.fixture(scope="module")
def project(require_relion, tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("relion") / "project", n=N_PARTICLES, box=32, junk=0.1, seed=5)
    return root


@pytest.fixture(scope="module")
def external_run(project) -> dict:
    """job001: the External job added with --addJob and run with --RunJobs, as a scripted pipeline does; param2
    has outlier_z's old label, as a job saved before the labels were shortened has it."""
    before = snapshot(project)
    name = add_job(project, "External",
                   f"fn_exe == {external_script()};in_part == Input/particles.star;"
                   "param1_label == epochs;param1_value == 1;param2_label == outlier_threshold;param2_value == 2;"
                   "param3_label == gpu;nr_threads == 2;other_args == --seed 1")
    assert name == "External/job001/"
    assert _processes(project)[name] == "1"  # scheduled
    t0 = time.perf_counter()
    res = pipeliner(project, "--RunJobs", name, "--sec_wait_after", "1", timeout=600)
    return {"name": name, "seconds": time.perf_counter() - t0, "before": before, "after": snapshot(project),
            "stdout": res.stdout, "stderr": res.stderr}


def test_job_succeeds_and_registers_its_nodes(project, external_run):
    job = project / "External/job001"
    assert _processes(project)["External/job001/"] == "2", (job / "run.err").read_text()[-3000:]
    assert _exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    nodes = _nodes(project)
    assert nodes["External/job001/particles.star"] == "3"  # particles
    assert nodes["External/job001/particles_selected.star"] == "3"
    assert nodes["External/job001/logfile.pdf"] == "13"  # PDF logfile
    assert ("Input/particles.star", "External/job001/") in _edges(project, "pipeline_input_edges")
    assert ("External/job001/", "External/job001/particles.star") in _edges(project, "pipeline_output_edges")
    assert (project / ".Nodes/3/External/job001/particles.star").exists()
    # The 3.1 nodes file has no 4.0 label column, which 3.1 would warn about ("unknown label").
    assert "rlnPipeLineNodeTypeLabel" not in external_run["stdout"] + external_run["stderr"]
    # The command RELION built: empty-valued param as a bare flag, Additional arguments, --pipeline_control.
    note = (job / "note.txt").read_text()
    assert "--epochs 1 --outlier_threshold 2 --gpu  --j 2 --seed 1" in note
    assert "--pipeline_control External/job001/" in note
    run_out = (job / "run.out").read_text()
    assert "RELION 3.1 (from External/job001/job.star); new run" in run_out
    for name in ("particles.star", "particles_selected.star", "logfile.pdf", "model.pt"):
        assert (job / name).stat().st_size > 0, name


def test_outputs_keep_the_input_and_stay_project_relative(project, external_run):
    job = project / "External/job001"
    src, out = read_star(project / "Input/particles.star"), read_star(job / "particles.star")
    assert list(out.particles.columns[: len(src.particles.columns)]) == list(src.particles.columns)
    assert out.particles["rlnImageName"].tolist() == src.particles["rlnImageName"].tolist()
    for column in ("rlnAnglePsi", "rlnAnglePsiPrior", "rlnParticleSelectZScore", "rlnParticleFigureOfMerit"):
        assert column in out.particles.columns and np.isfinite(out.particles[column].to_numpy(float)).all()
    psi = out.particles["rlnAnglePsiPrior"].to_numpy(float)
    assert psi.min() >= -180 and psi.max() < 180
    assert out.optics_table is not None and out.optics_table.equals(src.optics_table)
    report = json.loads((job / "report.json").read_text())
    assert report["input"] == "Input/particles.star" and report["n_particles"] == N_PARTICLES
    for name in ("particles.star", "particles_selected.star", "RELION_OUTPUT_NODES.star", "report.json"):
        assert str(project) not in (job / name).read_text(), f"{name} names an absolute project path"
    # The job wrote only inside its folder; RELION's own bookkeeping aside, nothing else changed.
    before, after = external_run["before"], external_run["after"]
    changed = {k for k in after if before.get(k) != after[k]} | (set(before) - set(after))
    outside = {k for k in changed if not k.startswith("External/job001/") and not k.startswith(RELION_FILES)}
    assert outside == set()


def test_star_handler_reads_and_selects_on_the_zscore(project, external_run):
    (project / "Select").mkdir(exist_ok=True)  # relion_star_handler does not make the output folder
    res = subprocess.run(["relion_star_handler", "--i", "External/job001/particles.star", "--o", "Select/zscore.star",
                          "--select", "rlnParticleSelectZScore", "--maxval", "2"],
                         cwd=project, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    n_selected = _data_rows(project / "Select/zscore.star")
    assert n_selected == _data_rows(project / "External/job001/particles_selected.star")
    assert 0 < n_selected <= N_PARTICLES
    res = subprocess.run(["relion_star_handler", "--i", "External/job001/particles_selected.star",
                          "--o", "Select/copy.star"], cwd=project, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert _data_rows(project / "Select/copy.star") == n_selected


def test_class2d_downstream_uses_the_psi_prior(project, external_run):
    name = add_job(project, "Class2D",
                   "fn_img == External/job001/particles.star;nr_classes == 1;nr_iter == 1;particle_diameter == 60;"
                   "nr_threads == 2;nr_pool == 10;other_args == --sigma_psi 5")
    pipeliner(project, "--RunJobs", name, "--sec_wait_after", "1", timeout=600)
    job = project / name
    assert _processes(project)[name] == "2", (job / "run.err").read_text()[-3000:]
    assert ("External/job001/particles.star", name) in _edges(project, "pipeline_input_edges")
    assert "--sigma_psi 5" in (job / "note.txt").read_text()
    data = read_star(job / "run_it001_data.star").particles
    assert len(data) == N_PARTICLES
    # Local in-plane searches: every refined psi lies within 3 sigma (+ one 6° sampling step) of the prior.
    delta = (data["rlnAnglePsi"].to_numpy(float) - data["rlnAnglePsiPrior"].to_numpy(float) + 180) % 360 - 180
    assert np.abs(delta).max() <= 3 * 5 + 6


def test_broken_input_ends_failed(project):
    (project / "Input/broken.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n1@Input/missing.mrcs\n")
    name = add_job(project, "External", f"fn_exe == {external_script()};in_part == Input/broken.star;nr_threads == 1")
    pipeliner(project, "--RunJobs", name, "--sec_wait_after", "1", timeout=300)
    job = project / name
    assert _processes(project)[name] == "3"
    assert _exit_files(job) == ["RELION_JOB_EXIT_FAILURE"]
    last = (job / "run.err").read_text().strip().splitlines()[-1]
    assert last.startswith("relion_canon_external: error: ") and "Input/broken.star" in last
    assert name + "particles.star" not in _nodes(project)


def test_abort_ends_aborted(project):
    """The job made from the RELION 3.1 template (as a user loads it), told to train for long, then aborted
    the way the GUI does it: by creating RELION_JOB_ABORT_NOW while it runs."""
    before = set(_processes(project))
    pipeliner(project, "--addJobFromStar", str(REPO / "external_job/relion3.1/job.star"), "--addJobOptions",
              f"fn_exe == {external_script()};in_part == Input/particles.star;param4_value == 500;nr_threads == 1",
              timeout=60)
    (name,) = set(_processes(project)) - before
    job = project / name
    proc = subprocess.Popen(["relion_pipeliner", "--RunJobs", name, "--sec_wait_after", "1"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while "epoch 1/500" not in ((job / "run.out").read_text() if (job / "run.out").exists() else ""):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        (job / "RELION_JOB_ABORT_NOW").touch()
        proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert _processes(project)[name] == "4"
    assert _exit_files(job) == ["RELION_JOB_EXIT_ABORTED"]
    assert not (job / "RELION_JOB_ABORT_NOW").exists()
    assert "epoch 500/500" not in (job / "run.out").read_text()
    # The template's params reached the job as RELION passes them.
    note = (job / "note.txt").read_text()
    assert "--mode train --model rotinv-ae --model_path  --epochs 500 --box  --outliers ensemble" in note


def test_continue_resumes_training(project, external_run, monkeypatch, capsys):
    """"Continue" re-runs the same command; the only signal is _rlnJobIsContinue 1 in job.star (what the GUI
    writes; relion_pipeliner 3.1 cannot continue from the command line)."""
    from relion_canon.relion.external import main

    job = project / "External/job090"
    shutil.copytree(project / "External/job001", job)
    write_job_star(job, "3.1", is_continue=True)
    monkeypatch.chdir(project)
    rc = main(["--o", "External/job090/", "--in_parts", "Input/particles.star", "--epochs", "2", "--j", "2",
               "--seed", "1", "--refine", "no", "--pipeline_control", "External/job090/"])
    out = capsys.readouterr().out
    assert rc == 0
    assert _exit_files(job) == ["RELION_JOB_EXIT_SUCCESS"]
    assert "continuing" in out and "Resuming from External/job090/checkpoint.pt after epoch 1/2" in out
    history = json.loads((job / "report.json").read_text())["training_history"]
    assert [h["epoch"] for h in history] == [1, 2]
    _, _, loops = parse_star_text((job / "RELION_OUTPUT_NODES.star").read_text())
    assert ["External/job090/particles.star", "3"] in loops["output_nodes"]  # 3.1: the type number alone


DUMMY_EXTERNAL = """#!/bin/sh
# Stands in for relion_canon_external (fast): copies the input particles as the job's outputs.
while [ $# -gt 0 ]; do
    case "$1" in
        --o) out=$2; shift ;;
        --in_parts) parts=$2; shift ;;
    esac
    shift
done
cp "$parts" "${out}particles.star"
cp "$parts" "${out}particles_selected.star"
touch "${out}RELION_JOB_EXIT_SUCCESS"
"""


def test_pipeline_example_script(require_relion, tmp_path):
    """external_job/pipeline_example.sh, as a user copies it: adds and runs the External job, then a Class2D
    with --sigma_psi on its output (the job itself replaced by a stand-in: the script is what is tested)."""
    project = make_project(tmp_path / "project", n=24, box=32, junk=0.0, seed=2)
    exe = tmp_path / "relion_dummy_canon.sh"
    exe.write_text(DUMMY_EXTERNAL)
    exe.chmod(0o755)
    env = {**os.environ, "EXE": str(exe), "THREADS": "1", "EPOCHS": "3", "GPU": "",
           "EXTRA_ARGS": "--per_class yes", "ITER": "1", "DIAMETER": "60", "SIGMA_PSI": "4"}
    res = subprocess.run(["bash", str(REPO / "external_job/pipeline_example.sh"), "Input/particles.star"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert _processes(project) == {"External/job001/": "2", "Class2D/job002/": "2"}
    note = (project / "External/job001/note.txt").read_text()
    assert ("--in_parts Input/particles.star --mode train --epochs 3 --outlier_z  --gpu  --j 1 "
            "--per_class yes --pipeline_control External/job001/") in note
    assert ("External/job001/particles_selected.star", "Class2D/job002/") in _edges(project, "pipeline_input_edges")
    assert "--sigma_psi 4" in (project / "Class2D/job002/note.txt").read_text()
    assert "Done: External/job001/" in res.stdout
