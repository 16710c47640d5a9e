"""Runs killed from outside: SIGKILL in the middle of a training epoch, SIGTERM in the middle of `predict`.

Both run the real command line in a subprocess (a kill must hit a process that is not pytest), on CPU with one
thread and a fixed seed, with a real small network (the toy model exists only inside the test process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from relion_canon.cli.main import cli
from relion_canon.context import QUIET
from relion_canon.io.imagename import format_image_name, parse_image_name
from relion_canon.io.star import read_star, write_star
from relion_canon.preprocess import PreprocessConfig
from relion_canon.train import TrainConfig, train
from relion_canon.train import checkpoint

REPO = Path(__file__).resolve().parents[2]
SIM_TINY = REPO / "test_data" / "sim_tiny" / "particles.star"
SMALL_NET = {"width": 8, "max_width": 16, "critic_width": 8}
EPOCHS = 3
TIMEOUT = 180  # seconds for any one subprocess; a shared CI machine can be slow, never that slow

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "relion_canon.cli.main", *map(str, args)]


def _env() -> dict[str, str]:
    # The subprocess imports this checkout, not whatever copy is installed, with one thread as the tests do.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")


def _repeated(out: Path, copies: int) -> Path:
    """sim_tiny's particles named ``copies`` times each (absolute stack paths), so a pass lasts long enough to cut."""
    star = read_star(SIM_TINY)
    parts = pd.concat([star.particles] * copies, ignore_index=True)
    stack = str(SIM_TINY.parent / "particles.mrcs")
    parts["rlnImageName"] = [format_image_name(parse_image_name(n).index, stack) for n in parts["rlnImageName"]]
    return write_star(star.with_particles(parts), out)


def _wait_for(condition, proc: subprocess.Popen, what: str, poll: float = 0.002) -> bool:
    """Poll until ``condition()``; False if the process ended first (it never hangs the test)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return True


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    particles = _repeated(tmp_path / "particles.star", 3)  # 72 particles: 4 steps of 16 per epoch
    sets = [f"--set={k}={v}" for k, v in SMALL_NET.items()]
    args = ["train", "--i", particles, "--model", "rotinv-ae", *sets, "--epochs", EPOCHS, "--batch-size", 16,
            "--device", "cpu", "--j", 1, "--seed", 0, "--quiet"]  # fmt: skip
    cut = subprocess.Popen(_cli(*args, "--o", tmp_path / "cut"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=_env(), cwd=tmp_path)
    ckpt = tmp_path / "cut" / "checkpoint.pt"

    def kill_in_second_epoch() -> None:
        # checkpoint.pt appears (atomically) at the end of epoch 1; half an epoch later epoch 2 is under way.
        if _wait_for(ckpt.exists, cut, "the first checkpoint"):
            time.sleep(0.5 * checkpoint.load(ckpt)["history"][0]["seconds"])
            cut.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_in_second_epoch)
    killer.start()
    try:
        # Meanwhile, here: the uninterrupted run, with the config the command line builds from these options.
        config = TrainConfig(model="rotinv-ae", model_options=dict(SMALL_NET), preprocess=PreprocessConfig(),
                             epochs=EPOCHS, batch_size=16, seed=0, device="cpu", threads=1)
        full = train(particles, tmp_path / "full", config, context=QUIET)
        killer.join(TIMEOUT)
        out, err = cut.communicate(timeout=TIMEOUT)
    finally:
        cut.kill()
    assert cut.returncode == -signal.SIGKILL, err
    done = checkpoint.load(ckpt)  # whole, whatever the kill interrupted
    assert 1 <= done["epoch"] < EPOCHS, "the run ended before the kill; nothing was interrupted"
    # Epoch lines are printed just before the checkpoint is written: a kill in between leaves one line more.
    assert done["epoch"] <= out.count(f"/{EPOCHS}  ") <= done["epoch"] + 1

    # The same command again resumes by default (in this process: the kill is over, no need to pay for a start-up).
    resumed = CliRunner().invoke(cli, [str(a) for a in (*args, "--o", tmp_path / "cut")], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert f"Resuming from {ckpt} after epoch {done['epoch']}/{EPOCHS}" in resumed.stdout

    a = checkpoint.load(full.model_path)
    b = checkpoint.load(tmp_path / "cut" / "model.pt")
    assert b["train_config"] == a["train_config"]  # the same run, started from the command line or from here
    # The engine's guarantee on the CPU: the resumed run ends bit for bit where the uninterrupted one does.
    assert _states_equal(a["state_dict"], b["state_dict"])
    loss_keys = [k for k in a["history"][0] if "/" in k]
    assert [[h[k] for k in loss_keys] for h in b["history"]] == [[h[k] for k in loss_keys] for h in a["history"]]
    assert len(b["history"]) == EPOCHS


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A rotinv-ae trained for one epoch on sim_tiny (32 px, 2.5 Å/px), in this process."""
    out = tmp_path_factory.mktemp("interrupt_model")
    config = TrainConfig(model="rotinv-ae", model_options=dict(SMALL_NET), preprocess=PreprocessConfig(), epochs=1,
                         batch_size=8, seed=0, device="cpu", threads=1)
    return train(SIM_TINY, out, config, context=QUIET).model_path


