import platform

import pytest

from services.runtime.malloc import fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_mmap_threshold_is_pinned_on_glibc() -> None:
    # Every service and the fake model call this at start (the images are Debian, glibc).
    assert fix_mmap_threshold() is True
