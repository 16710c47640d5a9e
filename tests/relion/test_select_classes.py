"""Classes from relion_canon taken by a RELION 3.1 Select job, as from a Class2D.

A per-class External job on three simulated views (class = view) registers ``run_it000_model.star`` as a
model node (type 8); relion_pipeliner then adds a Select job on it ("Select classes from model.star"). That
selection is interactive (``relion_display --gui``, not run here), so the particles of a chosen class are
taken as the displayer takes them: from ``run_it000_data.star`` (the model's name with ``_model.star``
replaced) by ``rlnClassNumber``, here with a non-interactive Select job ("Select based on metadata values").
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from relion_canon.io.star import read_star, write_star
from relion_canon.relion.job_star import parse_star_text
from tests.relion.helpers import MINIMAL_PIPELINE, external_script

pytestmark = pytest.mark.relion

N_PARTICLES = 90
JOB = "External/job001/"


def _pipeliner(project: Path, *args: str, timeout: float = 120) -> None:
    res = subprocess.run(["relion_pipeliner", *args], cwd=project, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def _pipeline(project: Path) -> dict[str, list[list[str]]]:
    return parse_star_text((project / "default_pipeline.star").read_text())[2]


def _run(project: Path, *args: str) -> str:
    res = subprocess.run(list(args), cwd=project, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def project(require_relion, tmp_path_factory) -> Path:
    """A project whose particles carry their simulated view as rlnClassNumber (1..3), after the External job."""
    from relion_canon.simulate import SimulationConfig, simulate_dataset

    root = tmp_path_factory.mktemp("select") / "project"
    root.mkdir()
    (root / "default_pipeline.star").write_text(MINIMAL_PIPELINE)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        simulate_dataset(SimulationConfig(n_particles=N_PARTICLES, box=32, views=3, junk_fraction=0.0, seed=4),
                         Path("Input"))
    finally:
        os.chdir(cwd)
    star, truth = read_star(root / "Input/particles.star"), read_star(root / "Input/ground_truth.star")
    classes = truth.particles["rlnCanonViewId"].to_numpy() + 1
    write_star(star.with_columns({"rlnClassNumber": classes}), root / "Input/particles.star")
    _pipeliner(root, "--addJob", "External", "--addJobOptions",
               f"fn_exe == {external_script()};in_part == Input/particles.star;"
               "param1_label == epochs;param1_value == 1;param2_label == per_class;param2_value == yes;"
               "nr_threads == 1;other_args == --train_particles 60")
    _pipeliner(root, "--RunJobs", JOB, "--sec_wait_after", "1", timeout=300)
    assert (root / JOB / "RELION_JOB_EXIT_SUCCESS").exists(), (root / JOB / "run.err").read_text()[-3000:]
    return root


def test_model_is_a_model_node_a_select_job_takes(project):
    model = f"{JOB}run_it000_model.star"
    assert [model, "8"] in _pipeline(project)["pipeline_nodes"]  # NODE_MODEL
    _pipeliner(project, "--addJob", "Select", "--addJobOptions", f"fn_model == {model}")
    assert [model, "Select/job002/"] in _pipeline(project)["pipeline_input_edges"]


def test_relion_reads_the_model_and_its_images(project):
    rows = [line.split() for line in _run(project, "relion_star_printtable", f"{JOB}run_it000_model.star",
                                          "data_model_classes", "rlnReferenceImage", "rlnClassDistribution")
            .splitlines() if line.strip()]
    assert [r[0] for r in rows] == [f"00000{k}@{JOB}class_averages.mrcs" for k in (1, 2, 3)]
    counts = np.bincount(read_star(project / JOB / "particles.star").particles["rlnClassNumber"], minlength=4)[1:]
    assert np.allclose([float(r[1]) for r in rows], counts / N_PARTICLES)
    for name, _ in rows:  # each reference image opens in RELION
        assert "32 x 32 x 1 x 1" in _run(project, "relion_image_handler", "--i", name, "--stats")


def test_select_keeps_the_particles_of_the_chosen_class(project):
    data = f"{JOB}run_it000_data.star"  # where relion_display looks for the model's particles
    _pipeliner(project, "--addJob", "Select", "--addJobOptions",
               f"fn_data == {data};do_select_values == Yes;select_label == rlnClassNumber;"
               "select_minval == 2;select_maxval == 2")
    name = _pipeline(project)["pipeline_processes"][-1][0]  # the job just added
    _pipeliner(project, "--RunJobs", name, "--sec_wait_after", "1")
    assert (project / name / "RELION_JOB_EXIT_SUCCESS").exists()
    out = read_star(project / JOB / "particles.star")
    chosen = out.particles[out.particles["rlnClassNumber"] == 2]
    selected = read_star(project / name / "particles.star")
    assert selected.particles["rlnImageName"].tolist() == chosen["rlnImageName"].tolist()
    assert selected.optics_table is not None and len(selected) > 0
