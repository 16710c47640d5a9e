"""RELION table -> .cs: fresh tables (convert) and a job's results written back into the input."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as C
from relion_canon.io.star import read_star
from tests.io.cryosparc_files.helpers import EMPIAR_CS, EMPIAR_STAR, J2, results_table


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
