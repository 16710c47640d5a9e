"""cryoSPARC .cs <-> RELION tables: the closed-form conversions on the real fixtures, joins, write-back, bad input."""

from __future__ import annotations

import sys
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

J2 = "formats/cryosparc/cryosparc_J2_particles_exported.cs"
J24 = "formats/cryosparc/cryosparc_P12_J24_001_particles.cs"
EMPIAR_CS = "formats/mixed/empiar_10076_7.cs"
EMPIAR_STAR = "formats/mixed/empiar_10076_7.star"


def relion_matrix(euler_deg: np.ndarray) -> np.ndarray:
    """RELION's Euler_angles2matrix (src/euler.cpp), written out independently of the code under test."""
    rot, tilt, psi = np.deg2rad(euler_deg).T
    ca, sa, cb, sb, cg, sg = np.cos(rot), np.sin(rot), np.cos(tilt), np.sin(tilt), np.cos(psi), np.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([
        np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        np.stack([sc, ss, cb], -1),
    ], -2)


@pytest.fixture
def no_cryosparc_tools(monkeypatch):
    """Make `import cryosparc` fail, as on a machine without the optional extra."""
    for name in [m for m in sys.modules if m == "cryosparc" or m.startswith("cryosparc.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryosparc", None)
    monkeypatch.setitem(sys.modules, "cryosparc.dataset", None)


# --- the real pair: the same 7 particles as .cs and as RELION STAR ---------------------------------------------------


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


def test_empiar_star_converts_to_its_cs(shared_data):
    real = C.load_cs(shared_data / EMPIAR_CS)
    made = C.star_to_records(read_star(shared_data / EMPIAR_STAR), box=320)
    for field in ("ctf/df1_A", "ctf/df2_A", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "blob/idx", "blob/shape",
                  "ctf/phase_shift_rad"):
        np.testing.assert_array_equal(made[field], real[field], err_msg=field)
    np.testing.assert_allclose(made["ctf/df_angle_rad"], real["ctf/df_angle_rad"], atol=1e-7)
    np.testing.assert_allclose(made["blob/psize_A"], real["blob/psize_A"], rtol=1e-7)
    assert {p.decode() for p in made["blob/path"]} == {p.decode() for p in real["blob/path"]}
    assert len(np.unique(made["uid"])) == 7  # fresh random uids, as cryoSPARC makes them


def test_images_of_the_cs_are_those_of_the_stack(shared_data):
    import mrcfile

    star = C.read_cs(shared_data / EMPIAR_CS)
    with ParticleSource.from_star(star) as source:
        images = source.read(np.arange(7))
    with mrcfile.open(shared_data / "formats/mixed/empiar_10076_7.mrc") as m:
        np.testing.assert_array_equal(images, m.data)


# --- poses ----------------------------------------------------------------------------------------------------------


def test_j24_poses_convert_to_relion_euler_angles_and_back(shared_data):
    records = C.load_cs(shared_data / J24)
    pose = records["alignments3D/pose"].astype(np.float64)
    euler = C.pose3d_to_euler(pose)
    # RELION's matrix of the angles is the transpose of the rotation the cryoSPARC vector describes.
    np.testing.assert_allclose(relion_matrix(euler), Rotation.from_rotvec(pose).as_matrix().transpose(0, 2, 1),
                               atol=1e-9)
    assert euler[:, 1].min() >= 0 and euler[:, 1].max() <= 180
    assert np.all((euler[:, [0, 2]] >= -180) & (euler[:, [0, 2]] < 180))

    back = C.euler_to_pose3d(euler)
    # Vectors longer than π (present in this file) come back as the same rotation the short way round.
    norm = np.linalg.norm(pose, axis=1)
    assert (norm > np.pi).any()
    short = np.where((norm > np.pi)[:, None], -pose * ((2 * np.pi - norm) / norm)[:, None], pose)
    np.testing.assert_allclose(back, short, atol=1e-9)


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


def test_in_plane_pose_and_gimbal_lock():
    theta = np.array([0.3, 2.0, 4.0, 6.2])
    euler = C.pose3d_to_euler(np.c_[np.zeros((4, 2)), theta])
    np.testing.assert_allclose(euler[:, :2], 0, atol=1e-12)  # all of it in psi, as for a 2D pose
    np.testing.assert_allclose(euler[:, 2], C.pose2d_to_psi(theta))
    upside = Rotation.from_euler("ZYZ", [[30, 180, 70]], degrees=True).as_rotvec()
    e = C.pose3d_to_euler(upside)
    assert e[0, 0] == 0 and e[0, 1] == pytest.approx(180)
    np.testing.assert_allclose(relion_matrix(e), Rotation.from_rotvec(upside).as_matrix().transpose(0, 2, 1),
                               atol=1e-9)


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


# --- reading, joining, formats, bad input ---------------------------------------------------------------------------


def _fields(records: np.ndarray, prefixes: tuple[str, ...]) -> np.ndarray:
    names = ["uid"] + [n for n in records.dtype.names if n.startswith(prefixes)]
    out = np.zeros(len(records), [(n, records.dtype[n]) for n in names])
    for n in names:
        out[n] = records[n]
    return out


def test_passthrough_joins_on_uid_in_main_order(shared_data, tmp_path):
    full = C.load_cs(shared_data / J2)
    main = _fields(full, ("blob/", "alignments2D/"))[::-1]
    pt = _fields(full, ("ctf/",))[np.random.default_rng(0).permutation(len(full))]
    more = np.zeros(3, pt.dtype)  # a passthrough may hold particles the main file lacks
    more["uid"] = [1, 2, 3]
    save_records(main, tmp_path / "J2_particles.cs")
    save_records(np.concatenate([pt, more]), tmp_path / "J2_passthrough_particles.cs")

    joined = C.read_cs(tmp_path / "J2_particles.cs", tmp_path / "J2_passthrough_particles.cs").particles
    whole = C.read_cs(shared_data / J2).particles.iloc[::-1].reset_index(drop=True)
    assert list(joined["rlnCanonUid"]) == list(whole["rlnCanonUid"])
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAnglePsi",
                   "rlnOriginXAngst", "rlnClassNumber"):
        np.testing.assert_array_equal(joined[column], whole[column], err_msg=column)


