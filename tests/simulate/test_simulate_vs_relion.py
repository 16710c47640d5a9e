"""The simulator against RELION's own projector: same map, angles, origins and CTF → the same images.

hand-vol.mrc is chiral, so a mirrored volume, a transposed axis, a wrong Euler convention, psi direction or
origin sign all show up as a low correlation (the negative controls below check that they would).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from relion_canon.ctf import ctf_2d
from relion_canon.geometry import canonicalise, rotate, rotate_images
from relion_canon.io import read_map, write_star
from relion_canon.simulate import (
    FourierProjector,
    SimulationConfig,
    read_ground_truth,
    simulate_dataset,
)

pytestmark = [pytest.mark.relion, pytest.mark.shared_data]

# (rot, tilt, psi, originX Å, originY Å, defocusU, defocusV, defocus angle)
CASES = [
    (0.0, 0.0, 0.0, 0.0, 0.0, 10000.0, 10000.0, 0.0),
    (0.0, 0.0, 90.0, 0.0, 0.0, 10000.0, 10000.0, 0.0),
    (30.0, 50.0, -20.0, 0.0, 0.0, 12000.0, 12000.0, 0.0),
    (0.0, 0.0, 0.0, 5.0, 0.0, 10000.0, 10000.0, 0.0),
    (0.0, 0.0, 0.0, 0.0, 3.0, 10000.0, 10000.0, 0.0),
    (120.0, 70.0, 45.0, 4.0, -6.0, 15000.0, 9000.0, 30.0),
    (-75.0, 140.0, 160.0, -3.5, 2.5, 20000.0, 18500.0, -60.0),
]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _angles_star(path: Path, cases, pixel_size: float, box: int) -> pd.DataFrame:
    table = pd.DataFrame(
        cases,
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                 "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"],
    )
    table.insert(0, "rlnImageName", [f"{i + 1:06d}@dummy.mrcs" for i in range(len(table))])
    table["rlnOpticsGroup"] = 1
    table["rlnMicrographName"] = "mic.mrc"
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnAmplitudeContrast": [0.1],
        "rlnSphericalAberration": [2.7], "rlnVoltage": [300.0], "rlnImagePixelSize": [pixel_size],
        "rlnImageSize": [box], "rlnImageDimensionality": [2],
    })
    write_star({"optics": optics, "particles": table}, path, version=30001)
    return table


def _relion_project(tmp: Path, volume: Path, angles: Path, pixel_size: float, ctf: bool, name: str) -> np.ndarray:
    cmd = ["relion_project", "--i", str(volume), "--o", str(tmp / name), "--ang", str(angles),
           "--angpix", str(pixel_size)]
    if ctf:
        cmd.append("--ctf")
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp)
    return mrcfile.read(tmp / f"{name}.mrcs").astype(np.float64)


@pytest.fixture(scope="module")
def hand(shared_data: Path) -> Path:
    return shared_data / "maps" / "hand-vol.mrc"


@pytest.mark.parametrize("with_ctf", [False, True])
@pytest.mark.parametrize("pixel_size", [1.0, 2.0])
def test_projector_matches_relion_project(tmp_path, hand, require_relion, with_ctf, pixel_size):
    vol, _ = read_map(hand)
    box = vol.shape[0]
    table = _angles_star(tmp_path / "angles.star", CASES, pixel_size, box)
    ref = _relion_project(tmp_path, hand, tmp_path / "angles.star", pixel_size, with_ctf, "proj")

    rot, tilt, psi = (table[c].to_numpy() for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    origin_px = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / pixel_size
    ctf = None
    if with_ctf:
        ctf = ctf_2d(box, pixel_size, table.rlnDefocusU, table.rlnDefocusV, table.rlnDefocusAngle, 300.0, 2.7, 0.1,
                     rfft=True)
    ours = FourierProjector(vol).project(rot, tilt, psi, shifts_px=-origin_px, ctf=ctf)
    corr = [_corr(a, b) for a, b in zip(ours, ref)]
    assert min(corr) > 0.999, corr
    # Same intensity scale too: a projection is a line integral in voxel units, as in RELION.
    scale = [float((a * b).sum() / (a * a).sum()) for a, b in zip(ours, ref)]
    np.testing.assert_allclose(scale, 1.0, atol=0.01)


def test_wrong_conventions_would_be_caught(tmp_path, hand, require_relion):
    """Negative controls: each plausible mistake gives a clearly lower correlation on this chiral map."""
    vol, _ = read_map(hand)
    table = _angles_star(tmp_path / "angles.star", CASES, 1.0, vol.shape[0])
    ref = _relion_project(tmp_path, hand, tmp_path / "angles.star", 1.0, False, "proj")
    rot, tilt, psi = (table[c].to_numpy() for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    origin_px = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    proj = FourierProjector(vol)
    nontrivial = [2, 5, 6]  # cases with rot, tilt and psi all non-zero
    wrong = {
        "mirrored map (x flipped)": FourierProjector(vol[:, :, ::-1].copy()).project(rot, tilt, psi, -origin_px),
        "transposed map (x<->y)": FourierProjector(vol.transpose(0, 2, 1).copy()).project(rot, tilt, psi, -origin_px),
        "psi negated": proj.project(rot, tilt, -psi, -origin_px),
        "inverse rotation": proj.project(-psi, -tilt, -rot, -origin_px),
    }
    for name, images in wrong.items():
        worst = min(_corr(images[i], ref[i]) for i in nontrivial)
        assert worst < 0.95, name
    # Origin sign: the content moves by −origin; +origin gives uncorrelated images for the shifted cases.
    plus = proj.project(rot, tilt, psi, +origin_px)
    assert max(_corr(plus[i], ref[i]) for i in (3, 4, 5, 6)) < 0.9


def test_psi_and_origin_conventions_in_relion(tmp_path, hand, require_relion):
    """RELION's own images obey product.md: psi rotates counter-clockwise (row 0 at the top) about pixel
    box//2, and shifting by +origin then rotating by −psi gives back the psi = 0, unshifted image."""
    cases = [(0.0, 0.0, p, ox, oy, 10000.0, 10000.0, 0.0) for p, ox, oy in
             [(0.0, 0.0, 0.0), (37.0, 0.0, 0.0), (-120.0, 0.0, 0.0), (75.0, 4.0, -3.0)]]
    _angles_star(tmp_path / "angles.star", cases, 1.0, 64)
    ref = _relion_project(tmp_path, hand, tmp_path / "angles.star", 1.0, False, "proj")
    base = ref[0]
    for i in (1, 2):
        psi = cases[i][2]
        assert _corr(rotate_images(base[None], [psi], order=3)[0], ref[i]) > 0.995
        assert _corr(rotate_images(base[None], [-psi], order=3)[0], ref[i]) < 0.9
        # scipy.ndimage.rotate(+psi) turns the same way, but about (box - 1)/2, half a pixel off RELION's centre.
        scipy_plus = _corr(ndimage.rotate(base, psi, reshape=False, order=3), ref[i])
        assert scipy_plus > _corr(ndimage.rotate(base, -psi, reshape=False, order=3), ref[i]) + 0.2
        # The bilinear rotation the models and the alignment use (relion_canon.geometry.rotate) turns the same way.
        turned = rotate(torch.from_numpy(base)[None], torch.tensor([np.deg2rad(psi)]))[0].numpy()
        assert _corr(turned, ref[i]) > 0.99
        assert _corr(rotate(torch.from_numpy(base)[None], torch.tensor([-np.deg2rad(psi)]))[0].numpy(), ref[i]) < 0.9
    for order in (1, 3):
        back = canonicalise(ref[3:4], [cases[3][2]], np.array([[cases[3][3], cases[3][4]]]), order=order)[0]
        assert _corr(back, base) > 0.99, order


def test_simulated_set_reprojects_with_relion(tmp_path, hand, require_relion):
    """The whole chain: a noise-free simulated set (random orientations, shifts, astigmatic CTF) is what
    relion_project makes from its ground_truth.star (RELION reads and keeps our rlnCanon* columns)."""
    out = tmp_path / "sim"
    config = SimulationConfig(
        n_particles=12, box=64, pixel_size=1.0, source=str(hand), views="uniform", shift_sigma=3.0,
        astigmatism=800.0, snr=float("inf"), junk_fraction=0.0, seed=3,
    )
    simulate_dataset(config, out)
    gt = read_ground_truth(out)
    assert gt["rlnOriginXAngst"].abs().max() > 1.0  # the shifts are really exercised
    ref = _relion_project(out, hand, out / "ground_truth.star", 1.0, True, "relion")
    ours = mrcfile.read(out / "particles.mrcs").astype(np.float64)
    corr = [_corr(a, b) for a, b in zip(ours, ref)]
    assert min(corr) > 0.99, corr
