"""`inspect_file`: every problem of a particle set, each named with its file and STAR row; a sound set has none.

(`tests/cli/test_info_cmd.py` checks what `relion-canon info` prints; this checks the module's report itself.)
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from relion_canon.io.validate import MAX_ROWS_LISTED, inspect_file
from tests.io.helpers import make_stack, make_star

N = 6
BOX = 16


@pytest.fixture
def stack(tmp_path):
    make_stack(tmp_path / "a.mrcs", N, box=BOX)
    return tmp_path, [f"{i + 1}@a.mrcs" for i in range(N)]


def _one_problem_with(report, text: str) -> str:
    # Matched after the file's name: the test's own folder name may contain the same words.
    matches = [p for p in report.problems if text in p.split(": ", 1)[-1]]
    assert len(matches) == 1, report.problems
    return matches[0]


def test_clean_set_has_no_problem_and_a_summary(stack):
    tmp, names = stack
    report = inspect_file(make_star(tmp / "p.star", names, box=BOX))
    assert report.problems == [] and report.ok
    assert (report.n_particles, report.box, report.pixel_sizes) == (N, BOX, [2.0])
    assert report.optics_groups == ["opticsGroup1"]
    assert report.stacks == ["a.mrcs"]
    # make_star writes DefocusV from 9,900 Å and DefocusU up to 10,500 Å.
    assert report.defocus_range_um == pytest.approx((0.99, 1.05))
    assert report.to_dict()["ok"] is True and "no problems found" in report.format()


def test_missing_stack_names_file_and_first_row(stack):
    tmp, names = stack
    star = make_star(tmp / "p.star", names + ["1@missing.mrcs", "2@missing.mrcs"], box=BOX)
    report = inspect_file(star)
    assert not report.ok
    assert _one_problem_with(report, "missing.mrcs") == f"{star}, row {N + 1}: image stack missing.mrcs not found"


def test_index_beyond_the_stack_names_file_and_row(stack):
    tmp, names = stack
    star = make_star(tmp / "p.star", names[:2] + [f"{N + 3}@a.mrcs"] + names[2:] + [f"{N + 1}@a.mrcs"], box=BOX)
    problem = _one_problem_with(inspect_file(star), "beyond the end")
    assert problem.startswith(f"{star}, row 3: image {N + 3}@a.mrcs is beyond the end of the stack ({N} images)")
    assert "(and 1 more rows)" in problem


def test_box_differs_from_rlnImageSize(stack):
    tmp, names = stack
    star = make_star(tmp / "p.star", names, box=BOX + 8)
    problem = _one_problem_with(inspect_file(star), "rlnImageSize")
    assert problem == (f"{star}: optics group opticsGroup1 declares rlnImageSize {BOX + 8} "
                       f"but the images are {BOX} px")


def test_missing_voltage_cs_and_pixel_size(stack):
    tmp, names = stack
    lines = ["data_particles", "loop_", "_rlnImageName #1", "_rlnDefocusU #2", "_rlnDefocusV #3"]
    lines += [f"{n} 10000 10000" for n in names]
    star = tmp / "p.star"
    star.write_text("\n".join(lines) + "\n")
    report = inspect_file(star)
    for name, label in (("voltage", "rlnVoltage"), ("cs", "rlnSphericalAberration"),
                        ("pixel_size", "rlnImagePixelSize")):
        assert (f"{star}: missing optics value {name} ({label}) for every particle") in report.problems
    assert any("rlnAmplitudeContrast" in note for note in report.notes)


def test_optics_value_missing_for_some_rows_names_the_first(stack):
    # A RELION 3.0-style STAR with the voltage per particle, invalid on rows 2 and 4.
    tmp, names = stack
    lines = ["data_particles", "loop_", "_rlnImageName #1", "_rlnDefocusU #2", "_rlnDefocusV #3", "_rlnVoltage #4",
             "_rlnSphericalAberration #5", "_rlnDetectorPixelSize #6", "_rlnMagnification #7"]
    voltage = ["300", "nan", "300", "nan", "300", "300"]
    lines += [f"{n} 10000 10000 {v} 2.7 2.0 10000" for n, v in zip(names, voltage)]
    star = tmp / "p.star"
    star.write_text("\n".join(lines) + "\n")
    problem = _one_problem_with(inspect_file(star), "voltage")
    assert problem == f"{star}, row 2: missing or invalid optics value voltage (rlnVoltage) (and 1 more rows)"


def test_nan_and_constant_images_name_their_rows(stack):
    tmp, names = stack
    with mrcfile.open(tmp / "a.mrcs", "r+") as m:
        m.data[1, 3, 4] = np.nan
        m.data[3, 0, 0] = -np.inf
        m.data[4] = 0.0
    star = make_star(tmp / "p.star", names, box=BOX)
    report = inspect_file(star)
    assert _one_problem_with(report, "NaN") == f"{star}, row 2: NaN or infinite pixels (rows 2, 4)"
    assert _one_problem_with(report, "constant") == f"{star}, row 5: a constant image (no signal, e.g. all zero) (rows 5)"
    assert len(report.problems) == 2
    # Without the pixel scan neither is seen.
    assert inspect_file(star, scan_pixels=False).ok


def test_many_bad_rows_are_listed_up_to_the_limit(tmp_path):
    n = MAX_ROWS_LISTED + 3
    data = make_stack(tmp_path / "a.mrcs", n, box=BOX)
    data[:] = 1.0
    with mrcfile.open(tmp_path / "a.mrcs", "r+") as m:
        m.data[:] = data
    star = make_star(tmp_path / "p.star", [f"{i + 1}@a.mrcs" for i in range(n)], box=BOX)
    listed = ", ".join(str(r) for r in range(1, MAX_ROWS_LISTED + 1))
    assert _one_problem_with(inspect_file(star), "constant").endswith(f"(rows {listed} and 3 more)")


def test_non_numeric_defocus_names_its_row(stack):
    tmp, names = stack
    star = make_star(tmp / "p.star", names, box=BOX)
    text = star.read_text().replace(f"{names[2]} 10200.0", f"{names[2]} nan")
    star.write_text(text)
    assert _one_problem_with(inspect_file(star), "is not a number") == f"{star}, row 3, column rlnDefocusU: nan is not a number"


def test_text_in_any_number_column_names_row_and_column(stack):
    """A column the job does not read by name, but whose other values are numbers: text there is a broken row."""
    tmp, names = stack
    star = make_star(tmp / "p.star", names, box=BOX)
    lines = star.read_text().splitlines()
    head = lines.index("_rlnOpticsGroup #5", lines.index("data_particles"))
    lines.insert(head + 1, "_rlnCoordinateX #6")
    rows = [i for i, line in enumerate(lines) if "@a.mrcs" in line]
    for k, i in enumerate(rows):
        lines[i] += " x12" if k == 4 else f" {100 + k}.5"
    star.write_text("\n".join(lines) + "\n")
    assert _one_problem_with(inspect_file(star), "is not a number") == \
        f"{star}, row 5, column rlnCoordinateX: 'x12' is not a number"


def test_every_problem_is_reported_at_once(stack):
    tmp, names = stack
    star = make_star(tmp / "p.star", names + ["1@missing.mrcs", f"{N + 1}@a.mrcs"], box=BOX + 8)
    report = inspect_file(star)
    for text in ("missing.mrcs not found", "beyond the end", "declares rlnImageSize"):
        _one_problem_with(report, text)


def test_bare_stack(stack):
    tmp, _ = stack
    report = inspect_file(tmp / "a.mrcs")
    assert report.ok and report.kind == "MRC stack" and (report.n_particles, report.box) == (N, BOX)
    with mrcfile.open(tmp / "a.mrcs", "r+") as m:
        m.data[2] = 7.0
    assert _one_problem_with(inspect_file(tmp / "a.mrcs"), "constant").startswith(f"{tmp / 'a.mrcs'}, row 3:")