def test_uids_that_do_not_join_are_named(tmp_path):
    main = particle_records(5, "s.mrc", seed=1, slots=("blob",))
    pt = particle_records(5, "s.mrc", seed=1, slots=("ctf",))
    pt["uid"][2] = 12345
    save_records(main, tmp_path / "a.cs")
    save_records(pt, tmp_path / "b.cs")
    with pytest.raises(InputError) as err:
        C.read_cs(tmp_path / "a.cs", tmp_path / "b.cs")
    assert err.value.row == 3 and str(main["uid"][2]) in str(err.value) and "1 of 5" in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "a.cs"))


def test_repeated_uid_is_refused(tmp_path):
    rec = particle_records(4, "s.mrc")
    rec["uid"][3] = rec["uid"][1]
    save_records(rec, tmp_path / "a.cs")
    with pytest.raises(InputError, match=r"appears more than once \(rows 2 and 4\)"):
        C.read_cs(tmp_path / "a.cs")


def test_cs_without_blob_fields_is_refused(tmp_path):
    save_records(particle_records(4, "s.mrc", slots=("ctf", "alignments2D")), tmp_path / "J3_passthrough.cs")
    with pytest.raises(InputError, match="no blob/path / blob/idx field.*give the passthrough"):
        C.read_cs(tmp_path / "J3_passthrough.cs")


@pytest.mark.parametrize("content, what", [(b"", "empty"), (b"data_\nloop_\n", "neither NumPy nor CSDAT")])
def test_not_a_cs_file(tmp_path, content, what):
    (tmp_path / "x.cs").write_bytes(content)
    with pytest.raises(InputError, match=what):
        C.load_cs(tmp_path / "x.cs")


def test_csdat_format_reads_like_numpy_format(shared_data, tmp_path):
    dataset = pytest.importorskip("cryosparc.dataset")
    dset = dataset.Dataset.load(shared_data / J2)
    dset.save(tmp_path / "J2_csdat.cs", format=dataset.CSDAT_FORMAT)
    assert (tmp_path / "J2_csdat.cs").read_bytes()[:6] == C.CSDAT_MAGIC
    a = C.read_cs(tmp_path / "J2_csdat.cs").particles
    b = C.read_cs(shared_data / J2).particles
    assert a.drop(columns="rlnImageName").equals(b.drop(columns="rlnImageName"))


def test_without_cryosparc_tools_numpy_reads_and_csdat_is_refused(shared_data, tmp_path, no_cryosparc_tools):
    plain = C.load_cs(shared_data / J2)
    assert plain.dtype["blob/path"].kind == "S" and len(plain) == 22
    (tmp_path / "x.cs").write_bytes(C.CSDAT_MAGIC + b"\x00" * 64)
    with pytest.raises(InputError, match=r"CSDAT format, which needs cryosparc-tools: pip install"):
        C.load_cs(tmp_path / "x.cs")


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


# --- write-back -----------------------------------------------------------------------------------------------------


