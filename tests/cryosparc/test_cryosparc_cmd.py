"""`relion-canon cryosparc-job`: options reach the External-job route; errors are one line with status 2."""

from __future__ import annotations

from click.testing import CliRunner

from relion_canon.cli.main import cli


def _args(tmp_path, *extra):
    return ["cryosparc-job", "--url", "http://cs:39000", "--email", "a@b.c", "--project", "P1", "--workspace", "W1",
            "--input", "J42.particles", "--o", str(tmp_path / "out"), "--epochs", "3", "--box", "64", *extra]


def test_runs_the_job_with_the_options(server, pipeline, tmp_path):
    res = CliRunner().invoke(cli, _args(tmp_path, "--title", "angles"), env={"CRYOSPARC_PASSWORD": "pw"})
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == "P1 J43: particles 7, particles_selected 5, particles_rejected 2"
    config = pipeline.calls[0]["config"]
    assert (config.epochs, config.box, config.labels) == (3, 64, False)
    assert server.jobs.create.call_args.kwargs["title"] == "angles"


def test_version_mismatch_is_one_line(server, pipeline, tmp_path):
    server.config.get_version.return_value = "v4.6.2"
    res = CliRunner().invoke(cli, _args(tmp_path, "--password", "pw"))
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cryosparc-tools~=4.6.0'" in lines[0]


def test_unknown_model_is_refused_before_a_job_is_made(server, pipeline, tmp_path):
    res = CliRunner().invoke(cli, _args(tmp_path, "--password", "pw", "--model", "resnet"))
    assert res.exit_code == 2 and "'resnet' is not one of rotinv-ae" in res.stderr
    server.jobs.create.assert_not_called()


def test_a_local_folder_in_use_is_refused_before_a_job_is_made(server, pipeline, tmp_path):
    import os
    import signal

    from tests.io.test_output_dir import hold_folder

    holder = hold_folder(tmp_path / "out")
    try:
        res = CliRunner().invoke(cli, _args(tmp_path, "--password", "pw"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"relion-canon: error: {tmp_path / 'out'}: output folder in use by another relion_canon job (PID {holder.pid} "
        f"on {os.uname().nodename}); wait for it to end or choose another output folder"]
    server.jobs.create.assert_not_called()
    assert pipeline.calls == []
