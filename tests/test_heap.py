from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relion_canon.heap import kept_heap_env, return_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are a glibc feature")
def test_thresholds_are_set_on_glibc_and_setting_them_again_is_harmless():
    assert return_freed_memory() is True
    assert return_freed_memory() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc variables")
def test_kept_heap_env_is_asked_for_once_and_never_over_the_users_own_setting():
    env = kept_heap_env({"PATH": "/usr/bin"})
    assert env is not None
    assert env["PATH"] == "/usr/bin"
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) > 32 << 20  # past what mallopt allows
    assert kept_heap_env(env) is None  # the restarted process does not restart again
    assert kept_heap_env({"MALLOC_TOP_PAD_": "0"}) is None
    assert kept_heap_env({"RELION_CANON_HEAP": "off"}) is None


@pytest.mark.skipif(not Path("/proc/self/environ").exists() or platform.libc_ver()[0] != "glibc",
                    reason="reads the child's environment from /proc (Linux, glibc)")
@pytest.mark.parametrize("script", ["relion-canon", "relion_canon_external", "-m relion_canon.cli.main"])
def test_console_scripts_restart_with_the_kept_heap(script, tmp_path):
    """Also ``python -m relion_canon.cli.main``, which torchrun starts once per process: without the kept heap
    each process ran the classification's batches at the unmapped heap's speed."""
    if script.startswith("-m "):
        command = [sys.executable, "-m", script.split()[1]]
    else:
        path = shutil.which(script)
        if path is None:
            pytest.skip(f"{script} is not installed (pip install -e .)")
        command = [path]
    env = {key: value for key, value in os.environ.items()
           if key != "RELION_CANON_HEAP" and not key.startswith("MALLOC_")}
    child = subprocess.Popen([*command, "--help"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = b""
    while child.poll() is None:
        try:
            seen = Path(f"/proc/{child.pid}/environ").read_bytes()
        except OSError:
            break
        if b"RELION_CANON_HEAP=kept" in seen:
            break
        time.sleep(0.005)
    child.wait(timeout=60)
    assert child.returncode == 0
    assert b"RELION_CANON_HEAP=kept" in seen and b"MALLOC_MMAP_THRESHOLD_=" in seen
