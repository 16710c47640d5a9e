""".cs -> RELION table: the closed-form conversions on the real fixtures, image names and stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as C
from relion_canon.io.imagename import parse_image_name
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import read_star
from tests.cryosparc.helpers import make_project, particle_records, save_records
from tests.io.cryosparc_files.helpers import EMPIAR_CS, EMPIAR_STAR, J2, J24


def test_empiar_cs_reads_as_its_relion_star(shared_data):
    from_cs = C.read_cs(shared_data / EMPIAR_CS)
    star = read_star(shared_data / EMPIAR_STAR)
    a, b = from_cs.ctf_params(), star.ctf_params()
    # float32 values in the .cs read as the numbers RELION wrote (15301.1, not 15301.099609375).
    for name in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # The STAR gives detector pixel / magnification, the .cs blob/psize_A in float32.
    np.testing.assert_allclose(from_cs.optics().pixel_size, star.optics().pixel_size, rtol=1e-7)
    refs_cs = [parse_image_name(n) for n in from_cs.image_names]
    refs_star = [parse_image_name(n) for n in star.image_names]
    assert [r.index for r in refs_cs] == [r.index for r in refs_star] == list(range(7))
    assert {Path(r.path).name for r in refs_cs} == {Path(r.path).name for r in refs_star}
    assert from_cs.generation == "3.1" and len(from_cs.optics_table) == 1


def test_images_of_the_cs_are_those_of_the_stack(shared_data):
    import mrcfile

    star = C.read_cs(shared_data / EMPIAR_CS)
    with ParticleSource.from_star(star) as source:
        images = source.read(np.arange(7))
    with mrcfile.open(shared_data / "formats/mixed/empiar_10076_7.mrc") as m:
        np.testing.assert_array_equal(images, m.data)


def test_j24_star_table_has_euler_angles_origins_and_halves(shared_data):
    records = C.load_cs(shared_data / J24)
    star = C.records_to_star(records, shared_data / J24)
    p = star.particles
    np.testing.assert_allclose(p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(),
                               C.pose3d_to_euler(records["alignments3D/pose"]))
    expected = records["alignments3D/shift"] * records["alignments3D/psize_A"][:, None]
    np.testing.assert_allclose(p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(p["rlnRandomSubset"], records["alignments3D/split"] + 1)
    np.testing.assert_array_equal(p["rlnCanonUid"].to_numpy(np.uint64), records["uid"])
    np.testing.assert_allclose(p["rlnDefocusAngle"], np.rad2deg(records["ctf/df_angle_rad"]), rtol=1e-6)
    # And back: the rotation, shifts and CTF of every particle survive STAR -> .cs.
    again = C.star_to_records(star)
    np.testing.assert_allclose(Rotation.from_rotvec(again["alignments3D/pose"]).as_matrix(),
                               Rotation.from_rotvec(records["alignments3D/pose"]).as_matrix(), atol=1e-6)
    np.testing.assert_allclose(again["alignments3D/shift"], records["alignments3D/shift"], atol=1e-5)
    np.testing.assert_array_equal(again["uid"], records["uid"])
    np.testing.assert_array_equal(again["ctf/df1_A"], records["ctf/df1_A"])


def test_j2_in_plane_poses_to_psi_and_back(shared_data):
    records = C.load_cs(shared_data / J2)
    pose = records["alignments2D/pose"].astype(np.float64)
    p = C.records_to_star(records, shared_data / J2).particles
    psi = p["rlnAnglePsi"].to_numpy()
    assert psi.min() >= -180 and psi.max() < 180
    np.testing.assert_allclose(np.deg2rad(psi) % (2 * np.pi), pose, atol=1e-12)
    back = C.psi_to_pose2d(psi)
    assert back.min() >= 0 and back.max() < 2 * np.pi
    np.testing.assert_allclose(back, pose, atol=1e-12)
    np.testing.assert_array_equal(p["rlnClassNumber"], records["alignments2D/class"] + 1)
    np.testing.assert_allclose(p["rlnOriginXAngst"], records["alignments2D/shift"][:, 0] * 1.3450001, rtol=1e-6)
    # Exported files name stacks with a leading '>': it is not part of the path.
    assert not any(">" in n for n in p["rlnImageName"])


def test_one_optics_group_per_exposure_group_and_back(tmp_path):
    rec = particle_records(6, "s.mrc")
    rec["ctf/exp_group_id"] = [7, 3, 3, 7, 3, 3]
    rec["ctf/accel_kv"][5] = 200  # same exposure group, other optics: a group of its own
    star = C.records_to_star(rec, tmp_path / "x.cs")
    optics = star.optics_table
    assert optics["rlnOpticsGroup"].tolist() == [1, 2, 3]  # RELION indexes its optics table by these
    assert optics["rlnOpticsGroupName"].tolist() == ["exp_group_3_1", "exp_group_3_2", "exp_group_7"]
    assert star.particles["rlnOpticsGroup"].tolist() == [3, 2, 2, 3, 2, 1]
    np.testing.assert_array_equal(star.optics().voltage, rec["ctf/accel_kv"])
    back = C.star_to_records(star)
    np.testing.assert_array_equal(back["ctf/exp_group_id"], rec["ctf/exp_group_id"])
    np.testing.assert_array_equal(back["ctf/accel_kv"], rec["ctf/accel_kv"])


def test_project_dir_makes_image_names_point_into_it(tmp_path):
    cs, records, images = make_project(tmp_path / "P1")
    star = C.read_cs(cs, project_dir=tmp_path / "P1")
    assert all(Path(parse_image_name(n).path).is_absolute() for n in star.image_names)
    with ParticleSource.from_star(star) as source:  # no project dir needed any more
        np.testing.assert_array_equal(source.read(np.arange(len(records))), images)


def test_stacks_found_from_a_job_folder_or_an_export(tmp_path, monkeypatch):
    cs, records, images = make_project(tmp_path / "P1")
    monkeypatch.chdir(tmp_path)
    # In its job folder J6/, the .cs names stacks relative to the project folder around it.
    with ParticleSource.from_star(C.read_cs(cs)) as source:
        np.testing.assert_array_equal(source[3], images[3])
    # An export puts the .cs beside the stack folders and prefixes paths with '>'.
    exported = records.copy()
    exported["blob/path"] = b">J5/extract/mic_particles.mrc"
    save_records(exported, tmp_path / "P1" / "P1_J6_particles_exported.cs")
    with ParticleSource.from_star(C.read_cs(tmp_path / "P1" / "P1_J6_particles_exported.cs")) as source:
        np.testing.assert_array_equal(source[5], images[5])


def test_stack_that_does_not_resolve(shared_data, tmp_path):
    with pytest.raises(InputError) as err:
        C.read_cs(shared_data / J24, project_dir=tmp_path)
    assert "stack J19/extract/" in str(err.value) and f"not found in the project directory {tmp_path}" in str(err.value)
    assert err.value.row == 1
    # Without a project folder the table reads (metadata is enough for `convert`), opening the images fails.
    star = C.read_cs(shared_data / J24)
    with pytest.raises(InputError, match=r"cryosparc_P12_J24_001_particles.cs, row 1: image stack J19/extract/.* not"):
        ParticleSource.from_star(star)
    with pytest.raises(InputError, match="give --project-dir"):
        C.read_cs(shared_data / J24, require_stacks=True)
