"""Shared test fixtures: real files from ../shared/data and the RELION binaries.

Both are optional on a developer's machine (the test skips, saying why) but required in CI
(`CI=true`), where a missing file or binary is a failure, not a silent skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a test skipped because a module could not be imported (``pytest.importorskip``: an extra not
    installed) fails instead: every extra the suite uses is in the test command's install line."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and call.excinfo is not None and "could not import" in str(call.excinfo.value):
        report.outcome = "failed"
        report.longrepr = f"{call.excinfo.value} (required under CI=true: install the extras of the test command)"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (the real STAR/MRC/.cs files, maps and models)."""
    if not SHARED_DATA.is_dir():
        _missing(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def require_relion() -> Path:
    """The folder holding the RELION 3.1 binaries (relion_project, relion_refine, ...)."""
    exe = shutil.which("relion_project")
    if exe is None:
        _missing("RELION binaries (relion_project) not on PATH; install with `apt-get install -y relion`")
    return Path(exe).parent


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine a second OpenMP thread waiting for a busy core makes small
    networks 5-10x slower, not faster, and test times unpredictable."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
