"""RELION table -> .cs: fresh tables (convert) and a job's results written back into the input."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as C
from relion_canon.cli.main import cli
from relion_canon.io.imagename import format_image_name, parse_image_name
from relion_canon.io.particles import write_results_cs
from relion_canon.io.star import NO_PRIOR, read_star, write_star
from tests.io.cryosparc_files.helpers import EMPIAR_CS, EMPIAR_STAR, J2, J24, reference_results_table, results_table

EULER = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
PRIORS = ["rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior"]


def _angle_gap(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


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


def test_results_go_back_into_the_input_records(shared_data):
    records = C.load_cs(shared_data / J2)
    results = results_table(C.records_to_star(records, shared_data / J2))
    out = C.results_to_records(records, results)
    p = results.particles
    np.testing.assert_array_equal(out["uid"], p["rlnCanonUid"].to_numpy(np.uint64))
    by_uid = {u: i for i, u in enumerate(records["uid"])}
    rows = [by_uid[u] for u in out["uid"]]
    for name in records.dtype.names:  # every input field, unchanged, except the pose we set (and the shift,
        # here the input's own: see test_the_shift_is_the_one_the_job_found_not_the_inputs)
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


def test_the_shift_is_the_one_the_job_found_not_the_inputs(shared_data):
    # The pose is the job's angle; a shift from the input's own 2D classification beside it would place the
    # particle by two different alignments.
    records = C.load_cs(shared_data / J2)
    results = results_table(C.records_to_star(records, shared_data / J2))
    p = results.particles
    p["rlnOriginXAngst"] = np.linspace(-4.0, 4.0, len(p))
    p["rlnOriginYAngst"] = np.linspace(3.0, -3.0, len(p))
    out = C.results_to_records(records, results)
    psize = out["alignments2D/psize_A"].astype(np.float64)
    np.testing.assert_allclose(out["alignments2D/shift"][:, 0] * psize, p["rlnOriginXAngst"], atol=1e-5)
    np.testing.assert_allclose(out["alignments2D/shift"][:, 1] * psize, p["rlnOriginYAngst"], atol=1e-5)
    assert not np.allclose(out["alignments2D/shift"], records["alignments2D/shift"][:len(out)], atol=0.1)

def test_a_whole_alignments2d_slot_is_added_where_the_input_has_none(shared_data):
    records = C.load_cs(shared_data / EMPIAR_CS)
    results = results_table(C.records_to_star(records, shared_data / EMPIAR_CS))
    out = C.results_to_records(records, results)
    j2 = C.load_cs(shared_data / J2)  # a real 2D classification: the slot as cryoSPARC writes it
    assert [n for n in out.dtype.names if n.startswith("alignments2D/")] == \
           [n for n in j2.dtype.names if n.startswith("alignments2D/")]
    np.testing.assert_array_equal(out["alignments2D/psize_A"], out["blob/psize_A"])
    np.testing.assert_array_equal(out["alignments2D/shift"], 0)
    np.testing.assert_allclose(out["alignments2D/pose"], C.psi_to_pose2d(results.particles["rlnAnglePsi"]), atol=1e-6)


def test_results_with_an_unknown_uid(shared_data):
    records = C.load_cs(shared_data / J2)
    results = results_table(C.records_to_star(records, shared_data / J2))
    results.particles.loc[4, "rlnCanonUid"] = 7
    with pytest.raises(InputError) as err:
        C.results_to_records(records, results)
    assert err.value.row == 5 and "rlnCanonUid 7 is not a particle of the input .cs" in str(err.value)


def test_reference_results_round_trip_through_cryosparc_tools(shared_data, tmp_path):
    """With a reference map: alignments2D/pose is the in-class angle, not the 3-D psi; alignments3D has the 3-D
    pose (zero for a particle without a prior) and shift; and every .cs read back by cryosparc-tools' own
    Dataset gives the STAR's Euler angles (0.01°), priors (999 included), in-class angle and origins."""
    from cryosparc.dataset import Dataset

    records = C.load_cs(shared_data / J2)  # a real 2D classification: its alignments2D slot is replaced
    results = reference_results_table(C.records_to_star(records, shared_data / J2))
    p = results.particles
    posed = p["rlnAngleTiltPrior"].to_numpy() != NO_PRIOR
    junk = p["rlnCanonIsOutlier"].to_numpy() == 1
    assert 0 < posed.sum() < len(p) and (posed & ~junk).any()
    files = write_results_cs(records, None, results, tmp_path)
    assert [f.name for f in files if f.suffix == ".cs"] == ["particles.cs", "particles_selected.cs",
                                                            "particles_rejected.cs", "particles_posed.cs"]
    by_uid = {u: i for i, u in enumerate(p["rlnCanonUid"].to_numpy(np.uint64))}
    for path in (f for f in files if f.suffix == ".cs"):
        dset = Dataset.load(path)
        rows = np.array([by_uid[u] for u in dset["uid"]])
        expected = {"particles": np.ones(len(p), bool), "particles_selected": ~junk, "particles_rejected": junk,
                    "particles_posed": ~junk & posed}[path.stem]
        assert sorted(rows) == list(np.flatnonzero(expected)), path.name
        np.testing.assert_allclose(_angle_gap(np.rad2deg(dset["alignments2D/pose"]), p["rlnCanonClassPsi"][rows]),
                                   0, atol=1e-4)
        zero = ~posed[rows]
        assert (dset["alignments3D/pose"][zero] == 0).all()
        assert (np.linalg.norm(dset["alignments3D/pose"][~zero], axis=1) > 0.1).all()
        np.testing.assert_array_equal(dset["relion_canon/has_prior"], posed[rows])
        np.testing.assert_array_equal(dset["alignments3D/psize_A"], dset["blob/psize_A"])
        np.testing.assert_array_equal(dset["alignments3D/split"], dset["uid"] % 2)  # two half-sets, not one
        back = C.records_to_star(C.as_records(dset), path).particles
        want = p.iloc[rows].reset_index(drop=True)
        np.testing.assert_array_equal(back["rlnCanonUid"].to_numpy(np.uint64), dset["uid"])
        for label in EULER + PRIORS + ["rlnCanonClassPsi"]:
            gap = np.where(want[label] == NO_PRIOR, np.abs(back[label] - want[label]), _angle_gap(back[label], want[label]))
            assert gap.max() < 0.01, (path.name, label, gap.max())
        np.testing.assert_allclose(back[["rlnOriginXAngst", "rlnOriginYAngst"]], want[["rlnOriginXAngst", "rlnOriginYAngst"]],
                                   atol=1e-3)
    assert "type: particle.alignments3D" in (tmp_path / "particles_posed.csg").read_text()


