from __future__ import annotations

from pathlib import Path

import pytest

from relion_canon.models import MODEL_CLASSES
from relion_canon.simulate import SimulationConfig, simulate_dataset


@pytest.fixture(autouse=True)
def toy_model_registered(monkeypatch):
    monkeypatch.setitem(MODEL_CLASSES, "toy", "tests.train.toy_model:ToyModel")


@pytest.fixture(scope="session")
def small_set(tmp_path_factory) -> Path:
    """200 particles, 24 px, noise-free-ish, one view, uniform psi; the STAR path."""
    out = tmp_path_factory.mktemp("small_set")
    simulate_dataset(SimulationConfig(n_particles=200, box=24, pixel_size=5.0, snr=2.0, junk_fraction=0.0, seed=3), out)
    return out / "particles.star"
