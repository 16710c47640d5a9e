"""STAR reading of every RELION generation against the real files in ../shared/data/formats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from relion_canon.errors import InputError
from relion_canon.io import read_star, write_star


def _raw_table(path, block):
    return starfile.read(path, always_dict=True)[block]


@pytest.mark.parametrize(
    "name, generation, block, n, version",
    [
        ("relion/relion31.star", "3.1", "particles", 5, 30001),
        ("relion/relion31.6opticsgroups.star", "3.1", "particles", 139, None),
        ("relion/relion5.star", "5.0", "particles", 17, 50001),
        ("relion/FinalRefinement-OriginalParticles-PfCRT.star", "3.0", "images", 5, None),
        ("mixed/empiar_10076_7.star", "3.0", "", 7, None),
        ("relion/rln_proj_65.star", "3.1", "particles", 5, 30001),
    ],
)
def test_reads_every_generation(shared_data, name, generation, block, n, version):
    star = read_star(shared_data / "formats" / name)
    assert star.generation == generation
    assert star.particles_block == block
    assert star.version == version
    assert len(star) == n
    # Values equal what the file holds (parsed independently, column by column).
    raw = _raw_table(shared_data / "formats" / name, block)
    pd.testing.assert_frame_equal(star.particles, raw)


def test_optics_resolved_per_particle_through_group(shared_data):
    path = shared_data / "formats/relion/relion31.6opticsgroups.star"
    star = read_star(path)
    optics = star.optics()
    raw = _raw_table(path, "optics").set_index("rlnOpticsGroup")
    groups = star.particles["rlnOpticsGroup"].to_numpy()
    assert len(np.unique(groups)) > 1  # the point of this fixture
    np.testing.assert_array_equal(optics.pixel_size, raw.loc[groups, "rlnImagePixelSize"].to_numpy())
    np.testing.assert_array_equal(optics.cs, raw.loc[groups, "rlnSphericalAberration"].to_numpy())
    np.testing.assert_array_equal(optics.voltage, raw.loc[groups, "rlnVoltage"].to_numpy())
    assert set(optics.pixel_size) == {1.24, 1.25}
    assert not optics.missing


def test_relion30_optics_from_particle_columns(shared_data):
    star = read_star(shared_data / "formats/mixed/empiar_10076_7.star")
    optics = star.optics()
    # Pixel size from detector pixel (5 µm) and magnification (38168), as RELION 3.0 computes it.
    np.testing.assert_allclose(optics.pixel_size, 5 * 1e4 / 38168)
    np.testing.assert_array_equal(optics.voltage, 300)
    np.testing.assert_array_equal(optics.amplitude_contrast, 0.07)
    ctf = star.ctf_params()
    np.testing.assert_array_equal(ctf.defocus_u[:2], [15301.1, 15303.0])
    np.testing.assert_array_equal(ctf.defocus_angle, 5.28)


def test_relion30_origin_pixels_converted_to_angstrom(shared_data):
    star = read_star(shared_data / "formats/relion/FinalRefinement-OriginalParticles-PfCRT.star")
    px = star.optics().pixel_size
    raw = _raw_table(shared_data / "formats/relion/FinalRefinement-OriginalParticles-PfCRT.star", "images")
    np.testing.assert_allclose(star.origins_angstrom()[:, 0], raw["rlnOriginX"] * px)


def test_relion5_values(shared_data):
    star = read_star(shared_data / "formats/relion/relion5.star")
    optics = star.optics()
    np.testing.assert_array_equal(optics.pixel_size, 0.89)
    np.testing.assert_array_equal(optics.voltage, 100)
    assert star.particles["rlnAnglePsi"].iloc[0] == pytest.approx(141.158035)


@pytest.mark.parametrize(
    "name",
    [
        "relion/relion31.star",
        "relion/relion31.6opticsgroups.star",
        "relion/relion5.star",
        "relion/FinalRefinement-OriginalParticles-PfCRT.star",
        "mixed/empiar_10076_7.star",
    ],
)
def test_write_read_round_trip_is_lossless(shared_data, tmp_path, name):
    star = read_star(shared_data / "formats" / name)
    out = write_star(star, tmp_path / "out.star")
    again = read_star(out)
    assert list(again.blocks) == list(star.blocks)
    for key in star.blocks:
        pd.testing.assert_frame_equal(again.blocks[key], star.blocks[key])
    assert again.version == star.version or (star.version is None and star.optics_table is not None)
    assert again.generation == star.generation


def test_version_lines_written_for_relion(shared_data, tmp_path):
    star = read_star(shared_data / "formats/relion/relion5.star")
    text = write_star(star, tmp_path / "o.star").read_text()
    # RELION reads the version line that precedes each block; 5.0 files must stay 5.0.
    assert text.count("# version 50001") == 2


def test_new_columns_appended_and_input_kept(shared_data, tmp_path):
    star = read_star(shared_data / "formats/relion/relion31.star")
    new = star.with_columns({"rlnAnglePsiPrior": np.arange(5.0), "rlnParticleSelectZScore": np.linspace(0, 1, 5)})
    assert list(new.particles.columns) == list(star.particles.columns) + ["rlnAnglePsiPrior", "rlnParticleSelectZScore"]
    again = read_star(write_star(new, tmp_path / "o.star"))
    np.testing.assert_array_equal(again.particles["rlnAnglePsiPrior"], np.arange(5.0))
    pd.testing.assert_frame_equal(again.particles[star.particles.columns], star.particles)
    pd.testing.assert_frame_equal(again.optics_table, star.optics_table)
    # The input is never modified.
    assert "rlnAnglePsiPrior" not in star.particles.columns


def test_subset_keeps_order_and_blocks(shared_data):
    star = read_star(shared_data / "formats/relion/relion31.6opticsgroups.star")
    sub = star.subset(np.array([10, 3, 7]))
    assert sub.particles["rlnImageName"].tolist() == star.particles["rlnImageName"].iloc[[3, 7, 10]].tolist()
    assert sub.optics_table is star.optics_table


def test_write_is_atomic_on_failure(tmp_path, shared_data):
    star = read_star(shared_data / "formats/relion/relion31.star")
    target = tmp_path / "out.star"
    target.write_text("old content")
    bad = star.with_particles(star.particles.assign(rlnBad=[object()] * 5))
    bad.blocks["broken"] = 42  # not a table or a dict: the writer fails midway
    with pytest.raises(Exception):
        write_star(bad, target)
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.star"]


# --- bad input --------------------------------------------------------------------------------------------------


def test_missing_star(tmp_path):
    with pytest.raises(InputError, match=r"missing\.star: STAR file not found"):
        read_star(tmp_path / "missing.star")


def test_empty_star(tmp_path):
    p = tmp_path / "empty.star"
    p.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_star(p)


def test_star_without_particle_table(tmp_path):
    p = tmp_path / "optics_only.star"
    p.write_text("data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n1 300\n")
    with pytest.raises(InputError, match="no particle table"):
        read_star(p)


def test_empty_particle_table(tmp_path):
    p = tmp_path / "empty_table.star"
    p.write_text("data_particles\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n")
    with pytest.raises(InputError, match="no rows"):
        read_star(p)


def test_table_without_image_names(tmp_path):
    p = tmp_path / "noimg.star"
    p.write_text("data_particles\nloop_\n_rlnImageName #1\n1@a.mrcs\n")
    assert len(read_star(p)) == 1
    p.write_text("data_particles\nloop_\n_rlnDefocusU #1\n10000\n")
    with pytest.raises(InputError, match="data_particles has no rlnImageName column"):
        read_star(p)


def test_unknown_optics_group_names_row(tmp_path):
    p = tmp_path / "og.star"
    p.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n1 300\n\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n1@a.mrcs 1\n2@a.mrcs 3\n"
    )
    with pytest.raises(InputError, match=r"og\.star, row 2: rlnOpticsGroup 3 is not in data_optics"):
        read_star(p)


def test_missing_optics_values_named(tmp_path):
    p = tmp_path / "nocs.star"
    p.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n_rlnImagePixelSize #3\n1 300 1.0\n\n"
        "data_particles\nloop_\n_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n_rlnDefocusV #4\n"
        "1@a.mrcs 1 10000 10000\n"
    )
    star = read_star(p)
    with pytest.raises(InputError, match=r"nocs\.star: missing optics value cs \(rlnSphericalAberration\)"):
        star.ctf_params()
