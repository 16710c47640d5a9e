"""The scratch RELION project most External-job tests run in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.relion.helpers import make_project


@pytest.fixture(scope="module")
def project_template(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("template") / "project", n=24)


@pytest.fixture
def project(tmp_path, project_template, monkeypatch) -> Path:
    """A fresh copy of a small RELION project, as the working directory (RELION runs jobs from there)."""
    root = tmp_path / "project"
    shutil.copytree(project_template, root)
    monkeypatch.chdir(root)
    return root
