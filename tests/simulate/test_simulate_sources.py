"""Sources: the built-in phantom, MRC maps (resampled), atomic models (gemmi), and bad inputs."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_canon.errors import InputError
from relion_canon.io import read_map, write_map
from relion_canon.simulate import (
    SimulationConfig,
    load_source,
    phantom_volume,
    read_ground_truth,
    resample_map,
    simulate_dataset,
)
from relion_canon.simulate.phantom import phantom_atoms
from relion_canon.simulate.sources import fourier_crop

SMALL = SimulationConfig(n_particles=20, box=32, pixel_size=5.0, seed=1)


def _centre_of_mass(vol: np.ndarray) -> np.ndarray:
    w = np.clip(vol, 0, None)
    idx = np.indices(vol.shape).reshape(3, -1)
    return (idx * w.ravel()).sum(1) / w.sum()


def test_phantom_is_fixed_asymmetric_and_fits():
    a = phantom_volume(48)
    np.testing.assert_array_equal(a, phantom_volume(48))
    assert not np.allclose(a, phantom_volume(48, seed=1), atol=1e-3)
    assert a.min() >= 0 and a.max() > 0
    assert np.allclose(_centre_of_mass(a), 24, atol=4)
    edge = np.concatenate([a[:3].ravel(), a[-3:].ravel(), a[:, :3].ravel(), a[:, -3:].ravel()])
    assert edge.max() < 0.05 * a.max()  # the molecule sits well inside the box
    # No mirror symmetry across the principal planes (asymmetric, chiral layout).
    for axis in range(3):
        assert np.corrcoef(a.ravel(), np.flip(a, axis).ravel())[0, 1] < 0.9


def test_phantom_coil_is_right_handed():
    centres, sigmas, _ = phantom_atoms()
    coil = centres[-90:]  # the coiled rod is the last component
    d1 = np.gradient(coil, axis=0)
    d2 = np.gradient(d1, axis=0)
    d3 = np.gradient(d2, axis=0)
    torsion = np.einsum("ij,ij->i", np.cross(d1, d2), d3)
    assert np.median(torsion) > 0


def test_map_resampling_keeps_centre_and_scale(shared_data):
    # A blob at a known place (x, y, z) = (+6, −4, +3) Å from the centre voxel, in a 1 Å map.
    n = 64
    z, y, x = np.indices((n, n, n)) - n // 2
    blob = np.exp(-((x - 6) ** 2 + (y + 4) ** 2 + (z - 3) ** 2) / (2 * 3.0**2))
    for box, px in ((32, 2.5), (48, 0.7)):
        out = resample_map(blob, 1.0, box, px)
        assert out.shape == (box, box, box)
        np.testing.assert_allclose((_centre_of_mass(out) - box // 2) * px, [3, -4, 6], atol=0.05)  # (z, y, x)
        assert out.sum() * px**3 == pytest.approx(blob.sum(), rel=0.01)
    data, apix = read_map(shared_data / "maps" / "hand-vol.mrc")
    assert apix == 1.0
    assert resample_map(data, 1.0, 64, 2.5).sum() * 2.5**3 == pytest.approx(data.sum(), rel=0.02)
    # Same pixel size: plain re-boxing about the centre voxel.
    np.testing.assert_array_equal(resample_map(data, 1.0, 32, 1.0), data[16:48, 16:48, 16:48])


def test_fourier_crop_matches_a_smooth_function():
    n = 32
    z, y, x = np.indices((n, n, n)) - n // 2
    vol = np.exp(-(x**2 + (y - 2) ** 2 + z**2) / (2 * 4.0**2))
    out = fourier_crop(vol, 16)
    z, y, x = np.indices((16, 16, 16)) - 8
    expected = np.exp(-((2 * x) ** 2 + (2 * y - 2) ** 2 + (2 * z) ** 2) / (2 * 4.0**2))
    np.testing.assert_allclose(out, expected, atol=0.02)


def test_map_without_voxel_size_needs_map_pixel_size(shared_data, tmp_path):
    ribosome = shared_data / "maps" / "clean70SRibosome_vol_65p.mrc"
    with pytest.raises(InputError, match="--map-pixel-size") as exc:
        load_source(ribosome, 32, 5.0)
    assert str(ribosome) in str(exc.value)
    vol = load_source(ribosome, 32, 5.0, map_pixel_size=3.0)
    assert vol.data.shape == (32, 32, 32) and vol.info["map_pixel_size"] == 3.0
    result = simulate_dataset(replace(SMALL, source=str(ribosome), map_pixel_size=3.0), tmp_path / "ribo")
    assert result.n_particles == 20


def test_atomic_model_source(shared_data, tmp_path):
    import gemmi

    path = shared_data / "models" / "8zpm.cif"
    vol = load_source(path, 64, 2.5)
    assert vol.data.shape == (64, 64, 64) and vol.info["atoms"] > 3000
    assert vol.data.max() > 0
    np.testing.assert_allclose(_centre_of_mass(vol.data), 32, atol=1.0)  # centred on the model
    # Axes and hand: the density's covariance (x, y, z) matches the atoms' (a transposed or mirrored
    # map would swap or negate the off-diagonal terms).
    st = gemmi.read_structure(str(path))
    st.remove_waters()
    pos = np.array([a.pos.tolist() for ch in st[0] for r in ch for a in r])
    atoms = np.cov(pos.T)
    w = np.clip(vol.data, 0, None).ravel()
    zyx = np.indices(vol.data.shape).reshape(3, -1) * 2.5
    m = (zyx * w).sum(1) / w.sum()
    dens = ((zyx - m[:, None]) * w) @ (zyx - m[:, None]).T / w.sum()
    dens = dens[::-1, ::-1]  # (z, y, x) → (x, y, z)
    assert np.argmax(np.diag(dens)) == np.argmax(np.diag(atoms))
    for i, j in ((0, 2), (1, 2)):
        assert np.sign(dens[i, j]) == np.sign(atoms[i, j])

    result = simulate_dataset(replace(SMALL, box=64, pixel_size=2.5, source=str(path), n_particles=10), tmp_path / "m")
    assert result.info["source"]["kind"] == "model"
    assert len(read_ground_truth(tmp_path / "m")) == 10


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    garbage = tmp / "garbage.mrc"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    flat = tmp / "flat.mrc"
    with mrcfile.new(flat) as m:
        m.set_data(np.zeros((16, 32, 32), np.float32))
        m.voxel_size = 2.0
    model = tmp / "broken.pdb"
    model.write_text("this is not a PDB file\n")
    cif = tmp / "broken.cif"
    cif.write_text("data_x\nloop_\n_atom_site.id\n")
    return {
        "missing": tmp / "nowhere.mrc",
        "garbage": garbage,
        "non-cubic": flat,
        "unknown extension": tmp / "volume.xyz",
        "unreadable model": model,
        "model without atoms": cif,
        "missing model": tmp / "nothing.cif",
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "non-cubic", "unknown extension", "unreadable model",
                                  "model without atoms", "missing model"])
def test_bad_sources_raise_input_error(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        simulate_dataset(replace(SMALL, source=str(path)), out)
    message = str(exc.value)
    assert str(path) in message and "\n" not in message
    assert not out.exists()


def test_empty_map_is_an_input_error(tmp_path):
    path = write_map(tmp_path / "zeros.mrc", np.zeros((16, 16, 16), np.float32), 5.0)
    with pytest.raises(InputError, match="empty"):
        simulate_dataset(replace(SMALL, source=str(path), box=16), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_snr_with_map_source_is_normalised(shared_data, tmp_path):
    out = tmp_path / "hand"
    result = simulate_dataset(
        replace(SMALL, source=str(shared_data / "maps" / "hand-vol.mrc"), box=64, pixel_size=2.5, snr=math.inf,
                n_particles=10),
        out,
    )
    images = mrcfile.read(out / "particles.mrcs")
    assert result.noise_sigma == 0.0 and images.var(axis=(1, 2)).mean() == pytest.approx(1.0, rel=0.3)
