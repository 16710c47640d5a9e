"""The scratch RELION project most External-job tests run in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relion.helpers import make_project
from tests.working_copy import working_copy


@pytest.fixture(scope="module")
def project_template(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("template") / "project", n=24)


@pytest.fixture
def project(tmp_path, project_template, monkeypatch) -> Path:
    """A fresh copy of a small RELION project, as the working directory (RELION runs jobs from there)."""
    return working_copy(project_template, tmp_path, monkeypatch)
