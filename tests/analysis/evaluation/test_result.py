"""evaluation.result: an evaluation's JSON holds its scalars only, and its markdown table its numbers."""

from __future__ import annotations

import json

import pytest

from relion_canon.analysis.evaluation import NORMALISATION, evaluate
from tests.analysis.evaluation.helpers import fake_job


def test_report_structures_are_json_and_markdown(sim, tmp_path):
    ev = evaluate(fake_job(sim, tmp_path / "job"), sim)
    d = json.loads(ev.to_json())
    assert d["angle"]["rmse_deg"] == pytest.approx(ev.angle.rmse_deg)
    assert "errors_deg" not in d["angle"] and "mse" not in d["canonical"] and "scores" not in d["outliers"]
    assert d["canonical"]["normalisation"] == NORMALISATION
    worst = {"row": ev.canonical.worst_row, "mse": pytest.approx(ev.canonical.worst_mse)}
    assert d["canonical"]["worst_cases"][0] == worst
    md = ev.to_markdown()
    assert f"{ev.angle.rmse_deg:.4g}" in md and f"{ev.canonical.mean_mse:.4g}" in md
    assert "non-junk" in md and "| metric | relion_canon |" in md
