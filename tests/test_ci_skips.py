"""Under CI=true a test that needs a missing module fails instead of skipping (tests/conftest.py); and the
modules the suite imports through ``pytest.importorskip`` are in the install line of the test command."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MISSING = """
import pytest

def test_needs_it():
    pytest.importorskip("no_such_module_relion_canon")
"""


@pytest.mark.parametrize("ci, outcome", [("true", "1 failed"), ("", "1 skipped")])
def test_importorskip_fails_under_ci(tmp_path, ci, outcome):
    (tmp_path / "test_missing.py").write_text(MISSING)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_missing.py")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert outcome in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    if ci:
        assert "required under CI=true" in res.stdout


def test_every_importorskip_module_is_installed_by_the_test_command():
    """The extras of README's test command name a distribution for each module a test imports or skips."""
    modules = set()
    for path in (p for p in (REPO / "tests").rglob("*.py") if p.name != Path(__file__).name):
        modules |= set(re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text()))
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    command = (REPO / "README.md").read_text().split("<!-- test-command -->", 1)[1].split("```")[1]
    extras = re.search(r'pip install -e "\.\[([\w,]+)\]"', command).group(1).split(",")
    installed = " ".join(config["options.extras_require"].get(e, "") for e in extras).lower()
    distribution = {"yaml": "pyyaml", "cryosparc": "cryosparc-tools"}
    for module in modules:
        name = distribution.get(module.split(".")[0], module.split(".")[0])
        assert name in installed, f"{module}: {name} is in none of the extras {extras} of the test command"
