"""The job's particle STAR files written a slice at a time are the files writing the whole table gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relion_canon.io.result_stars import write_result_stars
from relion_canon.io.star import ParticleStar, read_star, write_star


def _star(n: int) -> ParticleStar:
    rng = np.random.default_rng(0)
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
                           "rlnImagePixelSize": [1.5, 1.5], "rlnImageSize": [64, 64], "rlnVoltage": [300.0, 300.0]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@Extract/job007/mic{i // 10}.mrcs" for i in range(n)],
                          "rlnMicrographName": [f"mic{i // 10}.mrc" for i in range(n)],
                          "rlnDefocusU": rng.uniform(5000, 25000, n), "rlnOpticsGroup": 1 + np.arange(n) % 2,
                          "rlnAnglePsi": rng.uniform(-180, 180, n)})
    return ParticleStar(None, {"optics": optics, "particles": parts}, "particles", 30001)


@pytest.mark.parametrize("rows_per_slice", [7, 30, 1000])
def test_slices_give_the_files_the_whole_table_gives(tmp_path, rows_per_slice):
    star = _star(30)
    columns = {"rlnAnglePsi": np.linspace(-179.5, 179.5, 30), "rlnClassNumber": 1 + np.arange(30) % 4,
               "rlnCanonIsOutlier": (np.arange(30) % 5 == 0).astype(np.int64)}
    keep = columns["rlnCanonIsOutlier"] == 0
    paths = [tmp_path / f"{name}.star" for name in ("all", "kept", "dropped")]
    write_result_stars(star, columns, keep, *paths, rows_per_slice=rows_per_slice)
    whole = star.with_columns(columns)
    for path, expected in zip(paths, (whole, whole.subset(keep), whole.subset(~keep))):
        assert path.read_bytes() == write_star(expected, tmp_path / "expected.star").read_bytes()
    assert len(read_star(paths[1])) == 24 and len(read_star(paths[2])) == 6
    assert list(read_star(paths[0]).particles.columns)[-2:] == ["rlnClassNumber", "rlnCanonIsOutlier"]


def test_nothing_kept_is_still_a_star_file(tmp_path):
    star = _star(12)
    paths = [tmp_path / f"{name}.star" for name in ("all", "kept", "dropped")]
    write_result_stars(star, {"rlnCanonIsOutlier": np.ones(12, np.int64)}, np.zeros(12, bool), *paths,
                       rows_per_slice=5)
    assert len(read_star(paths[2])) == 12
    assert paths[1].read_bytes() == write_star(star.with_columns({"rlnCanonIsOutlier": np.ones(12, np.int64)})
                                               .subset(np.zeros(12, bool)), tmp_path / "e.star").read_bytes()


def test_a_column_of_the_wrong_length_writes_nothing(tmp_path):
    paths = [tmp_path / f"{name}.star" for name in ("all", "kept", "dropped")]
    with pytest.raises(ValueError, match="column rlnAnglePsi: 3 values for 12 particles"):
        write_result_stars(_star(12), {"rlnAnglePsi": np.zeros(3)}, np.ones(12, bool), *paths)
    assert not any(p.exists() for p in paths)
