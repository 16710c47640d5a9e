"""Fuzzing MRC stack reading: stacks written by mrcfile read back exactly; corrupted ones read or raise InputError.

A corrupted header (mode, nx/ny/nz, extended-header size, space group, byte order), a truncated file or garbage
must end in an :class:`InputError` naming the stack, from ``ParticleSource.from_stack`` / ``from_star`` or
``read``: never another exception, a hang, or a huge allocation driven by a corrupt size field.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from relion_canon.errors import InputError
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star
from tests.io.helpers import make_star
from tests.io.test_fuzz_star import FUZZ, no_hang

# Header fields that decide where the images are and how they are laid out (byte offsets in the header).
SHAPE_FIELDS = {"nx": 0, "ny": 4, "nz": 8, "mode": 12, "mz": 36, "ispg": 88, "nsymbt": 92}
# Bytes no reader should depend on: start/sampling, cell, axis order, statistics, extra, origin, MAP ID, rms, labels.
COSMETIC = [(16, 36), (40, 88), (96, 212), (216, 1024)]
INT32 = [0, 1, -1, 2, 3, 4, 6, 12, 16, 101, 401, 630, 1024, 4096, 1 << 20, 2**31 - 1, -(2**31), -1024]
DTYPES = ["<f4", ">f4", "<i2", ">i2", "<u2", "<f2", "i1"]
PEAK_BYTES = 64 << 20  # far above what these tiny stacks need, far below a 2 GiB corrupt-size allocation


@st.composite
def stacks(draw) -> dict:
    return {
        "n": draw(st.integers(1, 4)),
        "box": draw(st.sampled_from([8, 10])),
        "dtype": draw(st.sampled_from(DTYPES)),
        "ext": draw(st.sampled_from([0, 0, 8, 100, 1024])),  # extended header bytes
        "image_stack": draw(st.booleans()),  # ispg 0 (stack) or 1 (a volume: RELION reads its sections alike)
        "seed": draw(st.integers(0, 2**16)),
    }


def write(path: Path, spec: dict) -> np.ndarray:
    """The stack, written by mrcfile (not by the code under test); its images as float32."""
    rng = np.random.default_rng(spec["seed"])
    dtype = np.dtype(spec["dtype"])
    shape = (spec["n"], spec["box"], spec["box"])
    if dtype.kind == "f":
        data = rng.normal(size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dtype)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        if spec["image_stack"]:
            m.set_image_stack()
        if spec["ext"]:
            m.set_extended_header(np.zeros(spec["ext"], dtype="V1"))
    return data.astype(np.float32)


def read_all(path: Path, star: Path | None) -> np.ndarray:
    """Every image, through a STAR file naming them (``N@stack``) or straight from the stack."""
    source = ParticleSource.from_star(read_star(star)) if star else ParticleSource.from_stack(path)
    with source:
        images = source.read(np.arange(len(source)))
        if len(source):  # one image alone reads the same as within a batch
            np.testing.assert_array_equal(source[len(source) - 1], images[-1])
    return images


def reads_or_refuses(path: Path, star: Path | None, track_memory: bool = True) -> np.ndarray | None:
    """The images, or None after an InputError that names the file; anything else fails the test."""
    if track_memory:  # tracing slows reading down several times: only where sizes come from corrupt headers
        tracemalloc.start()
    try:
        with no_hang():
            images = read_all(path, star)
    except InputError as exc:
        # The stack, or for bad pixels (NaN/inf from a flipped byte) the STAR file and row naming the image.
        assert str(path) in str(exc) or (star and str(exc).startswith(f"{star}, row ")), f"error names no file: {exc}"
        assert "\n" not in str(exc)
        return None
    finally:
        if track_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < PEAK_BYTES, f"{peak / 2**20:.0f} MiB allocated for a {path.stat().st_size}-byte file"
    assert images.dtype == np.float32 and images.ndim == 3 and images.shape[1] == images.shape[2]
    return images


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_mrc")


def _star_for(root: Path, spec: dict) -> Path:
    names = [f"{i + 1}@s.mrcs" for i in range(spec["n"])]
    return make_star(root / "s.star", names, box=spec["box"])


@settings(FUZZ, max_examples=30)
@given(spec=stacks(), via_star=st.booleans())
def test_valid_stacks_read_back_exactly(workdir, spec, via_star):
    path = workdir / "s.mrcs"
    expected = write(path, spec)
    got = reads_or_refuses(path, _star_for(workdir, spec) if via_star else None, track_memory=False)
    assert got is not None, "a valid stack was refused"
    np.testing.assert_array_equal(got, expected)


def _set_int32(data: bytearray, offset: int, value: int) -> None:
    # In the byte order the file declares, so that the new value is what a reader sees.
    order = ">" if data[212] == 0x11 else "<"
    struct.pack_into(f"{order}i", data, offset, value)


field_op = st.tuples(
    st.just("field"), st.sampled_from(sorted(SHAPE_FIELDS)), st.sampled_from(INT32) | st.integers(-(2**31), 2**31 - 1)
)
MACHINE_STAMPS = [b"\x44\x44\x00\x00", b"\x44\x41\x00\x00", b"\x11\x11\x00\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"]
mutation = st.one_of(
    field_op,
    field_op,  # header fields are the point: drawn twice as often as the rest
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.integers(0, 1023), st.integers(0, 255)),
    st.tuples(st.just("flip_anywhere"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("machst"), st.sampled_from(MACHINE_STAMPS)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("replace"), st.binary(max_size=2048)),
)  # fmt: skip


def mutate(data: bytes, op: tuple) -> bytes:
    kind = op[0]
    b = bytearray(data)
    if kind == "field" and len(b) >= 1024:
        _set_int32(b, SHAPE_FIELDS[op[1]], op[2])
    elif kind == "truncate":
        del b[op[1] % (len(b) + 1) :]
    elif kind in ("flip", "flip_anywhere") and b:
        b[op[1] % len(b)] = op[2]
    elif kind == "machst" and len(b) >= 1024:
        b[212:216] = op[1]
    elif kind == "append":
        b += op[1]
    elif kind == "replace":
        return op[1]
    return bytes(b)


@settings(FUZZ, max_examples=100)
@given(spec=stacks(), ops=st.lists(mutation, min_size=1, max_size=3), via_star=st.booleans())
def test_corrupted_stacks_read_or_raise_input_error(workdir, spec, ops, via_star):
    path = workdir / "s.mrcs"
    write(path, spec)
    data = path.read_bytes()
    for op in ops:
        data = mutate(data, op)
    path.write_bytes(data)
    got = reads_or_refuses(path, _star_for(workdir, spec) if via_star else None)
    event("read" if got is not None else "refused")


@settings(FUZZ, max_examples=25)
@given(spec=stacks(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_cosmetic_header_bytes_do_not_change_the_images(workdir, spec, flips):
    path = workdir / "s.mrcs"
    expected = write(path, spec)
    b = bytearray(path.read_bytes())
    cosmetic = [i for lo, hi in COSMETIC for i in range(lo, hi)]
    for pos, value in flips:
        b[cosmetic[pos % len(cosmetic)]] = value
    path.write_bytes(bytes(b))
    np.testing.assert_array_equal(reads_or_refuses(path, _star_for(workdir, spec), track_memory=False), expected)


# --- regressions found by the fuzzing above -----------------------------------------------------------------------


def _stack(tmp_path: Path) -> tuple[Path, bytearray]:
    path = tmp_path / "s.mrcs"
    write(path, {"n": 3, "box": 8, "dtype": "<f4", "ext": 0, "image_stack": True, "seed": 0})
    return path, bytearray(path.read_bytes())


@pytest.mark.parametrize("value", [2**31 - 1, 1 << 28, -4])
def test_corrupt_extended_header_size_is_refused_without_allocating_it(tmp_path, value):
    # mrcfile's header_only open allocated nsymbt bytes (2 GiB, 6 s) before finding the file too short.
    path, b = _stack(tmp_path)
    _set_int32(b, SHAPE_FIELDS["nsymbt"], value)
    path.write_bytes(bytes(b))
    assert reads_or_refuses(path, None) is None  # refused, within the allocation bound it asserts
    with pytest.raises(InputError, match=rf"s\.mrcs: corrupt MRC header: extended header of {value} bytes"):
        read_all(path, None)


@pytest.mark.parametrize("field, value", [("nx", -8), ("ny", -(2**31)), ("nz", -1), ("ny", 0)])
def test_negative_or_zero_dimensions_are_refused(tmp_path, field, value):
    # A negative size made the size check pass and mrcfile return no data (AttributeError on None).
    path, b = _stack(tmp_path)
    _set_int32(b, SHAPE_FIELDS[field], value)
    path.write_bytes(bytes(b))
    with pytest.raises(InputError, match=r"s\.mrcs: corrupt MRC header: dimensions"):
        read_all(path, None)


def test_volume_stack_space_group_is_refused(tmp_path):
    # ispg 401 makes mrcfile return a 4D array (a stack of volumes), which is no particle stack.
    path, b = _stack(tmp_path)
    _set_int32(b, SHAPE_FIELDS["ispg"], 401)
    _set_int32(b, SHAPE_FIELDS["mz"], 1)
    path.write_bytes(bytes(b))
    with pytest.raises(InputError, match=r"s\.mrcs: not a stack of 2D images \(data shape \(3, 1, 8, 8\), space group 401\)"):
        read_all(path, None)


def test_stack_truncated_after_opening_names_the_file(tmp_path):
    path, b = _stack(tmp_path)
    source = ParticleSource.from_stack(path)
    path.write_bytes(bytes(b[: 1024 + 8 * 8 * 4]))  # another process cut it short while we were reading
    with source, pytest.raises(InputError, match=r"s\.mrcs: unexpected end of file"):
        source.read([2])
