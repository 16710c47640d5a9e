"""The job's report of the memory it used."""

from __future__ import annotations

from pathlib import Path

from relion_canon.resources import peak_rss_mb, resources_used


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def test_the_peak_is_at_least_the_current_resident_size_in_mib():
    # ru_maxrss is in KiB on Linux: read as bytes or as MiB twice over, it would be 1024× off either way. (The
    # kernel's per-CPU page counters let the two readings differ by a few pages.)
    current = _current_rss_mb()
    assert current - 16 <= peak_rss_mb() < 64 * current + 4096


def test_a_cpu_job_reports_no_gpu():
    used = resources_used("cpu")
    assert set(used) == {"peak_rss_mb"} and used["peak_rss_mb"] > 0
