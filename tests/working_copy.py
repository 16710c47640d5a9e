"""A test's own copy of a prepared folder, as the working directory, and the files a command may not touch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def working_copy(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of ``template`` as the working directory (image names and RELION's job paths are relative
    to it)."""
    root = tmp_path / "project"
    shutil.copytree(template, root)
    monkeypatch.chdir(root)
    return root


def file_stamps(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time (ns): a command that wrote or changed a file shows."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
