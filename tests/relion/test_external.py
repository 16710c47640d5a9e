"""relion_canon_external without RELION and without training: arguments as RELION passes them, the mapping
onto the job's settings, and the protocol (exit files, nodes, abort, continue, signals) around a stand-in job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relion_canon.relion import external
from relion_canon.relion.job_star import parse_star_text
from relion_canon.relion.external import ExternalJob, main
from relion_canon.relion.params import UsageError, build_parser, config_from_args, parse_defocus_range, parse_gpu
from relion_canon.relion.torchrun import distributed_job_command
from tests.relion.helpers import FakeJob, snapshot, write_job_star

REPO = Path(__file__).resolve().parents[2]
OUT = "External/job001/"
EXIT_FILES = ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED")


def _config(argv):
    return config_from_args(build_parser().parse_args(argv))


def _exit_files(out: Path) -> list[str]:
    return sorted(name for name in EXIT_FILES if (out / name).exists())


# --- arguments ----------------------------------------------------------------------------------------------


def test_relion_command_line_maps_onto_the_job_settings():
    # Exactly what RELION 3.1 builds: labelled params with empty values become bare flags, "Additional
    # arguments" follow --j, and --pipeline_control comes last.
    argv = ("--o External/job001/ --in_parts Select/job011/particles.star --mode train --model vaegan "
            "--model_path --epochs 3 --box 48 --outlier_method lof --outlier_threshold 2.5 "
            "--defocus_range 5000,25000 --labels --gpu 0 --j 4 --per_class no --seed 7 --set lr=0.001 "
            "--set latent_dim=4 --pipeline_control External/job001/").split()
    config, gpu_ids = _config(argv)
    assert (config.model, config.model_path, config.epochs, config.box) == ("vaegan", None, 3, 48)
    assert (config.outlier_method, config.outlier_threshold) == ("lof", 2.5)
    assert config.defocus_range == (5000.0, 25000.0)
    assert (config.labels, config.per_class, config.refine, config.write_canonical) == (True, False, True, False)
    assert (config.device, gpu_ids, config.threads, config.seed) == ("cuda:0", ["0"], 4, 7)
    assert config.model_options == {"lr": 0.001, "latent_dim": 4}


def test_speed_settings_only_when_given():
    from relion_canon.job import JobConfig

    config, _ = _config("--o x/ --in_parts p.star --train_particles all --model_box 48 --max_shift_px 2".split())
    assert (config.train_particles, config.model_box, config.max_shift_px) == (None, 48, 2.0)
    config, _ = _config("--o x/ --in_parts p.star --train_particles 800".split())
    default = JobConfig()
    assert (config.train_particles, config.model_box, config.max_shift_px) == \
        (800, default.model_box, default.max_shift_px)
    with pytest.raises(UsageError, match="max_shift_px"):
        _config("--o x/ --in_parts p.star --max_shift_px -1".split())


def test_empty_values_give_the_defaults():
    from relion_canon.job import JobConfig

    argv = "--o x/ --in_parts p.star --mode --model --epochs --box --outlier_method --outlier_threshold " \
           "--defocus_range --gpu --j 1".split()
    config, gpu_ids = _config(argv)
    default = JobConfig()
    assert (config.model, config.epochs, config.box, config.outlier_method, config.outlier_threshold) == \
        (default.model, default.epochs, None, default.outlier_method, default.outlier_threshold)
    assert (config.defocus_range, config.device, gpu_ids) == (None, "auto", [])


def test_unknown_arguments_are_refused_with_the_known_labels():
    # --in_part is not mistaken for --in_parts (no prefix matching): it is unknown, and the nearest label named.
    with pytest.raises(UsageError, match=r"unknown argument\(s\) --in_part q.star \(did you mean --in_parts\?\); "
                                         r"the params this job knows: mode, .*, epochs, .*, gpu \(and RELION"):
        _config("--o x/ --in_parts p.star --j 1 --in_part q.star".split())


@pytest.mark.parametrize("text, expected", [
    ("5000,25000", (5000.0, 25000.0)), ("5000:25000", (5000.0, 25000.0)), ("5000-25000", (5000.0, 25000.0)),
    ("", None), (None, None),
])
def test_defocus_range(text, expected):
    assert parse_defocus_range(text) == expected


@pytest.mark.parametrize("text", ["0.5,2.5", "25000,5000", "5000", "a,b"])
def test_defocus_range_rejects(text):
    with pytest.raises(UsageError, match="df_range"):
        parse_defocus_range(text)


@pytest.mark.parametrize("text, expected", [
    ("", []), (None, []), ("0", ["0"]), ("0,1", ["0", "1"]), ("0:1", ["0", "1"]), ("cpu", None), ("CPU", None),
])
def test_gpu_values(text, expected):
    assert parse_gpu(text) == expected


@pytest.mark.parametrize("argv, message", [
    ("--epochs 0", "epochs: must be at least 1"),
    ("--epochs many", "epochs: expected a whole number"),
    ("--labels maybe", "labels: expected yes or no"),
    ("--model resnet", "model: 'resnet' is not one of"),
    ("--outlier_method dbscan", "outlier_method"),
    ("--outlier_threshold high", "outlier_threshold: expected a number"),
    ("--gpu first", "gpu: expected GPU ids"),
    ("--mode apply", "mode is apply but no model_path"),
    ("--model_path External/job003/", "mode is train"),
    ("--set lr", "KEY=VALUE"),
])
def test_bad_values_are_one_line_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        _config(["--o", "x/", "--in_parts", "p.star", *argv.split()])


def test_distributed_training_settings_round_trip(tmp_path):
    """Several GPUs: torchrun starts one ddp_job process per GPU, each rebuilding the job's settings from
    the JSON file the job writes; they must come back exactly as parsed."""
    from relion_canon.relion.ddp_job import job_config_from_dict, write_settings

    config, gpu_ids = _config("--o x/ --in_parts p.star --model spatial-vae --box 32 --labels --gpu 0,1 "
                                 "--j 3 --set lr=0.002 --seed 5 --defocus_range 5000,25000".split())
    assert gpu_ids == ["0", "1"] and config.device == "auto"
    path = write_settings(tmp_path / "s.json", "Input/particles.star", "External/job001/", config, resume=False)
    import json

    settings = json.loads(path.read_text())
    assert (settings["particles"], settings["out_dir"], settings["resume"]) == \
        ("Input/particles.star", "External/job001/", False)
    assert job_config_from_dict(settings["config"]) == config
    cmd = distributed_job_command(str(path), 2)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "relion_canon.relion.ddp_job", str(path)]


# --- the protocol around a stand-in job -----------------------------------------------------------------------


@pytest.mark.parametrize("version, label", [("3.1", None),  # 3.1 reads the type number alone
                                            ("5.0", "ParticleGroupMetadata.star.relion")])
def test_success_writes_outputs_nodes_then_exit_file(project, capsys, version, label):
    out = project / OUT
    write_job_star(out, version)
    before = snapshot(project)
    job = FakeJob()
    argv = f"--o {OUT} --in_parts Input/particles.star --epochs 2 --j 2 --pipeline_control {OUT}"
    rc = ExternalJob(OUT, job=job).run(argv.split())
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert _exit_files(out) == ["RELION_JOB_EXIT_SUCCESS"]
    # Exit file last: no output is newer than it.
    exit_time = (out / "RELION_JOB_EXIT_SUCCESS").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= exit_time for p in out.iterdir())
    _, _, loops = parse_star_text((out / "RELION_OUTPUT_NODES.star").read_text())
    labels = [[label], [label], ["LogFile.pdf.relion"]] if label else [[], [], []]
    assert loops["output_nodes"] == [["External/job001/particles.star", "3", *labels[0]],
                                     ["External/job001/particles_selected.star", "3", *labels[1]],
                                     ["External/job001/logfile.pdf", "13", *labels[2]]]
    assert f"RELION {version} (from External/job001/job.star); new run" in captured.out
    # RELION's job.star said "new run": no resume; the job runs quietly (no progress bar in run.err).
    assert job.calls[0]["resume"] is False and job.calls[0]["progress"] is False
    assert job.calls[0]["config"].epochs == 2 and job.calls[0]["config"].threads == 2
    assert captured.err == ""
    # Nothing written outside the job folder.
    after = snapshot(project)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed and all(k.startswith("External/job001/") for k in changed)


def test_continue_resumes(project):
    write_job_star(project / OUT, "4.0", is_continue=True)
    job = FakeJob()
    assert ExternalJob(OUT, job=job).run(["--o", OUT, "--in_parts", "Input/particles.star", "--j", "1"]) == 0
    assert job.calls[0]["resume"] is True


def test_input_error_fails_with_the_reason_in_run_err(project, capsys):
    out = project / OUT
    out.mkdir(parents=True)
    (out / "RELION_JOB_EXIT_SUCCESS").touch()  # from an earlier run: must not survive
    (out / "RELION_OUTPUT_NODES.star").touch()
    rc = ExternalJob(OUT, job=FakeJob("input_error")).run(["--o", OUT, "--in_parts", "Input/particles.star"])
    err = capsys.readouterr().err
    assert rc == 1
    assert _exit_files(out) == ["RELION_JOB_EXIT_FAILURE"]
    assert not (out / "RELION_OUTPUT_NODES.star").exists()
    assert err.strip().splitlines() == [
        "relion_canon_external: error: Input/particles.star, row 3: a value no job could use"]


def test_bad_input_star_fails(project, capsys):
    Path("Input/broken.star").write_text("this is not a STAR file\n")
    rc = main(["--o", OUT, "--in_parts", "Input/broken.star", "--j", "1"])
    assert rc == 1
    assert _exit_files(project / OUT) == ["RELION_JOB_EXIT_FAILURE"]
    assert "Input/broken.star" in capsys.readouterr().err.strip().splitlines()[-1]


def test_crash_fails_with_traceback(project, capsys):
    rc = ExternalJob(OUT, job=FakeJob("crash")).run(["--o", OUT, "--in_parts", "Input/particles.star"])
    err = capsys.readouterr().err
    assert rc == 1 and _exit_files(project / OUT) == ["RELION_JOB_EXIT_FAILURE"]
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == "relion_canon_external: error: ZeroDivisionError: a bug deep inside the job"


@pytest.mark.parametrize("argv, message", [
    (["--o", OUT, "--j", "1"], "no input particles"),
    (["--o", OUT, "--in_parts", "Input/particles.star", "--epochs", "x"], "epochs: expected a whole number"),
    (["--o", OUT, "--in_parts", "Input/particles.star", "--mode", "apply", "--model_path", "nope/"], "no model file"),
    (["--o", OUT, "--in_parts", "Input/particles.star", "--j"], "argument --j: expected one argument"),
])
def test_usage_errors_end_as_failure(project, capsys, argv, message):
    job = FakeJob()
    assert ExternalJob(OUT, job=job).run(argv) == 1
    assert _exit_files(project / OUT) == ["RELION_JOB_EXIT_FAILURE"]
    assert message in capsys.readouterr().err
    assert job.calls == []


def test_no_output_folder_writes_nothing(project, capsys):
    before = snapshot(project)
    assert main(["--in_parts", "Input/particles.star"]) == 1
    assert "no --o" in capsys.readouterr().err
    assert snapshot(project) == before


def test_abort_during_the_job(project, capsys):
    out = project / OUT
    rc = ExternalJob(OUT, job=FakeJob("abort")).run(["--o", OUT, "--in_parts", "Input/particles.star"])
    assert rc == 2
    assert _exit_files(out) == ["RELION_JOB_EXIT_ABORTED"]
    assert not (out / "RELION_JOB_ABORT_NOW").exists()
    assert not (out / "RELION_OUTPUT_NODES.star").exists()
    stdout = capsys.readouterr().out
    # Polled once per epoch: it stopped after the first epoch that saw the request.
    assert "epoch 1/100" in stdout and "epoch 2/100" not in stdout


def test_abort_requested_before_start(project):
    out = project / OUT
    out.mkdir(parents=True)
    (out / "RELION_JOB_ABORT_NOW").touch()
    job = FakeJob()
    assert ExternalJob(OUT, job=job).run(["--o", OUT, "--in_parts", "Input/particles.star"]) == 2
    assert job.calls == []
    assert _exit_files(out) == ["RELION_JOB_EXIT_ABORTED"]
    assert not (out / "RELION_JOB_ABORT_NOW").exists()


def test_apply_mode_copies_the_model(project):
    model_dir = project / "External" / "job000"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(b"weights")
    job = FakeJob()
    argv = ["--o", OUT, "--in_parts", "Input/particles.star", "--mode", "apply", "--model_path", "External/job000/"]
    assert ExternalJob(OUT, job=job).run(argv) == 0
    assert job.calls[0]["config"].model_path == "External/job000/"
    assert (project / OUT / "model.pt").read_bytes() == b"weights"


SLOW_JOB = """
import sys, time
from pathlib import Path
from relion_canon.relion.external import ExternalJob

