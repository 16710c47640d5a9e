"""Joins on uid: a particles .cs with its passthrough, repeated and unjoinable uids."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as C
from tests.cryosparc.helpers import particle_records, save_records
from tests.io.cryosparc_files.helpers import J2


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
