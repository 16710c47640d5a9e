"""ParticleSource: lazy reads equal mrcfile's, and every bad-input case names the file and row."""

from __future__ import annotations

import pickle

import mrcfile
import numpy as np
import pytest

from relion_canon.errors import InputError
from relion_canon.io import ParticleSource, read_star

from .helpers import make_stack, make_star


def test_real_relion_project_stack(shared_data):
    star = read_star(shared_data / "formats/relion/rln_proj_65.star")
    src = ParticleSource.from_star(star)
    expected = mrcfile.read(shared_data / "formats/relion/rln_proj_65.mrcs")
    np.testing.assert_array_equal(src.read(np.arange(len(src))), expected)
    np.testing.assert_array_equal(src[3], expected[3])


def test_real_mixed_stack(shared_data):
    star = read_star(shared_data / "formats/mixed/empiar_10076_7.star")
    src = ParticleSource.from_star(star)
    with mrcfile.open(shared_data / "formats/mixed/empiar_10076_7.mrc", permissive=True) as m:
        expected = m.data.copy()
    np.testing.assert_array_equal(src.read([6, 0, 3]), expected[[6, 0, 3]])


def test_random_batches_across_stacks(tmp_path):
    a = make_stack(tmp_path / "a.mrcs", 10, seed=1)
    b = make_stack(tmp_path / "b.mrcs", 7, seed=2)
    names = [f"{i + 1:06d}@a.mrcs" for i in range(10)] + [f"{i + 1}@b.mrcs" for i in range(7)]
    star = read_star(make_star(tmp_path / "p.star", names))
    src = ParticleSource.from_star(star)
    allimg = np.concatenate([a, b])
    idx = np.random.default_rng(0).permutation(17)
    np.testing.assert_array_equal(src.read(idx), allimg[idx])
    batches = list(src.iter_batches(5))
    assert [len(i) for i, _ in batches] == [5, 5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([x for _, x in batches]), allimg)


def test_single_image_files(tmp_path):
    img = make_stack(tmp_path / "one.mrc", 1)[0]
    with mrcfile.new(tmp_path / "two.mrc", overwrite=True) as m:
        m.set_data(img * 2)
    star = read_star(make_star(tmp_path / "p.star", ["one.mrc", "two.mrc"]))
    out = ParticleSource.from_star(star).read([0, 1])
    np.testing.assert_array_equal(out, [img, img * 2])


def test_resolves_relative_to_project_dir_first(tmp_path, monkeypatch):
    (tmp_path / "stars").mkdir()
    (tmp_path / "Extract").mkdir()
    good = make_stack(tmp_path / "Extract" / "a.mrcs", 3, seed=5)
    make_stack(tmp_path / "stars" / "Extract_a.mrcs", 3, seed=6)
    star = read_star(make_star(tmp_path / "stars" / "p.star", ["1@Extract/a.mrcs"]))
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(ParticleSource.from_star(star)[0], good[0])


def test_pickles_without_open_handles(tmp_path):
    data = make_stack(tmp_path / "a.mrcs", 4)
    src = ParticleSource.from_star(read_star(make_star(tmp_path / "p.star", [f"{i + 1}@a.mrcs" for i in range(4)])))
    src.read([0])
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.read([2]), data[[2]])


def test_many_stacks_do_not_exhaust_handles(tmp_path, monkeypatch):
    import relion_canon.io.source as source_module

    monkeypatch.setattr(source_module, "MAX_OPEN_STACKS", 3)
    names = []
    expected = []
    for s in range(8):
        expected.append(make_stack(tmp_path / f"s{s}.mrcs", 2, box=8, seed=s))
        names += [f"1@s{s}.mrcs", f"2@s{s}.mrcs"]
    src = ParticleSource.from_star(read_star(make_star(tmp_path / "p.star", names, box=8)))
    np.testing.assert_array_equal(src.read(np.arange(16)[::-1]), np.concatenate(expected)[::-1])
    assert len(src._handles) <= 3


# --- bad input --------------------------------------------------------------------------------------------------


