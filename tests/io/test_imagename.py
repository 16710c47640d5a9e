from __future__ import annotations

import pytest

from relion_canon.errors import InputError
from relion_canon.io.imagename import format_image_name, parse_image_name, resolve_path


@pytest.mark.parametrize(
    "name, index, path",
    [
        ("000001@Extract/job1/a.mrcs", 0, "Extract/job1/a.mrcs"),
        ("1@a.mrcs", 0, "a.mrcs"),
        ("12@a.mrcs", 11, "a.mrcs"),
        ("000123@/abs/path/b.mrcs", 122, "/abs/path/b.mrcs"),
        ("single.mrc", 0, "single.mrc"),
    ],
)
def test_parse(name, index, path):
    ref = parse_image_name(name)
    assert (ref.index, ref.path) == (index, path)


def test_format_round_trip():
    assert format_image_name(0, "s.mrcs") == "000001@s.mrcs"
    assert parse_image_name(format_image_name(41, "s.mrcs")) == (41, "s.mrcs")


@pytest.mark.parametrize("bad, why", [("0@a.mrcs", "start at 1"), ("x@a.mrcs", "not an image number"), ("3@", "no file"), ("", "empty")])
def test_bad_names_name_file_and_row(bad, why):
    with pytest.raises(InputError, match=rf"p\.star, row 7: .*{why}"):
        parse_image_name(bad, "p.star", 7)


def test_resolution_order(tmp_path, monkeypatch):
    project, star_dir, data = tmp_path / "project", tmp_path / "stars", tmp_path / "data"
    for d in (project, star_dir, data):
        (d / "Extract").mkdir(parents=True)
    monkeypatch.chdir(project)
    # Only beside the STAR file: found there.
    (star_dir / "Extract" / "a.mrcs").write_bytes(b"x")
    assert resolve_path("Extract/a.mrcs", star_dir) == star_dir / "Extract" / "a.mrcs"
    # In the project directory too: the project wins, as in RELION.
    (project / "Extract" / "a.mrcs").write_bytes(b"x")
    assert resolve_path("Extract/a.mrcs", star_dir).resolve() == (project / "Extract" / "a.mrcs").resolve()
    # Only in a data dir, by basename.
    (data / "b.mrcs").write_bytes(b"x")
    assert resolve_path("Other/b.mrcs", star_dir) is None
    assert resolve_path("Other/b.mrcs", star_dir, data_dir=data) == data / "b.mrcs"
