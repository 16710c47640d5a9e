"""evaluation.matching: a job's rows are joined to its reference's, by name or, failing that, safely by order."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.analysis.evaluation.matching import match_rows
from relion_canon.errors import InputError
from relion_canon.io.star import read_star
from tests.analysis.evaluation.helpers import fake_job


def test_join_on_names_in_any_order_and_folder(sim, tmp_path):
    job = read_star(fake_job(sim, tmp_path / "job", canonical=False) / "particles.star")
    truth = read_star(sim / "ground_truth.star")
    shuffled = truth.with_particles(truth.particles.iloc[::-1].reset_index(drop=True))
    assert np.array_equal(match_rows(job, shuffled), np.arange(len(job))[::-1])
    # The same stack reached through another folder spelling (a job run from elsewhere) still joins.
    moved = truth.particles.copy()
    moved["rlnImageName"] = [n.split("@")[0] + "@/elsewhere/particles.mrcs" for n in moved["rlnImageName"]]
    notes: list[str] = []
    assert np.array_equal(match_rows(job, truth.with_particles(moved), notes), np.arange(len(job)))
    assert "stack file name" in notes[0]
    # A subset of the reference (e.g. particles_selected.star evaluated against the full truth) joins too.
    subset = job.subset(np.arange(10, 30))
    assert np.array_equal(match_rows(subset, truth), np.arange(10, 30))


def test_unmatched_names_fall_back_to_row_order_only_with_equal_counts(sim, tmp_path):
    job = read_star(fake_job(sim, tmp_path / "job", canonical=False) / "particles.star")
    truth = read_star(sim / "ground_truth.star")
    renamed = truth.particles.copy()
    renamed["rlnImageName"] = [f"{i + 1}@other.mrcs" for i in range(len(renamed))]
    notes: list[str] = []
    assert np.array_equal(match_rows(job, truth.with_particles(renamed), notes), np.arange(len(job)))
    assert "row order" in notes[0]
    with pytest.raises(InputError) as err:
        match_rows(job, truth.with_particles(renamed.iloc[:50]))
    assert err.value.row == 1 and "100 particles here, 50 there" in str(err.value)
