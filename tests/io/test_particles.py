"""read_particles dispatches on the extension; write_results_cs / convert_particles hand files back and forth."""

from __future__ import annotations

import numpy as np
import pytest

from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as C
from relion_canon.io.particles import convert_particles, read_particles, write_results_cs
from relion_canon.io.star import read_star
from relion_canon.io.validate import inspect_file
from tests.cryosparc.helpers import make_project, particle_records, save_records

J2 = "formats/cryosparc/cryosparc_J2_particles_exported.cs"
EMPIAR_CS = "formats/mixed/empiar_10076_7.cs"
EMPIAR_STAR = "formats/mixed/empiar_10076_7.star"


def test_dispatch_on_the_extension(shared_data):
    star = read_particles(shared_data / EMPIAR_STAR)
    assert star.particles.equals(read_star(shared_data / EMPIAR_STAR).particles)
    from_cs = read_particles(shared_data / EMPIAR_CS)
    assert "rlnCanonUid" in from_cs.particles.columns and from_cs.path == shared_data / EMPIAR_CS
    assert read_particles(from_cs) is from_cs
    with pytest.raises(InputError, match="passthrough file goes with a cryoSPARC particles .cs"):
        read_particles(shared_data / EMPIAR_STAR, passthrough=shared_data / EMPIAR_CS)


