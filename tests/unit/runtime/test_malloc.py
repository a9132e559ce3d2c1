import platform

import pytest

from services.runtime.malloc import trim_heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_heap_can_be_trimmed_on_glibc() -> None:
    # Every service and the fake model trim in the background (the images are Debian, glibc).
    assert trim_heap() is True
