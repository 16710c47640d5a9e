from __future__ import annotations

import platform

import pytest

from relion_canon.heap import return_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are a glibc feature")
def test_thresholds_are_set_on_glibc_and_setting_them_again_is_harmless():
    assert return_freed_memory() is True
    assert return_freed_memory() is True
