"""Fixtures shared by the evaluation tests: one small simulated set for the whole package."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from relion_canon.simulate import read_ground_truth
from tests.analysis.evaluation.helpers import simulated_set


@pytest.fixture(scope="package")
def sim(tmp_path_factory) -> Path:
    return simulated_set(tmp_path_factory.mktemp("sim") / "set")


@pytest.fixture(scope="package")
def truth_table(sim) -> pd.DataFrame:
    return read_ground_truth(sim)
