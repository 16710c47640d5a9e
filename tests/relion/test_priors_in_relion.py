"""The job's 3-D priors (``--ref``) read by real RELION 3.1: ``relion-canon run --ref`` on a tiny simulated set,
then one iteration of a plain 3D refinement (``relion_refine --iter 1 --sigma_ang``) on the particles that got a
prior. relion_refine must accept the prior columns, keep them, and, searching locally about them, land near
both the priors and the simulated truth. The truth's angles are the ones the simulator projected with,
pinned to ``relion_project`` (tests/simulate/test_simulate_vs_relion.py), so the check does not rest on our own
Euler matrices alone; and the same priors written as the inverse rotation (the classic convention mistake) send
RELION's search away from the truth, which is what makes the first check able to fail.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

from relion_canon.analysis.orientation.point_group import orientation_distance_deg
from relion_canon.cli.main import cli
from relion_canon.geometry.projection import euler_matrix
from relion_canon.geometry.volume import lowpass_map, resample_map
from relion_canon.io.mrc import read_map
from relion_canon.io.star import read_star, write_star
from relion_canon.simulate import SimulationConfig, read_ground_truth, simulate_dataset

pytestmark = pytest.mark.relion

RIBOSOME = "maps/clean70SRibosome_vol_65p.mrc"
RIBOSOME_APIX = 5.0  # Å/voxel; the header has none
BOX, APIX = 32, 8.0
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
PRIORS = ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
SIGMA_ANG = 5.0  # RELION searches ±3 sigma about each prior: wide enough to wander off a prior that is wrong


def _angles(table, columns) -> np.ndarray:
    return np.stack([table[c].to_numpy(np.float64) for c in columns], axis=1)


def _geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return orientation_distance_deg(euler_matrix(*a.T), euler_matrix(*b.T))


def _inverse(a: np.ndarray) -> np.ndarray:
    """The Euler angles of the inverse rotation: (rot, tilt, psi) → (−psi, −tilt, −rot) in RELION's ZYZ."""
    return -a[:, ::-1]


@pytest.fixture(scope="module")
def job(require_relion, shared_data, tmp_path_factory) -> Path:
    """A project with 200 particles of one view of the 70S ribosome (SNR 0.5, 10 % junk, 1 px shifts) and the job
    run on them with the true map low-passed to 30 Å as the reference."""
    root = tmp_path_factory.mktemp("priors")
    simulate_dataset(SimulationConfig(n_particles=200, box=BOX, pixel_size=APIX, source=str(shared_data / RIBOSOME),
                                      map_pixel_size=RIBOSOME_APIX, views=1, rot=40.0, tilt=70.0, snr=0.5,
                                      junk_fraction=0.1, shift_sigma=APIX, seed=2), root / "Input")
    data, _ = read_map(shared_data / RIBOSOME)
    low = lowpass_map(data.astype(np.float64), RIBOSOME_APIX / 30.0).astype(np.float32)
    for name, volume, apix in (("ref.mrc", low, RIBOSOME_APIX),
                               ("ref_boxed.mrc", resample_map(low, RIBOSOME_APIX, BOX, APIX), APIX)):
        with mrcfile.new(root / name) as m:
            m.set_data(volume)
            m.voxel_size = apix
    res = CliRunner().invoke(cli, ["run", "--i", str(root / "Input" / "particles.star"), "--o", str(root / "job"),
                                   "--ref", str(root / "ref.mrc"), "--j", "2", "--quiet"])
    assert res.exit_code == 0, res.output[-3000:]
    return root


def _refine(root: Path, star: Path, name: str) -> Path:
    """One iteration of a 3D refinement, local searches about the priors; returns its data STAR."""
    out = root / name
    out.mkdir()
    cmd = ["relion_refine", "--i", str(star), "--o", str(out / "run"), "--ref", str(root / "ref_boxed.mrc"),
           "--ini_high", "30", "--iter", "1", "--sigma_ang", str(SIGMA_ANG), "--healpix_order", "3",
           "--offset_range", "3", "--offset_step", "1", "--ctf", "--particle_diameter", "240", "--flatten_solvent",
           "--zero_mask", "--K", "1", "--sym", "C1", "--firstiter_cc", "--j", "2", "--random_seed", "1"]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return out / "run_it001_data.star"


@pytest.fixture(scope="module")
def with_prior(job) -> tuple:
    """The job's particles that got a prior (as README says to select them), and the truth row for row."""
    star = read_star(job / "job" / "particles.star")
    has = star.particles["rlnAngleTiltPrior"].to_numpy() < 998
    assert has.mean() > 0.8  # one view: every good class is matched
    selected = star.subset(has)
    write_star(selected, job / "with_prior.star")
    truth = read_ground_truth(job / "Input").set_index("rlnImageName").loc[selected.particles["rlnImageName"]]
    return selected, truth.reset_index()


def test_relion_refines_about_our_priors_and_lands_near_the_truth(job, with_prior):
    selected, truth = with_prior
    out = read_star(_refine(job, job / "with_prior.star", "refine")).particles
    assert out["rlnImageName"].tolist() == selected.particles["rlnImageName"].tolist()
    # relion_refine read the prior columns and kept them as they were.
    np.testing.assert_allclose(_angles(out, PRIORS), _angles(selected.particles, PRIORS), atol=1e-3)
    good = truth["rlnCanonIsJunk"].to_numpy() == 0
    prior, found, true = (_angles(t, c)[good] for t, c in ((selected.particles, PRIORS), (out, ANGLES), (truth, ANGLES)))
    assert np.median(_geodesic(prior, true)) < 5.0  # our priors
    # RELION's answer stays near the priors (its sampling is 7.5° before oversampling) and near the truth.
    assert np.median(_geodesic(found, prior)) < 6.0
    assert np.median(_geodesic(found, true)) < 6.0


def test_priors_in_the_wrong_convention_send_relion_away_from_the_truth(job, with_prior):
    """The control: the inverse rotations as priors; the search cannot reach the truth from there."""
    selected, truth = with_prior
    table = selected.particles.copy()
    wrong = _inverse(_angles(table, PRIORS))
    for i, (angle, prior) in enumerate(zip(ANGLES, PRIORS)):
        table[angle] = table[prior] = wrong[:, i]
    write_star(selected.with_particles(table), job / "wrong.star")
    out = read_star(_refine(job, job / "wrong.star", "refine_wrong")).particles
    good = truth["rlnCanonIsJunk"].to_numpy() == 0
    assert np.median(_geodesic(_angles(out, ANGLES)[good], _angles(truth, ANGLES)[good])) > 20.0
