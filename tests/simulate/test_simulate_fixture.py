"""The committed fixture test_data/sim_tiny is what the simulator makes from its own simulation.json."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np

from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

FIXTURE = Path(__file__).resolve().parents[2] / "test_data" / "sim_tiny"


def test_fixture_is_reproducible(tmp_path, monkeypatch):
    info = json.loads((FIXTURE / "simulation.json").read_text())
    config = SimulationConfig.from_json(info["config"])
    assert config.to_json() == info["config"]
    config.overwrite = False
    # Regenerated as test_data/README.md says (from the repository root), but into a scratch project.
    monkeypatch.chdir(tmp_path)
    again = Path("test_data/sim_tiny")
    simulate_dataset(config, again)
    for name in ("particles.star", "ground_truth.star"):
        assert (again / name).read_text() == (FIXTURE / name).read_text(), name
    for name in ("particles.mrcs", "ground_truth_clean.mrcs"):
        np.testing.assert_allclose(mrcfile.read(again / name), mrcfile.read(FIXTURE / name), atol=1e-4)
    gt = read_ground_truth(FIXTURE)
    assert len(gt) == 24 and gt.rlnCanonIsJunk.sum() == 6
