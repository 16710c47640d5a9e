"""The class model files RELION's Select job takes classes from, and their output node per RELION version."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from relion_canon.io.mrc import open_stack, write_stack
from relion_canon.io.star import ParticleStar, read_star, write_star
from relion_canon.relion.class_model import (
    NOT_MEASURED,
    PADDED_STACK,
    has_class_model,
    selection_node,
    write_class_model,
)
from relion_canon.relion.external import ExternalJob
from relion_canon.relion.job_star import parse_star_text
from relion_canon.relion.nodes import NodeKind, node_type_label
from tests.relion.helpers import FakeJob, make_project, write_job_star


def _particles(classes: list[int]) -> ParticleStar:
    n = len(classes)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnImageSize": [8]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@Input/p.mrcs" for i in range(n)],
                          "rlnOpticsGroup": np.ones(n, int), "rlnClassNumber": classes,
                          "rlnCanonExtra": np.arange(n, dtype=float)})
    return ParticleStar(None, {"optics": optics, "particles": parts}, "particles", 30001)


def _numbers(star: ParticleStar) -> np.ndarray:
    return star.particles["rlnClassNumber"].to_numpy()


def _written(star: ParticleStar, tmp_path) -> Path:
    """The particles as the job writes them before the class model (its particles.star)."""
    return write_star(star, tmp_path / "particles.star")


def _report(tmp_path, numbers: list[int], classes: dict | None = None) -> dict:
    images = np.stack([np.full((8, 8), float(c), np.float32) for c in numbers])
    stack = write_stack(tmp_path / "class_averages.mrcs", images, 2.0)
    return {"class_averages": {"file": str(stack), "classes": numbers}, "classes": classes or {}}


def test_model_names_the_class_averages_in_class_order(tmp_path):
    star = _particles([1, 1, 2, 3, 3, 3])
    report = _report(tmp_path, [1, 2, 3], {"1": {"fraction": 0.25, "resolution_A": 12.0, "is_junk": False,
                                                  "accuracy_rot_deg": 3.0},
                                            "2": {"n_particles": 1, "alignment": [{"resolution_A": 20.0}, {"resolution_A": 15.0}],
                                                  "is_junk": True}})
    assert has_class_model(_numbers(star), report)
    files = write_class_model(_numbers(star), _written(star, tmp_path), tmp_path, report)
    _, simple, loops = parse_star_text((tmp_path / "run_it000_model.star").read_text())
    assert simple["model_general"]["_rlnNrClasses"] == "3" and simple["model_general"]["_rlnPixelSize"] == "2.0"
    rows = loops["model_classes"]
    assert [r[0] for r in rows] == [f"00000{k}@{tmp_path.as_posix()}/class_averages.mrcs" for k in (1, 2, 3)]
    assert [float(r[1]) for r in rows] == [0.25, pytest.approx(1 / 6), 0.5]  # the report's, else counted
    assert [float(r[2]) for r in rows] == [3.0, NOT_MEASURED, NOT_MEASURED]
    assert [float(r[4]) for r in rows] == [12.0, 15.0, NOT_MEASURED]  # the report's, else the last round's
    assert [r[-1] for r in rows] == ["0", "1", "0"]  # junk stays a class, marked
    data = read_star(files["data"])
    assert data.particles.equals(star.particles) and data.optics_table.equals(star.optics_table)
    assert (tmp_path / "run_it000_data.star").read_bytes() == (tmp_path / "particles.star").read_bytes()
    _, simple, _ = parse_star_text((tmp_path / "run_it000_optimiser.star").read_text())
    assert simple["optimiser_general"]["_rlnModelStarFile"] == files["model"]
    assert files["model"].replace("_model.star", "_data.star") == files["data"]


def test_absent_class_numbers_get_blank_images(tmp_path):
    star = _particles([2, 2, 5])
    files = write_class_model(_numbers(star), _written(star, tmp_path), tmp_path, _report(tmp_path, [2, 5]))
    _, _, loops = parse_star_text((tmp_path / "run_it000_model.star").read_text())
    rows = loops["model_classes"]
    assert len(rows) == 5 and files["stack"].endswith(PADDED_STACK)
    assert [float(r[1]) for r in rows] == [0, pytest.approx(2 / 3), 0, 0, pytest.approx(1 / 3)]
    with open_stack(files["stack"]) as m:
        assert [float(m.data[k].mean()) for k in range(5)] == [0, 2, 0, 0, 5]
    assert rows[4][0] == f"000005@{files['stack']}"


def test_no_model_without_per_class_averages(tmp_path):
    star = _particles([1, 2])
    assert not has_class_model(_numbers(star), {})
    assert not has_class_model(None, _report(tmp_path, [1, 2]))  # no classes
    assert not has_class_model(_numbers(star), _report(tmp_path, [0]))  # one average of all particles
    assert not has_class_model(_numbers(star), _report(tmp_path, [1]))  # class 2 has no average


def test_selection_node_per_version():
    assert selection_node("3.1") == ("run_it000_model.star", NodeKind.CLASS_MODEL)
    assert selection_node("4.0") == ("run_it000_optimiser.star", NodeKind.OPTIMISER)
    assert node_type_label(NodeKind.OPTIMISER, "4.0") == "ProcessData.star.relion.optimiser"
    assert node_type_label(NodeKind.OPTIMISER, "5.0") == "OptimiserData.star.relion"
    with pytest.raises(ValueError, match="no node type"):
        node_type_label(NodeKind.CLASS_MODEL, "5.0")


class _ClassJob(FakeJob):
    def __call__(self, star, out_dir, config, **kwargs):
        result = super().__call__(star, out_dir, config, **kwargs)
        return SimpleNamespace(report={**result.report, "class_model": {"model": "x"}})


@pytest.mark.parametrize("version, node", [("3.1", ["External/job001/run_it000_model.star", "8"]),
                                           ("5.0", ["External/job001/run_it000_optimiser.star", "9",
                                                    "OptimiserData.star.relion"])])
def test_external_job_registers_the_selection_node(tmp_path, monkeypatch, version, node):
    project = make_project(tmp_path / "project", n=12)
    monkeypatch.chdir(project)
    write_job_star(project / "External/job001", version)
    assert ExternalJob("External/job001/", job=_ClassJob()).run(
        ["--o", "External/job001/", "--in_parts", "Input/particles.star"]) == 0
    _, _, loops = parse_star_text((project / "External/job001/RELION_OUTPUT_NODES.star").read_text())
    assert loops["output_nodes"][-1] == node
