"""ground_truth: a simulated set's ground_truth.star is read from its folder or its file, junk labels typed,
and another particle STAR is refused. (The simulator's own round trip is in tests/simulate.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from relion_canon.errors import InputError
from relion_canon.io.ground_truth import GROUND_TRUTH_STAR, read_ground_truth, read_ground_truth_star


def _truth_star(path: Path, with_labels: bool = True) -> Path:
    """Two particles; without labels it is a plain particle STAR."""
    columns = ["_rlnImageName #1", "_rlnAnglePsi #2"]
    rows = ["1@p.mrcs 10.0", "2@p.mrcs -35.5"]
    if with_labels:
        columns += ["_rlnCanonIsJunk #3", "_rlnCanonJunkKind #4"]
        rows = [rows[0] + " 0 none", rows[1] + " 1 noise"]
    path.write_text("\n".join(["data_particles", "", "loop_", *columns, *rows]) + "\n")
    return path


def test_read_from_folder_or_file_with_typed_labels(tmp_path):
    _truth_star(tmp_path / GROUND_TRUTH_STAR)
    star = read_ground_truth_star(tmp_path)
    assert star.path == tmp_path / GROUND_TRUTH_STAR
    table = read_ground_truth(tmp_path / GROUND_TRUTH_STAR)
    assert table.equals(star.particles)
    assert table["rlnCanonIsJunk"].tolist() == [0, 1] and table["rlnCanonIsJunk"].dtype.kind == "i"
    assert table["rlnCanonJunkKind"].tolist() == ["none", "noise"]


def test_other_particle_star_is_refused(tmp_path):
    plain = _truth_star(tmp_path / "particles.star", with_labels=False)
    with pytest.raises(InputError, match="not a simulation ground truth .missing rlnCanonIsJunk, rlnCanonJunkKind"):
        read_ground_truth_star(plain)
    with pytest.raises(InputError, match="STAR file not found"):
        read_ground_truth(tmp_path / "missing")