def test_missing_stack_names_row(tmp_path):
    make_stack(tmp_path / "a.mrcs", 2)
    star = read_star(make_star(tmp_path / "p.star", ["1@a.mrcs", "2@a.mrcs", "1@gone.mrcs"]))
    with pytest.raises(InputError, match=r"p\.star, row 3: image stack gone\.mrcs not found"):
        ParticleSource.from_star(star)


def test_index_beyond_end_names_row(tmp_path):
    make_stack(tmp_path / "a.mrcs", 2)
    star = read_star(make_star(tmp_path / "p.star", ["1@a.mrcs", "2@a.mrcs", "3@a.mrcs"]))
    with pytest.raises(InputError, match=r"p\.star, row 3: image 3@a\.mrcs is beyond the end of the stack \(2 images\)"):
        ParticleSource.from_star(star)


def test_index_zero_names_row(tmp_path):
    make_stack(tmp_path / "a.mrcs", 2)
    star = read_star(make_star(tmp_path / "p.star", ["1@a.mrcs", "0@a.mrcs"]))
    with pytest.raises(InputError, match=r"p\.star, row 2: .*start at 1"):
        ParticleSource.from_star(star)


def test_truncated_stack(tmp_path):
    make_stack(tmp_path / "a.mrcs", 5)
    raw = (tmp_path / "a.mrcs").read_bytes()
    (tmp_path / "a.mrcs").write_bytes(raw[: len(raw) - 300])
    star = read_star(make_star(tmp_path / "p.star", ["1@a.mrcs"]))
    with pytest.raises(InputError, match=r"a\.mrcs: truncated stack: header says 5 images of 16x16"):
        ParticleSource.from_star(star)


def test_not_an_mrc_file(tmp_path):
    (tmp_path / "a.mrcs").write_bytes(b"garbage" * 3)
    star = read_star(make_star(tmp_path / "p.star", ["1@a.mrcs"]))
    with pytest.raises(InputError, match=r"a\.mrcs: not a readable MRC file"):
        ParticleSource.from_star(star)


def test_complex_mode_refused(tmp_path):
    with mrcfile.new(tmp_path / "c.mrcs", overwrite=True) as m:
        m.set_data(np.zeros((2, 8, 8), np.complex64))
    star = read_star(make_star(tmp_path / "p.star", ["1@c.mrcs"], box=8))
    with pytest.raises(InputError, match=r"c\.mrcs: .*mode 4"):
        ParticleSource.from_star(star)


def test_mixed_box_sizes(tmp_path):
    make_stack(tmp_path / "a.mrcs", 2, box=16)
    make_stack(tmp_path / "b.mrcs", 2, box=24)
    star = read_star(make_star(tmp_path / "p.star", ["1@a.mrcs", "1@b.mrcs"]))
    with pytest.raises(InputError, match=r"mixed box sizes \(a\.mrcs is 16 px \(row 1\); b\.mrcs is 24 px \(row 2\)\)"):
        ParticleSource.from_star(star)


def test_nan_pixels_name_row_on_read(tmp_path):
    data = make_stack(tmp_path / "a.mrcs", 4)
    data[2, 3, 3] = np.nan
    with mrcfile.open(tmp_path / "a.mrcs", "r+") as m:
        m.data[2, 3, 3] = np.nan
    src = ParticleSource.from_star(read_star(make_star(tmp_path / "p.star", [f"{i + 1}@a.mrcs" for i in range(4)])))
    src.read([0, 1])
    with pytest.raises(InputError, match=r"p\.star, row 3: image 3@a\.mrcs contains NaN"):
        src.read([1, 2, 3])


def test_strict_false_collects_all_problems(tmp_path):
    make_stack(tmp_path / "a.mrcs", 2)
    star = read_star(make_star(tmp_path / "p.star", ["1@a.mrcs", "9@a.mrcs", "1@x.mrcs"]))
    src = ParticleSource.from_star(star, strict=False)
    messages = [str(p) for p in src.problems]
    assert any("x.mrcs not found" in m for m in messages)
    assert any("row 2" in m and "beyond the end" in m for m in messages)
