"""The CTF in RELION's convention: values, sign, astigmatism axes, layout, and RELION's own CTF."""

from __future__ import annotations

import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest

from relion_canon.ctf import CtfParams, ctf_2d, electron_wavelength, frequency_grid


def test_wavelength():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength(200.0) == pytest.approx(0.025079, abs=2e-6)


def test_origin_is_amplitude_contrast_and_low_frequencies_positive():
    c = ctf_2d(64, 2.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    assert c[0, 0] == pytest.approx(0.1)
    assert np.all(c[0, 1:3] > 0.1)  # rises from +Q: protein white after multiplying positive density


def test_first_zero_matches_theory():
    # Cs = 0, Q = 0: CTF = sin(π λ Δf k²), first zero at k = 1/sqrt(λ Δf).
    box, px, df = 512, 1.0, 20000.0
    c = ctf_2d(box, px, df, df, 0.0, 300.0, 0.0, 0.0, rfft=True)[0]
    k = np.fft.rfftfreq(box, d=px)
    first = k[np.flatnonzero(np.diff(np.sign(c[1:])) != 0)[0] + 1]
    assert first == pytest.approx(1 / np.sqrt(electron_wavelength(300.0) * df), abs=1 / (box * px))


def test_astigmatism_axes():
    """Defocus U acts along the azimuth (angle from the x axis, towards +y = increasing rows), V across it."""
    box, px = 128, 1.5
    u, v, azimuth = 20000.0, 12000.0, 30.0
    c = ctf_2d(box, px, u, v, azimuth, 300.0, 2.7, 0.1)
    cu = ctf_2d(box, px, u, u, 0.0, 300.0, 2.7, 0.1)
    cv = ctf_2d(box, px, v, v, 0.0, 300.0, 2.7, 0.1)
    kx, ky = frequency_grid(box, px)
    angle = np.rad2deg(np.arctan2(ky, kx))
    along = np.isclose(angle, azimuth, atol=0.5) | np.isclose(angle, azimuth - 180, atol=0.5)
    across = np.isclose(angle, azimuth + 90, atol=0.5) | np.isclose(angle, azimuth - 90, atol=0.5)
    assert along.sum() > 5 and across.sum() > 5
    np.testing.assert_allclose(c[along], cu[along], atol=0.05)
    np.testing.assert_allclose(c[across], cv[across], atol=0.05)


def test_layout_broadcasting_envelope_and_phase_shift():
    full = ctf_2d(32, 2.0, [9000.0, 15000.0], [8000.0, 14000.0], [10.0, 80.0], 300.0, 2.7, 0.07)
    half = ctf_2d(32, 2.0, [9000.0, 15000.0], [8000.0, 14000.0], [10.0, 80.0], 300.0, 2.7, 0.07, rfft=True)
    assert full.shape == (2, 32, 32) and half.shape == (2, 32, 17)
    # Same values except the Nyquist column, where rfft2 has kx = +1/2 and fft2's grid kx = −1/2 (which
    # differ under astigmatism).
    np.testing.assert_allclose(half[..., :16], full[..., :16])
    kx, ky = frequency_grid(32, 2.0)
    damped = ctf_2d(32, 2.0, 9000.0, 9000.0, 0.0, 300.0, 2.7, 0.07, bfactor=100.0)
    plain = ctf_2d(32, 2.0, 9000.0, 9000.0, 0.0, 300.0, 2.7, 0.07)
    np.testing.assert_allclose(damped, plain * np.exp(-100.0 * (kx**2 + ky**2) / 4))
    # A 90° phase plate with no amplitude contrast starts at +1.
    assert ctf_2d(32, 2.0, 9000.0, 9000.0, 0.0, 300.0, 2.7, 0.0, phase_shift=90.0)[0, 0] == pytest.approx(1.0)


def test_ctf_params():
    n = 3
    p = CtfParams(defocus_u=np.array([10000.0, 20000.0, 30000.0]), defocus_v=np.array([9000.0, 19000.0, 29000.0]),
                  defocus_angle=np.full(n, 5.0), voltage=np.full(n, 300.0), cs=np.full(n, 2.7),
                  amplitude_contrast=np.full(n, 0.1), phase_shift=np.zeros(n), bfactor=np.zeros(n))
    assert len(p) == 3
    sub = p.take(np.array([2, 0]))
    np.testing.assert_array_equal(sub.defocus_u, [30000.0, 10000.0])
    np.testing.assert_allclose(sub.ctf(16, 2.0)[0], ctf_2d(16, 2.0, 30000.0, 29000.0, 5.0, 300.0, 2.7, 0.1))
    assert p.ctf(16, 2.0, rfft=True).shape == (3, 16, 9)


@pytest.mark.relion
@pytest.mark.shared_data
def test_matches_relion_project_ctf(tmp_path, shared_data, require_relion):
    """relion_project --ctf divided by relion_project without CTF, in Fourier space, is our CTF."""
    from relion_canon.io import write_star

    params = [(15000.0, 9000.0, 30.0, 0.0, 0.0), (8000.0, 7000.0, -40.0, 90.0, 100.0)]
    table = pd.DataFrame(params, columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                                          "rlnCtfBfactor"])
    table.insert(0, "rlnImageName", ["000001@x.mrcs", "000002@x.mrcs"])
    for label, value in (("rlnAngleRot", 20.0), ("rlnAngleTilt", 40.0), ("rlnAnglePsi", 60.0)):
        table[label] = value
    table["rlnOpticsGroup"] = 1
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnAmplitudeContrast": [0.07],
                           "rlnSphericalAberration": [2.0], "rlnVoltage": [200.0], "rlnImagePixelSize": [2.0],
                           "rlnImageSize": [64], "rlnImageDimensionality": [2]})
    write_star({"optics": optics, "particles": table}, tmp_path / "ang.star", version=30001)
    hand = shared_data / "maps" / "hand-vol.mrc"
    for name, extra in (("plain", []), ("ctf", ["--ctf"])):
        subprocess.run(["relion_project", "--i", str(hand), "--o", name, "--ang", "ang.star", "--angpix", "2",
                        *extra], check=True, capture_output=True, cwd=tmp_path)
    plain = np.fft.fft2(mrcfile.read(tmp_path / "plain.mrcs").astype(np.float64))
    with_ctf = np.fft.fft2(mrcfile.read(tmp_path / "ctf.mrcs").astype(np.float64))
    ours = ctf_2d(64, 2.0, table.rlnDefocusU, table.rlnDefocusV, table.rlnDefocusAngle, 200.0, 2.0, 0.07,
                  phase_shift=table.rlnPhaseShift, bfactor=table.rlnCtfBfactor)
    for i in range(2):
        strong = np.abs(plain[i]) > 0.05 * np.abs(plain[i]).max()
        ratio = (with_ctf[i][strong] / plain[i][strong]).real
        np.testing.assert_allclose(ratio, ours[i][strong], atol=0.01)
