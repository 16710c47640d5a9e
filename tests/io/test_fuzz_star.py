"""Fuzzing the STAR reader: generated RELION 3.0 / 3.1 files read back exactly; mutated ones read or raise InputError.

"Read" means everything the tool does with a particle file before it touches a model: ``read_star``, optics
resolution, CTF parameters, origins, and the images the rows name (``ParticleSource``). Any exception other than
:class:`InputError` (KeyError, ValueError from pandas, TypeError, ...) is a crash, and an example running for
more than a few seconds is a hang; both fail the test. Hypothesis is derandomised and keeps no example database,
so every run tries the same files (CI is reproducible, and a failure shows the exact file).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relion_canon.errors import InputError
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star
from relion_canon.io.star_text import lone_carriage_return_line
from tests.io.helpers import make_stack

# Shared by the three fuzz modules: bounded, derandomised, no example database, no per-example deadline
# (shared CI machines stall at random; hangs are caught by ``no_hang`` instead).
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

STACKS = ("Stacks/a.mrcs", "Stacks/b.mrcs")
N_IMAGES = 4  # images per stack
BOX = 8


class Hung(Exception):
    """An example ran past its time limit (not an InputError, so it fails the test)."""


@contextlib.contextmanager
def no_hang(seconds: float = 10.0):
    """Raise :class:`Hung` in this thread if the block runs longer than ``seconds`` (Unix main thread only)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise Hung(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- generated files ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder with two small stacks that the generated STAR files name; the images by stack name."""
    root = tmp_path_factory.mktemp("fuzz_star")
    (root / "Stacks").mkdir()
    images = {name: make_stack(root / name, n=N_IMAGES, box=BOX, seed=i) for i, name in enumerate(STACKS)}
    return root, images


def _numbers(lo: float, hi: float, n: int):
    return st.lists(st.floats(lo, hi, allow_nan=False, allow_infinity=False), min_size=n, max_size=n)


@st.composite
def star_specs(draw) -> dict:
    """A particle file as RELION 3.0 (optics per particle, no version line) or 3.1 (data_optics) writes it."""
    generation = draw(st.sampled_from(["3.0", "3.1"]))
    n = draw(st.integers(1, 6))
    width = draw(st.integers(1, 6))  # zero padding of the image number
    refs = draw(st.lists(st.tuples(st.integers(1, N_IMAGES), st.sampled_from(STACKS)), min_size=n, max_size=n))
    columns: dict[str, list] = {
        "rlnImageName": [f"{i:0{width}d}@{s}" for i, s in refs],
        "rlnDefocusU": draw(_numbers(2000, 60000, n)),
        "rlnDefocusV": draw(_numbers(2000, 60000, n)),
        "rlnDefocusAngle": draw(_numbers(-180, 180, n)),
    }
    if draw(st.booleans()):
        columns["rlnAnglePsi"] = draw(_numbers(-180, 180, n))
    if draw(st.booleans()):
        mics = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
        columns["rlnMicrographName"] = [f"MotionCorr/job002/mic_{k}.mrc" for k in mics]
    shifts = draw(st.booleans())
    optics_rows: list[dict] = []
    pixel_size = np.empty(n)
    if generation == "3.1":
        groups = draw(st.integers(1, 3))
        for g in range(1, groups + 1):
            optics_rows.append({
                "rlnOpticsGroup": g, "rlnOpticsGroupName": f"opticsGroup{g}", "rlnAmplitudeContrast": 0.1,
                "rlnSphericalAberration": 2.7, "rlnVoltage": 300.0, "rlnImagePixelSize": 1.0 + 0.25 * g,
                "rlnImageSize": BOX, "rlnImageDimensionality": 2,
            })  # fmt: skip
        optics_rows = draw(st.permutations(optics_rows))  # RELION never sorts them; neither may we assume it
        member = draw(st.lists(st.integers(1, groups), min_size=n, max_size=n))
        columns["rlnOpticsGroup"] = member
        pixel_size[:] = [1.0 + 0.25 * g for g in member]
        if shifts:
            columns["rlnOriginXAngst"] = draw(_numbers(-20, 20, n))
            columns["rlnOriginYAngst"] = draw(_numbers(-20, 20, n))
    else:
        columns["rlnVoltage"] = [300.0] * n
        columns["rlnSphericalAberration"] = [2.7] * n
        columns["rlnAmplitudeContrast"] = [0.07] * n
        if draw(st.booleans()):
            columns["rlnDetectorPixelSize"] = [5.0] * n
            columns["rlnMagnification"] = draw(_numbers(10000, 60000, n))
            pixel_size[:] = np.asarray(columns["rlnDetectorPixelSize"]) * 1e4 / np.asarray(columns["rlnMagnification"])
        else:
            columns["rlnImagePixelSize"] = draw(_numbers(0.5, 5, n))
            pixel_size[:] = columns["rlnImagePixelSize"]
        if shifts:
            columns["rlnOriginX"] = draw(_numbers(-10, 10, n))
            columns["rlnOriginY"] = draw(_numbers(-10, 10, n))
    order = draw(st.permutations(list(columns)))
    return {
        "generation": generation,
        "columns": {k: columns[k] for k in order},
        "optics": optics_rows,
        "pixel_size": pixel_size,
        "separator": draw(st.sampled_from([" ", "\t", "   ", " \t "])),
        "block": "particles" if generation == "3.1" else draw(st.sampled_from(["", "images", "particles"])),
    }


def render(spec: dict) -> str:
    """The spec as STAR text, written the way RELION writes it (labels numbered, values by repr)."""
    sep = spec["separator"]

    def loop(name: str, columns: dict[str, list]) -> list[str]:
        lines = [f"data_{name}", "", "loop_"]
        lines += [f"_{label} #{i + 1}" for i, label in enumerate(columns)]
        rows = zip(*columns.values())
        lines += [sep.join(repr(v) if isinstance(v, float) else str(v) for v in row) for row in rows]
        return lines + [""]

    lines = ["", "# written by the relion_canon fuzz tests", ""]
    if spec["generation"] == "3.1":
        optics = {k: [row[k] for row in spec["optics"]] for k in spec["optics"][0]}
        lines += ["# version 30001", ""] + loop("optics", optics) + ["", "# version 30001", ""]
    lines += loop(spec["block"], spec["columns"])
    return "\n".join(lines) + "\n"


def exercise(path: Path) -> ParticleSource:
    """Everything the tool reads from a particle file before training or predicting; raises only InputError."""
    star = read_star(path)
    assert len(star.optics().group) == len(star.image_names) == len(star)
    with contextlib.suppress(InputError):  # a file may lack CTF values and still be fine for other jobs
        star.ctf_params()
    star.origins_angstrom()
    source = ParticleSource.from_star(star)
    source.read(np.arange(len(source)))
    source.close()
    return source


@settings(FUZZ, max_examples=40)
@given(spec=star_specs())
def test_generated_files_read_back_exactly(workdir, spec):
    root, images = workdir
    path = root / "generated.star"
    path.write_text(render(spec))
    with no_hang():
        star = read_star(path)
        cols = spec["columns"]
        n = len(cols["rlnImageName"])
        assert len(star) == n
        assert star.generation == spec["generation"]
        assert star.particles_block == spec["block"]
        assert star.image_names == cols["rlnImageName"]
        ctf = star.ctf_params()
        np.testing.assert_allclose(ctf.defocus_u, cols["rlnDefocusU"], rtol=1e-15)
        np.testing.assert_allclose(ctf.defocus_angle, cols["rlnDefocusAngle"], rtol=1e-15)
        optics = star.optics()
        assert not optics.missing
        np.testing.assert_allclose(optics.pixel_size, spec["pixel_size"], rtol=1e-15)
        np.testing.assert_allclose(optics.voltage, 300.0)
        if "rlnOpticsGroup" in cols:
            np.testing.assert_array_equal(optics.group, cols["rlnOpticsGroup"])
        if "rlnOriginXAngst" in cols:
            np.testing.assert_allclose(star.origins_angstrom()[:, 0], cols["rlnOriginXAngst"], rtol=1e-15)
        elif "rlnOriginX" in cols:
            expected = np.asarray(cols["rlnOriginY"]) * spec["pixel_size"]  # 3.0 files give pixels
            np.testing.assert_allclose(star.origins_angstrom()[:, 1], expected, rtol=1e-12)
        else:
            np.testing.assert_array_equal(star.origins_angstrom(), 0.0)
        with ParticleSource.from_star(star) as source:
            got = source.read(np.arange(n))
    for row, name in enumerate(cols["rlnImageName"]):
        number, _, stack = name.partition("@")
        np.testing.assert_array_equal(got[row], images[stack][int(number) - 1])


# --- mutated files ------------------------------------------------------------------------------------------------

# Values a corrupted or hand-edited file carries where a number or an image name belongs.
JUNK = [
    "abc", "nan", "-inf", "1e999", "<NA>", "'", '"', "1.2.3", "0x10", "@", "7@", "@Stacks/a.mrcs", "0@Stacks/a.mrcs",
    "99999999999999999999999@Stacks/a.mrcs", "5@Stacks/a.mrcs", "1@Stacks/missing.mrcs", "1@/", "1@../../../etc",
    "#", "_rlnDefocusU", "data_", "loop_", "1@" + "x" * 300, "é", "\x00", "1_0@Stacks/a.mrcs", "3.5",
]  # fmt: skip


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def apply(data: bytes, op: tuple) -> bytes:
    """One mutation of a file's bytes; positions are taken modulo the current size so every op applies."""
    kind = op[0]
    lines = _lines(data)
    if kind == "truncate":
        return data[: op[1] % (len(data) + 1)]
    if kind == "flip":
        if not data:
            return data
        b = bytearray(data)
        b[op[1] % len(b)] = op[2]
        return bytes(b)
    if kind == "delete_line":
        del lines[op[1] % len(lines)]
    elif kind == "duplicate_line":  # doubled labels, loop_ lines, data_ lines, rows
        i = op[1] % len(lines)
        lines.insert(i, lines[i])
    elif kind == "swap_lines":
        i, j = op[1] % len(lines), op[2] % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "junk_token":  # a non-number in a numeric column, a broken image name, ...
        i = op[1] % len(lines)
        tokens = lines[i].split()
        if tokens:
            tokens[op[2] % len(tokens)] = op[3].encode()
            lines[i] = b" ".join(tokens)
    elif kind == "drop_label":  # a column whose label line is missing
        labels = [k for k, line in enumerate(lines) if line.startswith(b"_")]
        if labels:
            del lines[labels[op[1] % len(labels)]]
    elif kind == "drop_column":  # label and values gone: a consistent file lacking that column
        labels = [k for k, line in enumerate(lines) if line.startswith(b"_rln")]
        if labels:
            k = labels[op[1] % len(labels)]
            # An earlier mutation may have left "#" without a number: then the first column.
            number = lines[k].split(b"#")[-1].strip() if b"#" in lines[k] else b""
            column = int(number) - 1 if number.isdigit() and int(number) > 0 else 0
            del lines[k]
            for r in range(k, len(lines)):
                tokens = lines[r].split()
                if lines[r].startswith((b"data_", b"_", b"loop_", b"#")) or not tokens:
                    if lines[r].startswith(b"data_"):
                        break
                    continue
                if column < len(tokens):
                    del tokens[column]
                lines[r] = b" ".join(tokens)
    elif kind == "insert":
        pos = op[1] % (len(data) + 1)
        return data[:pos] + op[2] + data[pos:]
    elif kind == "empty":
        return b""
    elif kind == "replace":  # binary garbage instead of a STAR file
        return op[1]
    elif kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    return b"\n".join(lines)


positions = st.integers(0, 10_000)
mutation = st.one_of(
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("flip"), positions, st.integers(0, 255)),
    st.tuples(st.just("delete_line"), positions),
    st.tuples(st.just("duplicate_line"), positions),
    st.tuples(st.just("swap_lines"), positions, positions),
    st.tuples(st.just("junk_token"), positions, positions, st.sampled_from(JUNK)),
    st.tuples(st.just("drop_label"), positions),
    st.tuples(st.just("drop_column"), positions),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("replace"), st.binary(max_size=300)),
    st.tuples(st.just("crlf")),
)