def _results(star, seed=0):
    """A job's result table: the input columns plus our estimates, rows shuffled."""
    rng = np.random.default_rng(seed)
    n = len(star)
    psi = rng.uniform(-180, 180, n)
    out = star.with_columns({"rlnAnglePsi": psi, "rlnAnglePsiPrior": psi, "rlnCanonDefocus": rng.uniform(1e4, 2e4, n),
                             "rlnParticleFigureOfMerit": rng.uniform(0, 5, n),
                             "rlnParticleSelectZScore": rng.normal(size=n),
                             "rlnCanonIsOutlier": (np.arange(n) % 4 == 0).astype(int)})
    return out.with_particles(out.particles.iloc[rng.permutation(n)].reset_index(drop=True))


def test_results_go_back_into_the_input_records(shared_data):
    records = C.load_cs(shared_data / J2)
    results = _results(C.records_to_star(records, shared_data / J2))
    out = C.results_to_records(records, results)
    p = results.particles
    np.testing.assert_array_equal(out["uid"], p["rlnCanonUid"].to_numpy(np.uint64))
    by_uid = {u: i for i, u in enumerate(records["uid"])}
    rows = [by_uid[u] for u in out["uid"]]
    for name in records.dtype.names:  # every input field, unchanged, except the pose we set
        if name != "alignments2D/pose":
            np.testing.assert_array_equal(out[name], records[name][rows], err_msg=name)
    np.testing.assert_allclose(out["alignments2D/pose"], np.deg2rad(p["rlnAnglePsi"]) % (2 * np.pi), atol=1e-6)
    assert out["alignments2D/pose"].min() >= 0 and out["alignments2D/pose"].max() < 2 * np.pi
    np.testing.assert_allclose(out["relion_canon/defocus_A"], p["rlnCanonDefocus"], rtol=1e-6)
    np.testing.assert_allclose(out["relion_canon/weight"], p["rlnParticleFigureOfMerit"], rtol=1e-6)
    np.testing.assert_allclose(out["relion_canon/outlier_score"], p["rlnParticleSelectZScore"], rtol=1e-6)
    np.testing.assert_array_equal(out["relion_canon/is_outlier"], p["rlnCanonIsOutlier"])
    np.testing.assert_allclose(out["relion_canon/pose"], out["alignments2D/pose"], atol=1e-6)
    # And read back as a table, our columns come back under their RELION names.
    again = C.records_to_star(out, shared_data / J2).particles
    np.testing.assert_allclose(again["rlnCanonDefocus"], p["rlnCanonDefocus"], rtol=1e-6)
    np.testing.assert_allclose(again["rlnAnglePsi"], p["rlnAnglePsi"], atol=1e-4)


def test_a_whole_alignments2d_slot_is_added_where_the_input_has_none(shared_data):
    records = C.load_cs(shared_data / EMPIAR_CS)
    results = _results(C.records_to_star(records, shared_data / EMPIAR_CS))
    out = C.results_to_records(records, results)
    j2 = C.load_cs(shared_data / J2)  # a real 2D classification: the slot as cryoSPARC writes it
    assert [n for n in out.dtype.names if n.startswith("alignments2D/")] == \
           [n for n in j2.dtype.names if n.startswith("alignments2D/")]
    np.testing.assert_array_equal(out["alignments2D/psize_A"], out["blob/psize_A"])
    np.testing.assert_array_equal(out["alignments2D/shift"], 0)
    np.testing.assert_allclose(out["alignments2D/pose"], C.psi_to_pose2d(results.particles["rlnAnglePsi"]), atol=1e-6)


def test_results_with_an_unknown_uid(shared_data):
    records = C.load_cs(shared_data / J2)
    results = _results(C.records_to_star(records, shared_data / J2))
    results.particles.loc[4, "rlnCanonUid"] = 7
    with pytest.raises(InputError) as err:
        C.results_to_records(records, results)
    assert err.value.row == 5 and "rlnCanonUid 7 is not a particle of the input .cs" in str(err.value)


def test_csg_lists_every_cryosparc_slot_of_its_cs(shared_data, tmp_path):
    yaml = pytest.importorskip("yaml")
    records = C.load_cs(shared_data / J2)
    out = C.results_to_records(records, _results(C.records_to_star(records, shared_data / J2)))
    cs = C.save_cs(out, tmp_path / "particles.cs")
    csg = C.write_csg(tmp_path / "particles.csg", cs, out, "particles", "All particles", "it's a test")
    doc = yaml.safe_load(csg.read_text())
    assert doc["group"] == {"name": "particles", "title": "All particles", "type": "particle",
                            "description": "it's a test"}
    assert set(doc["results"]) == {"blob", "ctf", "alignments2D"}  # not our own slot: no cryoSPARC type for it
    for slot, entry in doc["results"].items():
        assert entry == {"metafile": ">particles.cs", "num_items": 22, "type": f"particle.{slot}"}
    back = np.load(cs)  # NUMPY format, as cryoSPARC reads it
    assert back.dtype == out.dtype and (back == out).all()
