from __future__ import annotations

import numpy as np
import pytest

from relion_canon.ctf import CtfParams, ctf_2d
from relion_canon.preprocess import PreprocessConfig, Preprocessor


def _ctf(n):
    return CtfParams(
        defocus_u=np.linspace(8000, 20000, n), defocus_v=np.linspace(7800, 19800, n), defocus_angle=np.full(n, 30.0),
        voltage=np.full(n, 300.0), cs=np.full(n, 2.7), amplitude_contrast=np.full(n, 0.1),
        phase_shift=np.zeros(n), bfactor=np.zeros(n),
    )


def test_downsample_normalise_mask_shapes_and_pixel_size():
    pre = Preprocessor(PreprocessConfig(box=32, mask_radius_fraction=0.9), 64, np.full(5, 1.5))
    out = pre(np.random.default_rng(0).normal(size=(5, 64, 64)).astype(np.float32))
    assert out.shape == (5, 32, 32)
    np.testing.assert_allclose(pre.out_pixel_size, 3.0)
    assert np.all(out[:, 0, 0] == 0)  # masked corner


def test_phase_flip_makes_ctf_positive():
    n, box, px = 3, 64, 2.0
    ctf = _ctf(n)
    rng = np.random.default_rng(0)
    signal = np.fft.fft2(rng.normal(size=(n, box, box)))
    # An astigmatic CTF is not Hermitian on the Nyquist row/column of an even box; keep the test signal off it.
    signal[:, box // 2, :] = 0
    signal[:, :, box // 2] = 0
    modulated = np.fft.ifft2(signal * ctf.ctf(box, px)).real.astype(np.float32)
    pre = Preprocessor(PreprocessConfig(normalise=False, phase_flip=True), box, np.full(n, px), ctf)
    flipped = pre(modulated, np.arange(n))
    expected = np.fft.ifft2(signal * np.abs(ctf_2d(box, px, ctf.defocus_u, ctf.defocus_v, ctf.defocus_angle, 300.0, 2.7, 0.1))).real
    np.testing.assert_allclose(flipped, expected, atol=1e-3)


def test_phase_flip_needs_ctf_and_indices():
    with pytest.raises(ValueError, match="CTF"):
        Preprocessor(PreprocessConfig(phase_flip=True), 32, np.ones(2))
    pre = Preprocessor(PreprocessConfig(phase_flip=True), 32, np.ones(2), _ctf(2))
    with pytest.raises(ValueError, match="indices"):
        pre(np.zeros((2, 32, 32), np.float32))


def test_upsampling_refused():
    with pytest.raises(ValueError, match="larger box"):
        Preprocessor(PreprocessConfig(box=128), 64, np.ones(1))


def test_config_round_trip():
    cfg = PreprocessConfig(box=48, mask_radius_fraction=0.8, phase_flip=True)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
