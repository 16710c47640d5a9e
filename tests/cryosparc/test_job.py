"""The cryoSPARC External-job route against a patched cryosparc-tools API client: the exact calls, the datasets
handed to ``save_output``, and each way it must fail clearly."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from relion_canon.cryosparc.job import DESCRIPTION, check_versions, parse_input_ref, run_external_job
from relion_canon.errors import InputError
from relion_canon.io import cryosparc_files as csio
from relion_canon.job import JobConfig

URL = "http://cryosparc.example:39000"


def _run(tmp_path, **kwargs):
    return run_external_job(URL, "P1", "W1", "J42.particles", tmp_path / "out", JobConfig(epochs=2), email="a@b.c",
                            password="pw", **kwargs)


def _job_calls(api):
    return [c for c in api.jobs.method_calls if c[0] != "add_event_log"]


def test_creates_connects_runs_and_saves(server, pipeline, shared_data, tmp_path):
    from cryosparc.models.job_spec import InputSlot, InputSpec, OutputSlot, OutputSpec

    result = _run(tmp_path, title="angles")
    jobs = server.jobs
    assert [c[0] for c in _job_calls(server)] == [
        "create", "add_external_input", "find_one", "connect",
        "add_external_output", "add_external_output", "add_external_output",
        "mark_running", "load_input",
        "get_output_fields", "save_output", "get_output_fields", "save_output", "get_output_fields", "save_output",
        "mark_completed",
    ]
    jobs.create.assert_called_once_with("P1", "W1", type="snowflake", title="angles", description=DESCRIPTION)
    jobs.add_external_input.assert_called_once_with("P1", "J43", "input_particles", InputSpec(
        type="particle", title="Particles", description="", count_min=1, count_max=1,
        slots=[InputSlot(name="blob", dtype="blob", required=True), InputSlot(name="ctf", dtype="ctf", required=True)]))
    jobs.find_one.assert_called_once_with("P1", "J42")
    jobs.connect.assert_called_once_with("P1", "J43", "input_particles", source_job_uid="J42",
                                         source_output_name="particles")
    assert [c.args for c in jobs.add_external_output.call_args_list] == [
        ("P1", "J43", name, OutputSpec(type="particle", title=title, passthrough="input_particles",
                                       slots=[OutputSlot(name="alignments2D", dtype="alignments2D")]))
        for name, title in (("particles", "All particles"), ("particles_selected", "Particles kept"),
                            ("particles_rejected", "Particles rejected as junk"))]
    jobs.mark_running.assert_called_once_with("P1", "J43", status="running")
    jobs.load_input.assert_called_once_with("P1", "J43", "input_particles", slots="all")
    jobs.mark_completed.assert_called_once_with("P1", "J43")
    jobs.mark_failed.assert_not_called()
    server.projects.get_directory.assert_called_once_with("P1")

    # The pipeline saw the 7 particles with their real images, found through the project directory.
    call = pipeline.calls[0]
    assert call["images"].shape == (7, 320, 320) and call["config"].epochs == 2
    uids = csio.load_cs(shared_data / "formats/mixed/empiar_10076_7.cs")["uid"]
    np.testing.assert_array_equal(call["particles"].particles["rlnCanonUid"].to_numpy(np.uint64), uids)

    # What was saved: every uid once in "particles", split by the outlier flag, the pose from our angle.
    psi = np.linspace(-175.0, 175.0, 7)
    junk = np.isin(np.arange(7), pipeline.junk_rows)
    saved = {c.args[2]: (c.args[3], c.kwargs) for c in jobs.save_output.call_args_list}
    for name, rows in (("particles", np.ones(7, bool)), ("particles_selected", ~junk), ("particles_rejected", junk)):
        dset, kwargs = saved[name]
        assert kwargs == {"version": 0}
        np.testing.assert_array_equal(dset["uid"], uids[rows])
        np.testing.assert_allclose(dset["alignments2D/pose"], np.deg2rad(psi[rows]) % (2 * np.pi), atol=1e-6)
        np.testing.assert_array_equal(dset["alignments2D/psize_A"], np.float32(1.3099979))
        assert set(dset.fields()) == {"uid"} | {f for f, *_ in server.jobs.get_output_fields.return_value}
    assert result.saved == {"particles": 7, "particles_selected": 5, "particles_rejected": 2}
    assert (result.project_uid, result.job_uid) == ("P1", "J43")
    # The local folder has the full results, our own fields included, ready for "Import Result Group" too.
    assert {f.name for f in result.files} >= {"particles.cs", "particles.csg", "particles_rejected.cs"}
    local = np.load(tmp_path / "out" / "particles_rejected.cs")
    np.testing.assert_array_equal(local["uid"], uids[junk])
    assert (local["relion_canon/is_outlier"] == 1).all()


def test_job_log_gets_the_pipeline_lines(server, pipeline, tmp_path):
    _run(tmp_path)
    texts = [c.args[2] for c in server.jobs.add_event_log.call_args_list]
    assert "fake pipeline on 7 particles" in texts
    assert texts[-1] == "Saved 7 particles: 5 kept, 2 rejected"


def test_a_failure_marks_the_job_failed(server, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise InputError("3 particles: the job needs at least 10 to learn from", "P1/J42.particles")

    monkeypatch.setattr("relion_canon.job.run_job", broken)
    with pytest.raises(InputError, match="at least 10"):
        _run(tmp_path)
    server.jobs.mark_completed.assert_not_called()
    server.jobs.save_output.assert_not_called()
    (project, job), kwargs = server.jobs.mark_failed.call_args
    assert (project, job) == ("P1", "J43") and "at least 10" in kwargs["error"]


def test_project_dir_given_overrides_the_servers(server, pipeline, shared_data, tmp_path):
    server.projects.get_directory.return_value = "/nowhere/P1"  # the server's path, not mounted here
    with pytest.raises(InputError, match="stack empiar_10076_7.mrc .* not found in the project directory /nowhere/P1"):
        _run(tmp_path)
    server.jobs.mark_failed.assert_called_once()
    result = _run(tmp_path, project_dir=shared_data / "formats" / "mixed")
    assert result.saved["particles"] == 7


def test_version_mismatch_stops_before_creating_a_job(server, pipeline, tmp_path):
    server.config.get_version.return_value = "v4.7.1"
    with pytest.raises(InputError) as err:
        _run(tmp_path)
    import cryosparc

    assert f"is v4.7.1, but cryosparc-tools {cryosparc.__version__} is installed" in str(err.value)
    assert "pip install 'cryosparc-tools~=4.7.0'" in str(err.value)
    server.jobs.create.assert_not_called()


def test_source_without_that_output(server, pipeline, tmp_path):
    with pytest.raises(InputError, match="cannot connect P1 J42.particles_selected .*does not have output"):
        run_external_job(URL, "P1", "W1", "J42.particles_selected", tmp_path, email="a@b.c", password="pw")
    server.jobs.mark_running.assert_not_called()


def test_input_reference_and_versions():
    assert parse_input_ref(" J42.particles_selected ") == ("J42", "particles_selected")
    for bad in ("J42", "42.particles", "J42.", "P1.J42.particles"):
        with pytest.raises(InputError, match="expected JOB.OUTPUT"):
            parse_input_ref(bad)
    check_versions("5.0.3", "v5.0.7", URL)
    check_versions("5.0.3", "develop", URL)  # a development build has no version to compare
    with pytest.raises(InputError, match="~=5.1.0"):
        check_versions("5.0.3", "v5.1.0", URL)


def test_without_cryosparc_tools(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "cryosparc" or m.startswith("cryosparc.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryosparc", None)
    with pytest.raises(InputError, match=r"needs cryosparc-tools .*pip install 'relion_canon\[cryosparc\]'"):
        _run(tmp_path)


def test_with_a_reference_the_outputs_carry_3d_poses(server, pipeline, shared_data, tmp_path):
    """--ref: every output gets alignments3D (zero pose where a particle has no 3-D orientation) beside
    alignments2D, whose pose stays the in-class angle; a fourth output holds the kept particles with a pose."""
    from cryosparc.models.job_spec import OutputSlot

    from relion_canon.io.star import NO_PRIOR, read_star

    j2 = np.load(shared_data / "formats/cryosparc/cryosparc_J2_particles_exported.cs")
    j24 = np.load(shared_data / "formats/cryosparc/cryosparc_P12_J24_001_particles.cs")
    server.jobs.get_output_fields.return_value = [f for f in j2.dtype.descr if f[0].startswith("alignments2D/")] + \
        [f for f in j24.dtype.descr if f[0].startswith("alignments3D/")]
    result = run_external_job(URL, "P1", "W1", "J42.particles", tmp_path / "out", JobConfig(epochs=2, ref="ref.mrc"),
                              email="a@b.c", password="pw")
    outputs = [c.args for c in server.jobs.add_external_output.call_args_list]
    assert [o[2] for o in outputs] == ["particles", "particles_selected", "particles_rejected", "particles_posed"]
    assert all(o[3].slots == [OutputSlot(name="alignments2D", dtype="alignments2D"),
                              OutputSlot(name="alignments3D", dtype="alignments3D")] for o in outputs)
    p = read_star(result.job.particles_star).particles
    by_uid = {u: i for i, u in enumerate(p["rlnCanonUid"].to_numpy(np.uint64))}
    posed = p["rlnAngleTiltPrior"].to_numpy() != NO_PRIOR
    kept = p["rlnCanonIsOutlier"].to_numpy() == 0
    saved = {c.args[2]: c.args[3] for c in server.jobs.save_output.call_args_list}
    np.testing.assert_array_equal(sorted(by_uid[u] for u in saved["particles_posed"]["uid"]),
                                  np.flatnonzero(posed & kept))
    assert result.saved["particles_posed"] == (posed & kept).sum() > 0
    dset = saved["particles"]
    rows = np.array([by_uid[u] for u in dset["uid"]])
    np.testing.assert_allclose(dset["alignments2D/pose"], csio.psi_to_pose2d(p["rlnCanonClassPsi"].to_numpy()[rows]),
                               atol=1e-5)
    euler = csio.pose3d_to_euler(dset["alignments3D/pose"])
    want = p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()[rows]
    gap = np.abs((euler - want + 180.0) % 360.0 - 180.0)
    assert gap[posed[rows]].max() < 0.01
    assert (dset["alignments3D/pose"][~posed[rows]] == 0).all()
    np.testing.assert_array_equal(dset["alignments3D/psize_A"], np.float32(1.3099979))
