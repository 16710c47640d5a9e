"""The `relion-canon` group: sub-commands, version, and one-line errors with a non-zero status."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from relion_canon import __version__
from relion_canon.cli.main import cli


def test_lists_subcommands_and_version():
    res = CliRunner().invoke(cli, ["--help"])
    for name in ("simulate", "info", "train", "predict", "demo"):
        assert name in res.output
    assert __version__ in CliRunner().invoke(cli, ["--version"]).output


def test_input_error_is_one_line_and_status_2(tmp_path):
    res = CliRunner().invoke(cli, ["predict", "--i", str(tmp_path / "gone.star"), "--model", str(tmp_path / "m.pt"),
                                   "--o", str(tmp_path / "out.star")])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"relion-canon: error: {tmp_path / 'gone.star'}: STAR file not found"
    assert not (tmp_path / "out.star").exists()


def test_console_script_entry_point(tmp_path):
    # The installed command, as users run it (the module form torchrun uses as well).
    res = subprocess.run([sys.executable, "-m", "relion_canon.cli.main", "info", str(tmp_path / "x.star")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "STAR file not found" in res.stderr


def test_demo_simulates_runs_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["demo", "--n", "120", "--o", "demo", "--j", "1"])
    assert res.exit_code == 0, res.output
    assert "psi rMSE" in res.stdout and "outlier ROC AUC" in res.stdout
    for path in ("data/particles.star", "data/ground_truth.star", "job/particles.star", "job/logfile.pdf",
                 "evaluation/evaluation.md"):
        assert (tmp_path / "demo" / path).exists(), path


def test_every_listed_command_loads_with_its_name():
    from relion_canon.cli.main import COMMANDS

    for name in COMMANDS:
        assert cli.get_command(None, name).name == name


def test_info_does_not_import_torch(tmp_path):
    # Sub-commands load lazily: checking a file must not wait for torch to import.
    code = ("import sys; from click.testing import CliRunner; from relion_canon.cli.main import cli; "
            f"r = CliRunner().invoke(cli, ['info', {str(tmp_path / 'x.star')!r}]); "
            "print(r.exit_code, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.split() == ["1", "False"], res.stderr
