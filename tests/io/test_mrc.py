from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from relion_canon.errors import InputError
from relion_canon.io import read_map, stack_writer, write_map, write_stack


def test_write_stack_header_pixel_size_and_data(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 24, 24)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", data, pixel_size=2.5)
    with mrcfile.open(tmp_path / "s.mrcs") as m:
        np.testing.assert_array_equal(m.data, data)
        assert m.voxel_size.x == pytest.approx(2.5) and m.voxel_size.y == pytest.approx(2.5)
        assert m.is_image_stack()
        assert m.header.mode == 2


def test_stack_writer_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with stack_writer(tmp_path / "s.mrcs", 10, 16, 1.0) as out:
            out[:5] = 1
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_map_round_trip(tmp_path, shared_data):
    vol, apix = read_map(shared_data / "maps/EMD-3197.map")
    assert vol.shape == (20, 20, 20)
    assert apix == pytest.approx(11.4, abs=0.01)
    write_map(tmp_path / "m.mrc", vol, 11.4)
    again, apix2 = read_map(tmp_path / "m.mrc")
    np.testing.assert_array_equal(again, vol)
    assert apix2 == pytest.approx(11.4)


def test_map_without_voxel_size(shared_data):
    _, apix = read_map(shared_data / "maps/clean70SRibosome_vol_65p.mrc")
    assert apix is None


@pytest.mark.parametrize("what", ["missing", "garbage", "nan", "not cubic"])
def test_bad_maps(tmp_path, what):
    path = tmp_path / "m.mrc"
    if what == "garbage":
        path.write_bytes(b"not an mrc file at all")
    elif what == "nan":
        vol = np.zeros((8, 8, 8), np.float32)
        vol[1, 2, 3] = np.nan
        write_map(path, vol, 1.0)
    elif what == "not cubic":
        write_map(path, np.zeros((8, 8, 6), np.float32), 1.0)
    with pytest.raises(InputError, match=r"m\.mrc: "):
        read_map(path)


def test_header_statistics(tmp_path):
    data = np.random.default_rng(1).normal(2.0, 3.0, size=(7, 16, 16)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", data, 1.0)
    with mrcfile.open(tmp_path / "s.mrcs") as m:
        h = m.header
        assert h.dmin == pytest.approx(data.min()) and h.dmax == pytest.approx(data.max())
        assert h.dmean == pytest.approx(data.mean(), rel=1e-5)
        assert h.rms == pytest.approx(data.std(), rel=1e-4)


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    write_stack(tmp_path / "s.mrcs", np.zeros((1, 8, 8), np.float32), 1.0)
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "s.mrcs").stat().st_mode) == 0o666 & ~mask


def test_written_files_carry_a_fixed_label_not_the_time(tmp_path, monkeypatch):
    # mrcfile's default label holds the time to the second, so a seeded simulation written twice could differ.
    import datetime

    import mrcfile.mrcobject

    images = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    write_stack(tmp_path / "a.mrcs", images, 2.0)
    write_map(tmp_path / "a.mrc", images[:1].repeat(8, axis=0), 2.0)
    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 1, 2, 3, 4, 5)

    monkeypatch.setattr(mrcfile.mrcobject, "datetime", Later)
    write_stack(tmp_path / "b.mrcs", images, 2.0)
    write_map(tmp_path / "b.mrc", images[:1].repeat(8, axis=0), 2.0)
    assert (tmp_path / "a.mrcs").read_bytes() == (tmp_path / "b.mrcs").read_bytes()
    assert (tmp_path / "a.mrc").read_bytes() == (tmp_path / "b.mrc").read_bytes()
    with mrcfile.open(tmp_path / "a.mrcs", header_only=True) as m:
        assert int(m.header.nlabl) == 1
        assert m.header.label[0].decode().startswith("relion_canon ")
