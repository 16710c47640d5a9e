"""Hostile input: model files that would run code when unpickled, and paths that climb out with ``../``.

A model file is only ever loaded as tensors and plain values (``weights_only``), however it reaches the tool:
``checkpoint.load``, ``load_model``, ``predict --model``, or a ``checkpoint.pt`` left in a training folder.
Image paths in a STAR file may point anywhere to *read*; ``train`` and ``predict`` write only to the output they
were given, which is checked by listing the whole folder tree before and after.
(tests/train/test_engine.py has the basic crafted-pickle case; these extend it.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from relion_canon.cli.main import cli
from relion_canon.errors import InputError
from relion_canon.io.imagename import format_image_name, parse_image_name
from relion_canon.io.star import read_star, write_star
from relion_canon.train import checkpoint, load_model

REPO = Path(__file__).resolve().parents[1]
SIM_TINY = REPO / "test_data" / "sim_tiny"
SMALL_NET = ["--set", "width=8", "--set", "max_width=16", "--set", "critic_width=8"]


# --- model files that run code when unpickled ---------------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``how`` with an argument that creates ``marker``."""

    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        if self.how == "os.system":
            return (os.system, (f"touch '{self.marker}'",))
        if self.how == "eval":
            return (eval, (f"open({self.marker!r}, 'w').close()",))
        return (Path.touch, (Path(self.marker),))  # a method of an allowed-looking class


PAYLOADS = ["exec", "os.system", "eval", "Path.touch"]