def job(star, out_dir, config, *, resume, context, input_checked=False):
    Path(out_dir, "started").touch()
    for _ in range(600):  # never polls should_stop: only the signal can end it early
        time.sleep(0.1)
    raise AssertionError("not stopped")

sys.exit(ExternalJob("External/job001/", job=job).run(sys.argv[1:]))
"""


def test_signal_in_process_ends_as_aborted(project, capsys):
    """The handler turns a signal into a stop wherever the job is (here: in the middle of its work)."""
    def job(star, out_dir, config, *, resume, context, input_checked=False):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("not stopped")

    previous = signal.getsignal(signal.SIGINT)
    assert ExternalJob(OUT, job=job).run(["--o", OUT, "--in_parts", "Input/particles.star"]) == 2
    assert _exit_files(project / OUT) == ["RELION_JOB_EXIT_ABORTED"]
    assert "stopped by signal SIGINT" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored


def test_sigterm_ends_as_aborted(project):
    """A real process killed with SIGTERM (e.g. by a queue system) still leaves its exit file."""
    signum = signal.SIGTERM
    out = project / OUT
    proc = subprocess.Popen([sys.executable, "-c", SLOW_JOB, "--o", OUT, "--in_parts", "Input/particles.star"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 60
        while not (out / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert _exit_files(out) == ["RELION_JOB_EXIT_ABORTED"]
    assert f"stopped by signal {signal.Signals(signum).name}" in err


def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "relion_canon.relion.external", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0
    assert "--pipeline_control" in res.stdout and "outlier_z" in res.stdout
    assert external.PROG == "relion_canon_external"