def test_passthrough_and_project_dir_reach_the_cs_reader(tmp_path):
    cs, records, _ = make_project(tmp_path / "P1")
    main = np.zeros(len(records), [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4")])
    for name in main.dtype.names:
        main[name] = records[name]
    pt = particle_records(len(records), "unused", seed=0, slots=("ctf", "location"))
    pt["uid"] = records["uid"][::-1]
    save_records(main, tmp_path / "P1" / "J6" / "J6_split.cs")
    save_records(pt, tmp_path / "P1" / "J6" / "J6_passthrough.cs")
    star = read_particles(tmp_path / "P1" / "J6" / "J6_split.cs", tmp_path / "P1" / "J6" / "J6_passthrough.cs",
                          project_dir=tmp_path / "P1")
    np.testing.assert_array_equal(star.particles["rlnDefocusU"].astype(np.float32), pt["ctf/df1_A"][::-1])
    assert set(star.particles["rlnMicrographName"]) == {"J2/motioncorrected/mic.mrc"}
    assert star.image_names[0].endswith(f"@{(tmp_path / 'P1' / 'J5/extract/mic_particles.mrc').resolve()}")


def test_info_summarises_a_cs(shared_data):
    report = inspect_file(shared_data / EMPIAR_CS)
    assert report.ok, report.problems
    assert report.kind == "cryoSPARC particles .cs"
    assert (report.n_particles, report.box) == (7, 320)
    assert report.defocus_range_um == pytest.approx((1.47660, 1.53668), abs=1e-4)


def _job_results(star, flags):
    n = len(star)
    psi = np.linspace(-170, 170, n)
    return star.with_columns({"rlnAnglePsi": psi, "rlnAnglePsiPrior": psi, "rlnCanonDefocus": np.full(n, 1.5e4),
                              "rlnParticleFigureOfMerit": np.ones(n), "rlnParticleSelectZScore": flags * 3.0,
                              "rlnCanonIsOutlier": flags})


def test_write_results_cs_splits_kept_and_rejected(shared_data, tmp_path):
    dataset = pytest.importorskip("cryosparc.dataset")
    records = C.load_cs(shared_data / J2)
    flags = (np.arange(22) % 5 == 1).astype(int)
    results = _job_results(read_particles(shared_data / J2), flags)
    files = write_results_cs(shared_data / J2, None, results, tmp_path / "out")
    assert [f.name for f in files] == ["particles.cs", "particles.csg", "particles_selected.cs",
                                       "particles_selected.csg", "particles_rejected.cs", "particles_rejected.csg"]
    everything = dataset.Dataset.load(tmp_path / "out" / "particles.cs")  # what cryoSPARC's own library reads
    assert len(everything) == 22 and set(records.dtype.names) < set(everything.fields())
    kept = np.load(tmp_path / "out" / "particles_selected.cs")
    junk = np.load(tmp_path / "out" / "particles_rejected.cs")
    np.testing.assert_array_equal(kept["uid"], records["uid"][flags == 0])
    np.testing.assert_array_equal(junk["uid"], records["uid"][flags == 1])
    assert (kept["relion_canon/is_outlier"] == 0).all() and (junk["relion_canon/is_outlier"] == 1).all()
    assert f"num_items: {int(flags.sum())}" in (tmp_path / "out" / "particles_rejected.csg").read_text()


def test_write_results_keeps_passthrough_fields(tmp_path):
    cs, records, _ = make_project(tmp_path / "P1", n=10)
    pt = particle_records(10, "unused", seed=0, slots=("location",))
    pt["uid"] = records["uid"]
    save_records(pt, tmp_path / "P1" / "J6" / "J6_passthrough.cs")
    star = read_particles(cs, tmp_path / "P1" / "J6" / "J6_passthrough.cs")
    write_results_cs(cs, tmp_path / "P1" / "J6" / "J6_passthrough.cs", _job_results(star, np.zeros(10, int)),
                     tmp_path / "out")
    out = np.load(tmp_path / "out" / "particles.cs")
    np.testing.assert_array_equal(out["location/center_x_frac"], pt["location/center_x_frac"])
    np.testing.assert_array_equal(out["alignments2D/class"], records["alignments2D/class"])  # kept from the input
    assert len(np.load(tmp_path / "out" / "particles_rejected.cs")) == 0


def test_nothing_is_written_when_the_results_do_not_join(shared_data, tmp_path):
    results = _job_results(read_particles(shared_data / J2), np.zeros(22, int))
    results.particles.loc[21, "rlnCanonUid"] = 99
    with pytest.raises(InputError, match="row 22: rlnCanonUid 99"):
        write_results_cs(shared_data / J2, None, results, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_convert_cs_to_star_and_back(shared_data, tmp_path):
    records = C.load_cs(shared_data / J2)  # its stacks are not shipped: names as they are
    convert_particles(shared_data / J2, tmp_path / "j2.star", link_stacks=False)
    star = read_star(tmp_path / "j2.star")
    assert star.generation == "3.1" and len(star) == 22
    convert_particles(tmp_path / "j2.star", tmp_path / "j2.cs", link_stacks=False)
    back = np.load(tmp_path / "j2.cs")
    np.testing.assert_array_equal(back["uid"], records["uid"])
    for field in ("ctf/df1_A", "ctf/df2_A", "ctf/exp_group_id", "alignments2D/class", "blob/idx", "blob/shape"):
        np.testing.assert_array_equal(back[field], records[field], err_msg=field)
    np.testing.assert_allclose(back["alignments2D/pose"], records["alignments2D/pose"], atol=1e-6)
    np.testing.assert_allclose(back["alignments2D/shift"], records["alignments2D/shift"], atol=1e-5)
    assert [p.decode() for p in back["blob/path"]] == [p.decode().lstrip(">") for p in records["blob/path"]]
    assert (tmp_path / "j2.csg").exists()


def test_convert_star_to_cs_relative_to_the_project(tmp_path):
    cs, records, _ = make_project(tmp_path / "P1")
    convert_particles(cs, tmp_path / "rln" / "particles.star", project_dir=tmp_path / "P1")
    # cryoSPARC's .mrc stack is reached through a .mrcs link, the name RELION reads as a stack.
    link = tmp_path / "rln" / "particles_stacks" / "mic_particles.mrcs"
    assert link.is_symlink() and link.resolve() == (tmp_path / "P1/J5/extract/mic_particles.mrc").resolve()
    assert read_star(tmp_path / "rln" / "particles.star").image_names[0] == f"000001@{link}"
    convert_particles(tmp_path / "rln" / "particles.star", tmp_path / "back.cs", project_dir=tmp_path / "P1")
    back = np.load(tmp_path / "back.cs")
    assert set(back["blob/path"]) == {b"J5/extract/mic_particles.mrc"}  # the original, project-relative
    np.testing.assert_array_equal(back["uid"], records["uid"])


def test_convert_needs_one_cs_and_one_star(shared_data, tmp_path):
    with pytest.raises(InputError, match="give a .cs and a .star"):
        convert_particles(shared_data / EMPIAR_STAR, tmp_path / "x.star")