def test_a_tilt_of_180_and_a_psi_prior_of_999_keep_their_meaning(shared_data):
    """The tilt prior is not wrapped to −180°, and RELION's "no prior" is not taken for an angle of 279°."""
    records = C.load_cs(shared_data / J2)
    results = reference_results_table(C.records_to_star(records, shared_data / J2))
    results = results.with_columns({"rlnAngleTiltPrior": np.where(results.particles["rlnAngleTiltPrior"] == NO_PRIOR,
                                                                   NO_PRIOR, 180.0)})
    out = C.results_to_records(records, results)
    back = C.records_to_star(out, shared_data / J2).particles
    want = results.particles["rlnAngleTiltPrior"].to_numpy()
    np.testing.assert_allclose(back["rlnAngleTiltPrior"], want, atol=1e-4)
    assert (back["rlnAnglePsiPrior"].to_numpy()[want == NO_PRIOR] == NO_PRIOR).all()


def test_a_refinements_poses_pass_through_a_job_without_reference(shared_data):
    """A .cs from a 3-D refinement run without --ref: its alignments3D is the input's, untouched (rlnAngleRot/Tilt
    came from it and rlnAnglePsi is now our in-class angle, which would make no orientation)."""
    records = C.load_cs(shared_data / J24)
    results = results_table(C.records_to_star(records, shared_data / J24))
    out = C.results_to_records(records, results)
    rows = C.result_positions(records, results)
    np.testing.assert_array_equal(out["alignments3D/pose"], records["alignments3D/pose"][rows])
    np.testing.assert_allclose(out["alignments2D/pose"], C.psi_to_pose2d(results.particles["rlnAnglePsi"]), atol=1e-6)
    assert "relion_canon/has_prior" not in out.dtype.names


def test_convert_a_reference_star_to_cs_and_back(shared_data, tmp_path):
    """`relion-canon convert` both ways on a STAR with the job's 3-D columns: the same Euler angles, priors and
    in-class angle come back, and the .cs has both slots."""
    from click.testing import CliRunner

    star = read_star(shared_data / EMPIAR_STAR)
    stack = (shared_data / EMPIAR_STAR).with_suffix(".mrc")  # absolute, so the copy in tmp_path finds it
    names = [format_image_name(parse_image_name(n).index, str(stack)) for n in star.image_names]
    results = reference_results_table(star.with_columns({"rlnImageName": names}), seed=3)
    write_star(results, tmp_path / "ref.star")
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", "--i", str(tmp_path / "ref.star"), "--o", str(tmp_path / "ref.cs")])
    assert res.exit_code == 0, res.output
    made = np.load(tmp_path / "ref.cs")
    assert {"alignments2D/pose", "alignments3D/pose", "relion_canon/has_prior"} <= set(made.dtype.names)
    res = runner.invoke(cli, ["convert", "--i", str(tmp_path / "ref.cs"), "--o", str(tmp_path / "back.star")])
    assert res.exit_code == 0, res.output
    back, want = read_star(tmp_path / "back.star").particles, results.particles
    for label in EULER + PRIORS + ["rlnCanonClassPsi"]:
        gap = np.where(want[label] == NO_PRIOR, np.abs(back[label] - want[label]), _angle_gap(back[label], want[label]))
        assert gap.max() < 0.01, (label, gap.max())
