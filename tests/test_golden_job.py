"""The job's output is pinned: a small run of the demo's default set must give the same estimates as the
reference in ``test_data/golden_job/`` (made with the code before a refactor), to rounding.

Refactors that should change no behaviour are checked against it. A change that is meant to change results
regenerates the reference (``python -m tests.test_golden_job``) and says why in its commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from relion_canon.context import QUIET
from relion_canon.io.star import read_star
from relion_canon.job import JobConfig, run_job
from relion_canon.simulate import SimulationConfig, simulate_dataset

GOLDEN = Path(__file__).resolve().parents[1] / "test_data" / "golden_job" / "particles.star"
# The demo's simulation and job defaults, smaller: fewer particles and a 32 px box keep it a few seconds.
SIMULATION = SimulationConfig(n_particles=240, box=32, pixel_size=5.0, seed=0, overwrite=True)
JOB = JobConfig(threads=1, seed=0, write_canonical=True)
# Per column: the largest difference that counts as rounding (float32 sums taken in another order).
TOLERANCE = {
    "rlnClassNumber": 0,
    "rlnAnglePsi": 0.01,  # degrees, compared on the circle
    "rlnAnglePsiPrior": 0.01,
    "rlnOriginXAngst": 0.01,  # Å
    "rlnOriginYAngst": 0.01,
    "rlnCanonDefocus": 1.0,  # Å
    "rlnCanonDefocusLatent": 1.0,
    "rlnParticleFigureOfMerit": 1e-4,
    "rlnParticleSelectZScore": 1e-3,
    "rlnCanonIsOutlier": 0,
    "rlnCanonAlignmentScore": 1e-4,
}


def run_small_demo(root: Path) -> Path:
    simulate_dataset(SIMULATION, root / "data")
    return run_job(root / "data" / "particles.star", root / "job", JOB, resume=False,
                   context=QUIET).particles_star


@pytest.fixture(scope="module")
def produced(tmp_path_factory) -> Path:
    return run_small_demo(tmp_path_factory.mktemp("golden"))


def test_every_estimate_matches_the_reference_to_rounding(produced):
    want = read_star(GOLDEN).particles
    got = read_star(produced).particles
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for label, tol in TOLERANCE.items():
        a, b = got[label].to_numpy(float), want[label].to_numpy(float)
        diff = np.abs(a - b)
        if label.startswith("rlnAnglePsi"):
            diff = np.abs((a - b + 180.0) % 360.0 - 180.0)
        assert diff.max() <= tol, f"{label}: differs by up to {diff.max():g} (row {int(diff.argmax()) + 1})"


def test_input_columns_are_copied_verbatim(produced):
    want = read_star(GOLDEN).particles
    got = read_star(produced).particles
    given = [c for c in want.columns if c not in TOLERANCE and c not in ("rlnImageName", "rlnCanonCanonicalImage")]
    assert (got[given].astype(str).to_numpy() == want[given].astype(str).to_numpy()).all()
    for label in ("rlnImageName", "rlnCanonCanonicalImage"):  # the folders are temporary; N@ and the name stay
        assert [Path(n).name for n in got[label]] == [Path(n).name for n in want[label]]


if __name__ == "__main__":  # regenerate the reference
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_small_demo(Path(tmp)), GOLDEN)
    print(f"wrote {GOLDEN}", file=sys.stderr)
