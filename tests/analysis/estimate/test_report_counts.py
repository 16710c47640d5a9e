"""report.json agrees with itself and with the STAR files beside it: every count and fraction of a real job.

The demo's report once said ``n_flagged 215`` of 2,000 but ``fraction_flagged 0.0695`` (139): the fraction
was counted at the detectors' own threshold (3) and the count at the job's (2.5), and with classes the
junk classes' particles were added to the count only. Both kinds of job are run here through the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from relion_canon.cli.main import cli
from relion_canon.io.star import read_star
from relion_canon.simulate import SimulationConfig, simulate_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    # Noise junk forms a class of its own, which the job judges junk: the path that adds class flags.
    root = tmp_path_factory.mktemp("counts") / "sim"
    simulate_dataset(SimulationConfig(n_particles=240, box=48, pixel_size=3.0, snr=0.5, junk_fraction=0.3,
                                      junk_kinds=("noise",), phantom_seed=7, seed=3), root)
    return root


@pytest.fixture(scope="module", params=["classified", "no_refine"])
def job(request, sim, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "job"
    extra = ["--no-refine"] if request.param == "no_refine" else []
    res = CliRunner().invoke(cli, ["run", "--i", str(sim / "particles.star"), "--o", str(out), "--epochs", "1",
                                   "--train-particles", "100", "--quiet", *extra])
    assert res.exit_code == 0, res.output
    return out


def test_every_count_in_report_json_agrees(job):
    report = json.loads((job / "report.json").read_text())
    star = read_star(job / "particles.star").particles
    n = len(star)
    flag = star["rlnCanonIsOutlier"].to_numpy().astype(bool)
    z = star["rlnParticleSelectZScore"].to_numpy(dtype=float)
    o = report["outliers"]

    assert report["n_particles"] == o["n_particles"] == n
    assert report["n_rejected"] == o["n_flagged"] == int(flag.sum()) == len(read_star(job / "particles_rejected.star"))
    assert report["n_selected"] == n - o["n_flagged"] == len(read_star(job / "particles_selected.star"))
    assert o["fraction_flagged"] == pytest.approx(o["n_flagged"] / n, abs=1e-12)
    by_score = z > o["threshold"]
    assert o["n_flagged_by_score"] == int(by_score.sum())
    assert o["n_flagged_by_score"] + o["n_flagged_by_junk_class_only"] == o["n_flagged"]
    assert o["n_flagged"] > 0  # 30 % noise: a count of 0 would check nothing

    classes = report.get("classes", {})
    if "rlnClassNumber" in star:
        numbers = star["rlnClassNumber"].to_numpy()
        assert sum(c["n_particles"] for c in classes.values()) == n
        junk_classes = [int(k) for k, c in classes.items() if c.get("is_junk")]
        assert report["classification"]["n_junk_classes"] == len(junk_classes) >= 1
        for key, c in classes.items():
            assert c["n_particles"] == int((numbers == int(key)).sum())
            assert c["fraction"] == pytest.approx(c["n_particles"] / n)
        in_junk = np.isin(numbers, junk_classes)
        assert flag[in_junk].all()  # a junk class's particles are all flagged, whatever their score
        assert o["n_flagged_by_junk_class_only"] == int((in_junk & ~by_score).sum())
        assert (flag == (by_score | in_junk)).all()
    else:
        assert o["n_flagged_by_junk_class_only"] == 0
        assert (flag == by_score).all()