def write_mutated(path: Path, spec: dict, ops: list[tuple]) -> Path:
    data = render(spec).encode()
    for op in ops:
        data = apply(data, op)
    path.write_bytes(data)
    return path


def check_reads_or_refuses(path: Path, stacks: list[Path]) -> str:
    """Read the file like the tool does; only InputError may come out, naming the STAR file or a stack."""
    try:
        with no_hang():
            exercise(path)
    except InputError as exc:
        named = [str(path)] + [str(s) for s in stacks]
        assert any(name in str(exc) for name in named), f"error does not name the file: {exc}"
        assert "\n" not in str(exc), f"error is not one line: {exc!r}"
        return "refused"
    return "read"


@settings(FUZZ, max_examples=200)
@given(spec=star_specs(), ops=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_files_read_or_raise_input_error(workdir, spec, ops):
    root, _ = workdir
    # The same path every time, as a user re-running on a file they are fixing would.
    path = write_mutated(root / "mutated.star", spec, ops)
    event(check_reads_or_refuses(path, [root / s for s in STACKS]))


NUMERIC = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup", "rlnOriginXAngst", "rlnOriginX"]


@settings(FUZZ, max_examples=30)
@given(spec=star_specs(), pick=st.integers(0, 1000), junk=st.sampled_from(["abc", "1.2.3", "--", "x1", "<NA>", "nan"]))
def test_non_number_in_numeric_column_is_named_by_row(workdir, spec, pick, junk):
    root, _ = workdir
    cols = spec["columns"]
    present = [c for c in NUMERIC if c in cols]
    label = present[pick % len(present)]
    row = pick % len(cols[label])
    cols[label] = list(cols[label])
    cols[label][row] = junk
    path = root / "junk_value.star"
    path.write_text(render(spec))
    with pytest.raises(InputError) as err:
        with no_hang():
            star = read_star(path)
            star.ctf_params()
            star.origins_angstrom()
    assert err.value.file == str(path)
    assert err.value.row == row + 1, str(err.value)
    assert label in str(err.value)


# --- regressions found by the fuzzing above -----------------------------------------------------------------------


def _valid_text() -> str:
    return render({
        "generation": "3.1", "separator": " ", "block": "particles", "pixel_size": np.ones(2),
        "optics": [{"rlnOpticsGroup": 1, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnImagePixelSize": 1.0}],
        "columns": {"rlnImageName": ["1@Stacks/a.mrcs", "2@Stacks/a.mrcs"], "rlnDefocusU": [1e4, 2e4],
                    "rlnDefocusV": [1e4, 2e4], "rlnOpticsGroup": [1, 1]},
    })  # fmt: skip


def test_fixed_file_is_read_afresh_after_a_parse_error(tmp_path):
    # starfile keeps a failed parse's lines in linecache; the fixed file must not be served the old text.
    path = tmp_path / "p.star"
    good = _valid_text()
    path.write_text(good.replace("_rlnDefocusU #2", "_rlnDefocusU #2\n_rlnDefocusU #2"))
    with pytest.raises(InputError, match="cannot parse"):
        read_star(path)
    path.write_text(good)
    assert read_star(path).image_names == ["1@Stacks/a.mrcs", "2@Stacks/a.mrcs"]


def test_column_given_twice_is_refused(tmp_path):
    path = tmp_path / "p.star"
    path.write_text(_valid_text().replace("_rlnOpticsGroup #4", "_rlnOpticsGroup #4\n_rlnDefocusU #5").replace(" 1\n", " 1 5.0\n"))
    with pytest.raises(InputError, match=r"p\.star: data_particles has the column rlnDefocusU more than once"):
        read_star(path)


@pytest.mark.parametrize("value", ["abc", "1.5", "nan"])
def test_optics_group_that_is_not_a_number_is_named(tmp_path, value):
    path = tmp_path / "p.star"
    path.write_text(_valid_text().replace("\n1 300.0", f"\n{value} 300.0"))
    with pytest.raises(InputError, match=r"p\.star, row 1: data_optics: rlnOpticsGroup .* is not an optics group number"):
        read_star(path)


def test_optics_group_listed_twice_is_refused(tmp_path):
    path = tmp_path / "p.star"
    path.write_text(_valid_text().replace("1 300.0 2.7 1.0\n", "1 300.0 2.7 1.0\n1 200.0 2.7 1.5\n"))
    with pytest.raises(InputError, match="data_optics lists optics group 1 more than once"):
        read_star(path)


def test_lone_carriage_return_is_refused_not_read_shifted(tmp_path):
    # starfile counted lines by LF but read them split at CR too: row 2 split in two, the last row vanished.
    path = tmp_path / "p.star"
    path.write_bytes(_valid_text().replace("2@Stacks/a.mrcs 20000.0", "2@Stacks/a.mrcs 200\r00.0").encode())
    with pytest.raises(InputError, match=r"p\.star: line 26 holds a carriage return without a line feed"):
        read_star(path)
    path.write_bytes(_valid_text().replace("\n", "\r\n").encode())  # Windows line endings are fine
    assert read_star(path).image_names == ["1@Stacks/a.mrcs", "2@Stacks/a.mrcs"]


@pytest.mark.parametrize("data, line", [(b"a\r\nb", None), (b"a\rb", 1), (b"a\r", 1), (b"ab\r\ncd\re", 2), (b"x\n" * 5 + b"\r\n", None)])
def test_lone_carriage_return_found_across_read_blocks(tmp_path, data, line):
    path = tmp_path / "p.star"
    path.write_bytes(data)
    # A CR at the end of one block is judged with the next block, where its LF would be.
    assert [lone_carriage_return_line(path, chunk=k) for k in (1, 2, 3, 1 << 20)] == [line] * 4


def test_non_utf8_file_says_so(tmp_path):
    path = tmp_path / "p.star"
    path.write_bytes(_valid_text().replace("# written", "# \xc5ngstr\xf6m, written").encode("latin-1"))
    with pytest.raises(InputError, match=r"p\.star: no data blocks found \(byte 0xc5 at offset \d+ is not UTF-8 text\)"):
        read_star(path)


def test_binary_garbage_is_refused_quickly_and_in_little_memory(tmp_path):
    path = tmp_path / "p.star"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1 << 18, dtype=np.uint8).tobytes())
    tracemalloc.start()
    try:
        with no_hang(10), pytest.raises(InputError, match=r"p\.star: "):
            read_star(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def _value(v) -> str:
    try:
        return repr(float(v))
    except (TypeError, ValueError):
        return str(v)


def _whole_or_error(read) -> tuple[str, object]:
    try:
        with no_hang():
            return "read", read()
    except InputError as exc:
        return "refused", str(exc)


@settings(FUZZ, max_examples=150)
@given(spec=star_specs(), ops=st.lists(mutation, min_size=0, max_size=3), rows=st.integers(1, 5))
def test_sliced_reading_agrees_with_whole_reading(workdir, spec, ops, rows):
    # predict reads a STAR file a slice of rows at a time: for any file, valid or damaged, the slices must
    # hold the whole file's table, or the same error must come out.
    from relion_canon.io.star_stream import iter_star_chunks

    root, _ = workdir
    path = write_mutated(root / "sliced.star", spec, ops)
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    whole = _whole_or_error(lambda: read_star(path).particles)
    sliced = _whole_or_error(lambda: pd.concat([s.particles for _, s in iter_star_chunks(path, scratch, rows)],
                                               ignore_index=True))
    assert whole[0] == sliced[0], (whole, sliced)
    if whole[0] == "refused":
        assert whole[1] == sliced[1]
    else:
        # A column may be numbers in one slice and text in the whole file (one damaged value): compare values.
        assert list(sliced[1].columns) == list(whole[1].columns)
        assert sliced[1].map(_value).equals(whole[1].map(_value))
    assert not list(scratch.iterdir())
    event(whole[0])
