"""`relion-canon info`: the summary, and every problem it must name (each with a non-zero exit)."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

from relion_canon.cli.info_cmd import info
from tests.io.helpers import make_stack, make_star


def _run(*args):
    return CliRunner().invoke(info, [str(a) for a in args])


def test_summary_of_real_six_optics_groups_file(shared_data):
    res = _run(shared_data / "formats/relion/relion31.6opticsgroups.star", "--json")
    report = json.loads(res.stdout)
    assert report["n_particles"] == 139
    assert len(report["optics_groups"]) == 6
    assert report["pixel_sizes_A"] == [1.24, 1.25]
    lo, hi = report["defocus_range_um"]
    assert 0.2 < lo < hi < 2.0
    # Its stacks are not shipped with the fixture: info must say so and fail.
    assert res.exit_code == 1
    assert any("not found" in p for p in report["problems"])


def test_clean_file_passes(shared_data):
    res = _run(shared_data / "formats/mixed/empiar_10076_7.star")
    assert res.exit_code == 0, res.output
    assert "particles      7" in res.stdout
    assert "box            320 px" in res.stdout
    assert "no problems found" in res.stdout


def test_bare_stack(shared_data):
    res = _run(shared_data / "formats/relion/rln_proj_65.mrcs")
    assert res.exit_code == 0 and "MRC stack" in res.stdout


@pytest.fixture
def dataset(tmp_path):
    make_stack(tmp_path / "a.mrcs", 6, box=16)
    names = [f"{i + 1}@a.mrcs" for i in range(6)]
    return tmp_path, names


def _problems(res):
    assert res.exit_code == 1, res.output
    return res.stdout


def test_names_every_problem_at_once(dataset):
    tmp, names = dataset
    with mrcfile.open(tmp / "a.mrcs", "r+") as m:
        m.data[1, 0, 0] = np.inf
        m.data[4] = 0
    make_stack(tmp / "big.mrcs", 1, box=24)
    star = make_star(tmp / "p.star", names + ["9@a.mrcs", "1@missing.mrcs"], box=16)
    out = _problems(_run(star))
    assert "row 7: image 9@a.mrcs is beyond the end of the stack" in out
    assert "row 8: image stack missing.mrcs not found" in out
    # Pixels are scanned only once the stacks themselves are sound.
    star = make_star(tmp / "q.star", names, box=16)
    out = _problems(_run(star))
    assert "row 2: NaN or infinite pixels" in out
    assert "row 5: a constant image" in out
    assert _run(star, "--no-scan").exit_code == 0


def test_wrong_box_in_optics(dataset):
    tmp, names = dataset
    out = _problems(_run(make_star(tmp / "p.star", names, box=32)))
    assert "declares rlnImageSize 32 but the images are 16 px" in out


def test_mixed_boxes(dataset):
    tmp, names = dataset
    make_stack(tmp / "b.mrcs", 2, box=24)
    out = _problems(_run(make_star(tmp / "p.star", names + ["1@b.mrcs"])))
    assert "mixed box sizes" in out


def test_truncated_stack(dataset):
    tmp, names = dataset
    raw = (tmp / "a.mrcs").read_bytes()
    (tmp / "a.mrcs").write_bytes(raw[:-100])
    out = _problems(_run(make_star(tmp / "p.star", names)))
    assert "truncated stack" in out


def test_missing_optics_values(dataset):
    tmp, names = dataset
    lines = ["data_particles", "loop_", "_rlnImageName #1", "_rlnDefocusU #2", "_rlnDefocusV #3"]
    lines += [f"{n} 10000 10000" for n in names]
    (tmp / "p.star").write_text("\n".join(lines) + "\n")
    out = _problems(_run(tmp / "p.star"))
    for what in ("voltage (rlnVoltage)", "cs (rlnSphericalAberration)", "pixel_size (rlnImagePixelSize)"):
        assert f"missing optics value {what}" in out


@pytest.mark.parametrize(
    "content, message",
    [(None, "STAR file not found"), ("", "STAR file is empty"), ("data_particles\nloop_\n_rlnImageName #1\n", "has no rows")],
)
def test_unreadable_star(tmp_path, content, message):
    path = tmp_path / "x.star"
    if content is not None:
        path.write_text(content)
    res = _run(path)
    assert res.exit_code == 1
    assert message in res.stdout
    assert f"relion-canon info: error: {path}" in res.stderr
