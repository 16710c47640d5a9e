"""Fuzzing ``N@path`` image names: RELION's spelling round-trips; any other text parses or raises InputError.

Names come straight from STAR files, so they can be anything a corrupted or hand-edited file holds: huge numbers,
other scripts' digits, paths too long for the file system, NUL bytes. None of it may crash the tool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relion_canon.errors import InputError
from relion_canon.io.imagename import MAX_IMAGE_NUMBER, format_image_name, parse_image_name, resolve_path
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star
from tests.io.helpers import make_stack, make_star
from tests.io.test_fuzz_star import FUZZ, no_hang

# Paths as STAR files carry them: no whitespace (it separates values), not starting with a digit run and '@'.
paths = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=60
).filter(lambda p: p.strip() == p)
numbers = st.text(st.sampled_from("0123456789"), min_size=0, max_size=30)


@settings(FUZZ, max_examples=200)
@given(index=st.integers(0, MAX_IMAGE_NUMBER - 1), path=paths, width=st.integers(1, 12))
def test_relion_spelling_round_trips(index, path, width):
    ref = parse_image_name(format_image_name(index, path, width))
    assert ref == (index, path)


@settings(FUZZ, max_examples=300)
@given(name=st.one_of(st.text(max_size=80), st.builds(lambda n, p: f"{n}@{p}", numbers, st.text(max_size=40))))
@example(name="99999999999999999999@a.mrcs")  # past int64: OverflowError when stored in the index array
@example(name="1_0@a.mrcs")  # int() reads 10
@example(name="١@a.mrcs")  # Arabic-Indic digit one: int() reads 1
@example(name="2147483648@a.mrcs")
@example(name="0000000000000000000000001@a.mrcs")
def test_any_text_parses_or_raises_input_error(name):
    try:
        ref = parse_image_name(name, "p.star", 4)
    except InputError as exc:
        assert str(exc).startswith("p.star, row 4: "), str(exc)
        assert len(str(exc)) < 300 and "\n" not in str(exc)
        return
    assert 0 <= ref.index < MAX_IMAGE_NUMBER
    assert ref.path.strip()  # never an empty or blank file name
    if "@" in name:
        number = name.strip().partition("@")[0]
        assert number.isascii() and number.isdigit() and int(number) == ref.index + 1


@settings(FUZZ, max_examples=150)
@given(path=st.text(max_size=40) | st.builds(lambda k, s: s * k, st.integers(1, 400), st.sampled_from(["a", "a/", "../"])))
@example(path="a" * 300)  # a file name too long for the file system: ENAMETOOLONG escaped is_file()
@example(path="a/" * 3000)  # a path too long
@example(path="x\x00y")
def test_resolving_any_path_finds_a_file_or_nothing(tmp_path_factory, path):
    star_dir = tmp_path_factory.getbasetemp()
    found = resolve_path(path, star_dir, star_dir, star_dir)
    assert found is None or found.is_file()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("fuzz_names")
    return root, make_stack(root / "s.mrcs", n=3, box=8)


# Image names a STAR file can hold (no whitespace): valid, out of range, malformed, far-fetched paths.
star_names = st.one_of(
    st.builds(lambda n, w: f"{n:0{w}d}@s.mrcs", st.integers(1, 3), st.integers(1, 8)),
    st.builds(lambda n: f"{n}@s.mrcs", numbers),
    st.builds(
        lambda n, p: f"{n}@{p}", st.integers(0, 10**25), st.sampled_from(["s.mrcs", "../s.mrcs", "/", ".", "a" * 300, "~/s.mrcs"])
    ),
    st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=30).filter(
        lambda t: not t.startswith(("#", "_", "data_", "loop_", "'", '"'))
    ),
)  # fmt: skip


@settings(FUZZ, max_examples=60)
@given(names=st.lists(star_names, min_size=1, max_size=4))
def test_names_in_a_star_file_read_or_raise_input_error(workdir, names):
    root, images = workdir
    star_path = make_star(root / "p.star", names, box=8)
    try:
        with no_hang():
            star = read_star(star_path)
            with ParticleSource.from_star(star) as source:
                got = source.read(np.arange(len(source)))
    except InputError as exc:
        assert str(star_path) in str(exc) or str(root / "s.mrcs") in str(exc), str(exc)
        return
    # Read: every name was N@s.mrcs with N in range (or a path resolving to that stack by its basename).
    for row, name in enumerate(star.image_names):
        ref = parse_image_name(name)
        np.testing.assert_array_equal(got[row], images[ref.index])
