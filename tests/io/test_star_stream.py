"""Reading and writing a particle STAR file a slice of rows at a time: the same tables, the same bytes, and
errors that name the whole file's row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_canon.errors import InputError
from relion_canon.io import read_star, write_star
from relion_canon.io.star_stream import count_particles, iter_star_chunks, star_chunk_writer, whole_file_rows

from .helpers import make_star


def _names(n: int) -> list[str]:
    return [f"{i + 1:06d}@Extract/job007/particles.mrcs" for i in range(n)]


def _chunks(path: Path, scratch: Path, rows: int) -> list[tuple[int, object]]:
    return list(iter_star_chunks(path, scratch, rows=rows))


@pytest.mark.parametrize("rows", [1, 7, 25, 1000])
def test_slices_put_together_are_the_whole_table(tmp_path, rows):
    star = make_star(tmp_path / "in.star", _names(25))
    whole = read_star(star)
    chunks = _chunks(star, tmp_path, rows)
    assert [offset for offset, _ in chunks] == (list(range(0, 25, rows)) if rows < 25 else [0])
    joined = pd.concat([c.particles for _, c in chunks], ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole.particles)
    for _, c in chunks:
        assert c.path == star and c.version == whole.version and c.particles_block == whole.particles_block
        pd.testing.assert_frame_equal(c.optics_table, whole.optics_table)
    assert not list(tmp_path.glob(".*slice*"))  # the scratch file is gone
    assert count_particles(star) == 25


def test_written_slices_are_byte_identical_to_a_whole_write(tmp_path):
    star = make_star(tmp_path / "in.star", _names(23))
    whole = read_star(star)
    extra = np.linspace(-180, 179, 23)
    write_star(whole.with_columns({"rlnAnglePsi": extra}), tmp_path / "whole.star")
    with star_chunk_writer(tmp_path / "sliced.star") as write:
        for offset, chunk in iter_star_chunks(star, tmp_path, rows=5):
            write(chunk.with_columns({"rlnAnglePsi": extra[offset : offset + len(chunk)]}))
    assert (tmp_path / "sliced.star").read_bytes() == (tmp_path / "whole.star").read_bytes()


def test_blocks_after_the_particles_and_comments_in_the_loop_survive(tmp_path):
    path = make_star(tmp_path / "in.star", _names(9))
    text = path.read_text().splitlines()
    text.insert(-4, "# a comment inside the loop")
    text.insert(-2, "")
    text += ["", "data_general", "", "_rlnNrClasses 3", ""]
    path.write_text("\n".join(text) + "\n")
    whole = read_star(path)
    assert list(whole.blocks) == ["optics", "particles", "general"] and len(whole) == 9
    chunks = _chunks(path, tmp_path, 2)
    assert sum(len(c) for _, c in chunks) == 9
    write_star(whole, tmp_path / "whole.star")
    with star_chunk_writer(tmp_path / "sliced.star") as write:
        for _, chunk in chunks:
            write(chunk)
    assert (tmp_path / "sliced.star").read_bytes() == (tmp_path / "whole.star").read_bytes()


def test_a_bad_row_in_a_later_slice_is_named_by_its_row_in_the_file(tmp_path):
    path = make_star(tmp_path / "in.star", _names(30))
    lines = path.read_text().splitlines()
    # Row 23 names optics group 7, which the optics table does not have.
    row23 = next(i for i, line in enumerate(lines) if line.startswith("000023@"))
    lines[row23] = lines[row23][:-1] + "7"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as whole:
        read_star(path)
    with pytest.raises(InputError) as sliced:
        _chunks(path, tmp_path, 10)
    assert whole.value.row == sliced.value.row == 23
    assert str(sliced.value) == str(whole.value)
    assert not list(tmp_path.glob(".*slice*"))


def test_errors_while_working_on_a_slice_name_the_whole_file_row(tmp_path):
    with pytest.raises(InputError, match=r"in\.star, row 14: bad pixel"):
        with whole_file_rows(tmp_path / "in.star", 10):
            raise InputError("bad pixel", tmp_path / "in.star", 4)
    with pytest.raises(InputError, match=r"other\.mrcs, row 4"):  # another file's rows are left alone
        with whole_file_rows(tmp_path / "in.star", 10):
            raise InputError("bad pixel", tmp_path / "other.mrcs", 4)


@pytest.mark.parametrize("content", [None, "", "data_particles\nloop_\n_rlnImageName #1\n"])
def test_bad_files_give_read_stars_error(tmp_path, content):
    path = tmp_path / "bad.star"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as whole:
        read_star(path)
    with pytest.raises(InputError) as sliced:
        _chunks(path, tmp_path, 1)
    assert str(sliced.value) == str(whole.value)


def test_a_failed_write_leaves_no_file(tmp_path):
    star = make_star(tmp_path / "in.star", _names(6))
    with pytest.raises(RuntimeError):
        with star_chunk_writer(tmp_path / "out.star") as write:
            for _, chunk in iter_star_chunks(star, tmp_path, rows=2):
                write(chunk)
                raise RuntimeError("stopped")
    assert not (tmp_path / "out.star").exists() and not list(tmp_path.glob(".out.star*"))
    with pytest.raises(ValueError, match="no particles"):
        with star_chunk_writer(tmp_path / "out.star"):
            pass
    assert not (tmp_path / "out.star").exists()


def test_real_relion_files_slice_like_they_read(shared_data, tmp_path):
    for name in ("relion/relion31.6opticsgroups.star", "relion/relion5.star", "mixed/empiar_10076_7.star",
                 "relion/FinalRefinement-OriginalParticles-PfCRT.star"):
        path = shared_data / "formats" / name
        whole = read_star(path)
        joined = pd.concat([c.particles for _, c in _chunks(path, tmp_path, 3)], ignore_index=True)
        pd.testing.assert_frame_equal(joined, whole.particles, check_dtype=False)


@pytest.mark.parametrize("damage", [b"\r", b"\xff"])
def test_a_stray_byte_late_in_the_file_is_reported_as_for_the_whole_file(tmp_path, damage):
    path = make_star(tmp_path / "in.star", _names(30))
    data = path.read_bytes()
    at = data.index(b"000027@") + 3
    path.write_bytes(data[:at] + damage + data[at:])
    with pytest.raises(InputError) as whole:
        read_star(path)
    with pytest.raises(InputError) as sliced:
        _chunks(path, tmp_path, 4)
    assert str(sliced.value) == str(whole.value)
