"""Speed settings: what each device gets, and the host-memory block doing what it says."""

import ctypes
import os

import pytest
import torch

from lib.training import speed
from lib.training.speed import ORIGINAL, describe, host_memory, speed_settings


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def _mallinfo() -> _MallInfo2:
    mallinfo2 = speed._glibc().mallinfo2
    mallinfo2.restype = _MallInfo2
    return mallinfo2()


def _mmapped_bytes_for_a_block_no_free_space_holds() -> int:
    """How many more bytes glibc holds in mmapped blocks while a tensor 64 MiB larger than all the
    heap's free space exists: the heap must grow for it, or glibc must map it apart."""
    before = _mallinfo()
    block = torch.empty(before.fordblks + 64 * 2**20, dtype=torch.uint8)  # never written: costs no memory
    during = _mallinfo().hblkhd
    del block
    return during - before.hblkhd


def _resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


needs_glibc = pytest.mark.skipif(speed._glibc() is None or not hasattr(speed._glibc(), "mallinfo2"),
                                 reason="host_memory acts on glibc (2.33 or later to observe it) only")  # fmt: skip


def test_cpu_gets_fp32_channels_last_and_says_so():
    settings = speed_settings(torch.device("cpu"))
    assert (settings.precision, settings.channels_last, settings.compile) == ("fp32", True, False)
    assert describe(settings).startswith("fp32, channels_last")
    assert describe(ORIGINAL) == "fp32"
    with pytest.raises(ValueError, match="precision='fp16'"):
        speed_settings(torch.device("cpu"), "fp16")


@needs_glibc
def test_host_memory_serves_large_blocks_from_the_heap_and_restores_glibc_after():
    settings = speed_settings(torch.device("cpu"))
    assert settings.keep_host_memory and "host memory kept between steps" in describe(settings)
    with host_memory(settings):
        inside = _mmapped_bytes_for_a_block_no_free_space_holds()
    after = _mmapped_bytes_for_a_block_no_free_space_holds()
    with host_memory(ORIGINAL):  # the original's settings leave glibc alone
        original = _mmapped_bytes_for_a_block_no_free_space_holds()
    assert inside == 0
    assert after >= 64 * 2**20 and original >= 64 * 2**20


@needs_glibc
def test_host_memory_keeps_freed_pages_until_the_block_ends():
    with host_memory(speed_settings(torch.device("cpu"))):
        block = torch.ones(256 * 2**20, dtype=torch.uint8)  # written: resident
        del block
        kept = _resident_bytes()
    released = _resident_bytes()
    assert kept - released >= 200 * 2**20


@needs_glibc
def test_host_memory_restores_glibc_when_the_block_fails():
    with pytest.raises(RuntimeError, match="stopped"):
        with host_memory(speed_settings(torch.device("cpu"))):
            raise RuntimeError("stopped")
    assert _mmapped_bytes_for_a_block_no_free_space_holds() >= 64 * 2**20
