"""What ``read_star`` assumes about ``starfile.read`` (the public reader), pinned against the installed starfile.

``read_star`` clears ``linecache`` around each read, refuses a lone CR, and explains a file with no blocks by its
bytes not being UTF-8, all because of how starfile reads lines. If one of these tests fails after a starfile
upgrade, the workaround in ``relion_canon/io/star.py`` that it names is to be revisited (it may have become
unnecessary, or no longer enough), and the upper bound on starfile in setup.cfg moved only then.
"""

from __future__ import annotations

import linecache

import pandas as pd
import pytest
import starfile

_GOOD = "data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@a.mrcs 10000.0\n2@a.mrcs 20000.0\n"


@pytest.fixture(autouse=True)
def _fresh_linecache():
    linecache.clearcache()
    yield
    linecache.clearcache()


def test_starfile_reads_the_lines_linecache_holds(tmp_path):
    # The reason clearing linecache makes starfile read a file afresh (read_star's linecache.clearcache()).
    path = tmp_path / "p.star"
    path.write_text(_GOOD)
    other = _GOOD.replace("10000.0", "55555.0").splitlines(keepends=True)
    linecache.cache[str(path)] = (path.stat().st_size, None, other, str(path))
    table = starfile.read(path, always_dict=True)["particles"]
    assert table["rlnDefocusU"].tolist() == [55555.0, 20000.0]


def test_starfile_leaves_a_failed_parse_in_linecache(tmp_path):
    # Why read_star clears linecache before reading: a failed read's lines stay cached for that path.
    path = tmp_path / "p.star"
    path.write_text(_GOOD.replace("_rlnImageName #1\n", "_rlnImageName #1\n_rlnImageName #1\n"))
    with pytest.raises(Exception):
        starfile.read(path, always_dict=True)
    assert str(path) in linecache.cache
    path.write_text(_GOOD)
    with pytest.raises(Exception):  # still the broken text, though the file is fixed
        starfile.read(path, always_dict=True)
    linecache.clearcache()
    assert len(starfile.read(path, always_dict=True)["particles"]) == 2


def test_starfile_splits_lines_at_a_lone_carriage_return(tmp_path):
    # Why read_star refuses a lone CR: starfile counts lines by LF but reads them split at CR too, so a row is
    # split in two and the last row silently dropped.
    path = tmp_path / "p.star"
    path.write_bytes(_GOOD.replace("1@a.mrcs 10000.0", "1@a.mrcs 100\r00.0").encode())
    table = starfile.read(path, always_dict=True)["particles"]
    assert "2@a.mrcs" not in table["rlnImageName"].tolist()
    path.write_bytes(_GOOD.replace("\n", "\r\n").encode())  # CRLF is read as it should be
    pd.testing.assert_frame_equal(
        starfile.read(path, always_dict=True)["particles"],
        pd.DataFrame({"rlnImageName": ["1@a.mrcs", "2@a.mrcs"], "rlnDefocusU": [10000.0, 20000.0]}),
    )


def test_starfile_finds_no_blocks_in_text_that_is_not_utf8(tmp_path):
    # Why read_star, finding no blocks, names the first byte that is not UTF-8.
    path = tmp_path / "p.star"
    path.write_bytes(_GOOD.replace("a.mrcs", "\xe9.mrcs").encode("latin-1"))
    assert starfile.read(path, always_dict=True) == {}