def _holds_open(pid: int, path: Path) -> bool:
    """True once process ``pid`` has ``path`` open (Linux /proc): predict keeps the stack open while reading."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd_dir / fd) == str(path) for fd in os.listdir(fd_dir))
    except OSError:  # the process ended, or a descriptor closed while we looked
        return False


def _temp_beside(target: Path) -> list[Path]:
    return list(target.parent.glob(f".{target.name}.*.tmp"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see what the process is doing")
def test_sigterm_during_predict_leaves_old_or_complete_output(small_model, tmp_path):
    particles = _repeated(tmp_path / "particles.star", 50)  # 1200 particles: reading them lasts a while
    n = len(read_star(particles))
    stack = SIM_TINY.parent / "particles.mrcs"
    runs = {}
    for when in ("reading", "writing"):
        target = tmp_path / when / "predicted.star"
        target.parent.mkdir()
        target.write_bytes(b"previous run's output\n")  # what a killed run must leave untouched, or replace whole
        runs[when] = target, subprocess.Popen(
            _cli("predict", "--i", particles, "--model", small_model, "--o", target, "--device", "cpu", "--j", 1, "--quiet"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
        )  # fmt: skip
    outcome = {}
    try:
        target, proc = runs["reading"]
        assert _wait_for(lambda: _holds_open(proc.pid, stack), proc, "predict to read particles"), proc.communicate()
        proc.send_signal(signal.SIGTERM)
        target, proc = runs["writing"]
        # The output is written to a hidden temporary file beside it, then renamed: kill while that file exists.
        caught = _wait_for(lambda: bool(_temp_beside(target)), proc, "the output to be written", poll=0.0005)
        if caught:
            proc.send_signal(signal.SIGTERM)
        for when, (target, proc) in runs.items():
            proc.communicate(timeout=TIMEOUT)
            outcome[when] = proc.returncode
    finally:
        for _, proc in runs.values():
            proc.kill()
    assert outcome["reading"] != 0  # stopped (killed today; a graceful SIGTERM handler would exit non-zero too)
    assert runs["reading"][0].read_bytes() == b"previous run's output\n"
    for when, (target, _) in runs.items():
        # Nothing but the output and, after a kill mid-write, the hidden temporary file it was being written to
        # (SIGTERM's default action ends the process before atomic_path can remove it).
        assert {p.name for p in target.parent.iterdir()} - {target.name} <= {p.name for p in _temp_beside(target)}
        if target.read_bytes() != b"previous run's output\n":  # then it is the whole new file
            star = read_star(target)
            assert len(star) == n and np.isfinite(star.particles["rlnAnglePsi"].to_numpy(float)).all()
            assert target.read_text().endswith("\n")
