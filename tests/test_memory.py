"""siren.memory.trim: frees cyclic garbage (a pruned trial's frames) before trimming the heap."""

import gc
import platform
import weakref

import pytest

from siren.memory import trim


class _Holder:
    pass


def test_trim_collects_reference_cycles():
    a, b = _Holder(), _Holder()
    a.other, b.other = b, a          # a cycle: only the cycle collector frees it
    alive = weakref.ref(a)
    gc.disable()
    try:
        del a, b
        assert alive() is not None
        trim()
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_trims_the_glibc_heap():
    assert trim() is True