def _model_state(tmp_path: Path) -> dict:
    """A genuine model file's content, to hide a payload in."""
    out = tmp_path / "genuine"
    res = CliRunner().invoke(cli, ["train", "--i", str(SIM_TINY / "particles.star"), "--o", str(out), "--model",
                                   "rotinv-ae", *SMALL_NET, "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                                   "--j", "1", "--quiet"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    return torch.load(out / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict:
    return _model_state(tmp_path_factory.mktemp("genuine"))


def _evil(path: Path, how: str, marker: Path, genuine: dict | None = None, legacy: bool = False) -> Path:
    """A model file whose content unpickles ``_Payload``: alone, or deep inside a genuine model's content."""
    content = {"format": "relion_canon.model", "format_version": 1, "x": _Payload(how, marker)}
    if genuine is not None:
        content = dict(genuine)
        content["history"] = [*genuine["history"], {"epoch": 2, "note": _Payload(how, marker)}]
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("how", PAYLOADS)
def test_payload_is_live_but_never_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = _evil(tmp_path / "model.pt", how, marker)
    # The payload is real: a plain unpickling runs it (the check below would prove nothing otherwise).
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(InputError, match=r"model\.pt: refusing to load: it holds objects other than tensors"):
        checkpoint.load(path)
    with pytest.raises(InputError, match="refusing to load"):
        load_model(path)
    with pytest.raises(InputError, match="refusing to load"):
        load_model(tmp_path)  # a training folder: its model.pt
    assert not marker.exists()


def test_payload_hidden_inside_a_genuine_model_file_is_refused(tmp_path, genuine):
    marker = tmp_path / "PWNED"
    path = _evil(tmp_path / "model.pt", "exec", marker, genuine=genuine)
    with pytest.raises(InputError, match="refusing to load"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["legacy torch.save", "plain pickle"])
def test_non_archive_pickles_are_refused_unread(tmp_path, kind):
    # torch's weights_only also restricts the old format; the tool does not even try: only zip archives are opened.
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    if kind == "plain pickle":
        path.write_bytes(pickle.dumps(_Payload("exec", marker)))
    else:
        _evil(path, "exec", marker, legacy=True)
    with pytest.raises(InputError, match=r"not a readable model file \(not a PyTorch archive"):
        checkpoint.load(path)
    assert not marker.exists()


def test_predict_with_a_crafted_model_file_exits_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    evil = _evil(tmp_path / "model.pt", "os.system", marker)
    res = CliRunner().invoke(cli, ["predict", "--i", str(SIM_TINY / "particles.star"), "--model", str(evil), "--o",
                                   "out.star", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "refusing to load" in res.stderr
    assert not marker.exists() and not (tmp_path / "out.star").exists()


def test_crafted_checkpoint_in_the_training_folder_is_refused_not_resumed(tmp_path, genuine):
    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    out.mkdir()
    _evil(out / "checkpoint.pt", "exec", marker, genuine=genuine)
    before = (out / "checkpoint.pt").read_bytes()
    res = CliRunner().invoke(cli, ["train", "--i", str(SIM_TINY / "particles.star"), "--o", str(out), "--model",
                                   "rotinv-ae", *SMALL_NET, "--epochs", "2", "--batch-size", "8", "--device", "cpu",
                                   "--quiet"])  # fmt: skip
    assert res.exit_code == 2 and "checkpoint.pt: refusing to load" in res.stderr
    assert not marker.exists()
    assert (out / "checkpoint.pt").read_bytes() == before and not (out / "model.pt").exists()


# --- paths that climb out -------------------------------------------------------------------------------------------


def _tree(root: Path) -> tuple[dict[str, str], set[str]]:
    """Every file under ``root`` (relative path -> size, mtime and content hash) and every folder."""
    files, dirs = {}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            dirs.add(os.path.relpath(os.path.join(dirpath, d), root))
        for f in filenames:
            p = Path(dirpath, f)
            st = p.stat()
            files[os.path.relpath(p, root)] = f"{st.st_size}:{st.st_mtime_ns}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
    return files, dirs


def _changes(before, after) -> set[str]:
    (f0, d0), (f1, d1) = before, after
    return {p for p in f0.keys() | f1.keys() if f0.get(p) != f1.get(p)} | (d0 ^ d1)


def _inside(rel: str, output: Path, sandbox: Path) -> bool:
    """``rel`` is the output, inside it, or a folder made to hold it."""
    p = (sandbox / rel).resolve()
    return p == output or output in p.parents or p in output.parents


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """project/ (the working directory) with a STAR file whose image paths climb out to ../elsewhere/."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere" / "stacks"
    (project / "Select" / "job005").mkdir(parents=True)
    (project / "Extract" / "job002").mkdir(parents=True)  # `..` after it resolves on disk, so it must exist
    elsewhere.mkdir(parents=True)
    shutil.copy(SIM_TINY / "particles.mrcs", elsewhere / "particles.mrcs")
    star = read_star(SIM_TINY / "particles.star")
    spellings = ["../elsewhere/stacks/particles.mrcs", "Extract/job002/../../../elsewhere/stacks/particles.mrcs",
                 str(elsewhere / "particles.mrcs")]  # fmt: skip
    names = [format_image_name(parse_image_name(n).index, spellings[i % 3]) for i, n in enumerate(star.image_names)]
    parts = star.particles.copy()
    parts["rlnImageName"] = names
    write_star(star.with_particles(parts), project / "Select" / "job005" / "particles.star")
    monkeypatch.chdir(project)
    return tmp_path


@pytest.mark.parametrize("out", ["Class2D/../Train/job010", "../runs/./train_out"])
def test_train_writes_only_into_its_output_folder(sandbox, out):
    before = _tree(sandbox)
    res = CliRunner().invoke(cli, ["train", "--i", "Select/job005/particles.star", "--o", out, "--model", "rotinv-ae",
                                   *SMALL_NET, "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--j", "1",
                                   "--quiet"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    output = (sandbox / "project" / out).resolve()
    assert {p.name for p in output.iterdir()} == {"model.pt", "checkpoint.pt"}
    changed = _changes(before, _tree(sandbox))
    assert changed and all(_inside(p, output, sandbox) for p in changed), sorted(changed)


@pytest.mark.parametrize("out", ["Class2D/../Predict/job011/particles.star", "../predicted/./particles.star"])
def test_predict_writes_only_its_output_file(sandbox, out):
    res = CliRunner().invoke(cli, ["train", "--i", "Select/job005/particles.star", "--o", "Train/job010", "--model",
                                   "rotinv-ae", *SMALL_NET, "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                                   "--j", "1", "--quiet"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    before = _tree(sandbox)
    res = CliRunner().invoke(cli, ["predict", "--i", "Select/job005/particles.star", "--model", "Train/job010",
                                   "--o", out, "--device", "cpu", "--j", "1", "--quiet"], catch_exceptions=False)  # fmt: skip
    assert res.exit_code == 0, res.output
    output = (sandbox / "project" / out).resolve()
    assert len(read_star(output)) == 24
    changed = _changes(before, _tree(sandbox))
    assert changed and all(_inside(p, output, sandbox) for p in changed), sorted(changed)


def test_symlinks_in_the_output_are_replaced_not_followed_outside(sandbox):
    # A link left where an output goes (by a user, or by someone else on a shared project) points elsewhere:
    # writing replaces the link; the file it points to is never written.
    victim = sandbox / "elsewhere" / "victim"
    victim.write_bytes(b"not yours\n")
    (sandbox / "project" / "Train" / "job010").mkdir(parents=True)
    (sandbox / "project" / "Train" / "job010" / "model.pt").symlink_to(victim)
    (sandbox / "project" / "predicted.star").symlink_to(victim)
    train = ["train", "--i", "Select/job005/particles.star", "--o", "Train/job010", "--model", "rotinv-ae", *SMALL_NET,
             "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--j", "1", "--quiet"]  # fmt: skip
    assert CliRunner().invoke(cli, train, catch_exceptions=False).exit_code == 0
    predict = ["predict", "--i", "Select/job005/particles.star", "--model", "Train/job010", "--o", "predicted.star",
               "--device", "cpu", "--j", "1", "--quiet"]  # fmt: skip
    assert CliRunner().invoke(cli, predict, catch_exceptions=False).exit_code == 0
    assert victim.read_bytes() == b"not yours\n"
    for out in (sandbox / "project" / "Train" / "job010" / "model.pt", sandbox / "project" / "predicted.star"):
        assert out.is_file() and not out.is_symlink()


def test_image_paths_to_files_that_are_not_stacks_are_read_refused_and_nothing_written(sandbox):
    star = read_star(sandbox / "project" / "Select" / "job005" / "particles.star")
    parts = star.particles.copy()
    parts.loc[3, "rlnImageName"] = "1@" + "../" * 30 + "etc/passwd"  # climbs to / whatever the depth
    write_star(star.with_particles(parts), sandbox / "project" / "hostile.star")
    before = _tree(sandbox)
    res = CliRunner().invoke(cli, ["train", "--i", "hostile.star", "--o", "Train/job012", "--model", "rotinv-ae",
                                   *SMALL_NET, "--epochs", "1", "--device", "cpu", "--quiet"])  # fmt: skip
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "/etc/passwd: " in res.stderr and "(named in hostile.star)" in res.stderr
    assert _changes(before, _tree(sandbox)) == set()
