"""How fast the arithmetic runs: precision, memory format, compilation. One place decides, from the
run's parameters and the device, and says what it decided (the run records it)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import sys
from dataclasses import dataclass

import torch

from lib.config import PRECISIONS


@dataclass(frozen=True)
class SpeedSettings:
    precision: str  # "fp32" or "bf16" (autocast; weights and optimizer stay fp32)
    channels_last: bool  # NHWC activations: what cuDNN's fastest convolutions want
    compile: bool  # torch.compile the model
    keep_host_memory: bool = False  # see host_memory(): freed activations stay with the process


# The original's arithmetic: fp32, contiguous activations, no compilation, the C library's own
# memory handling.
ORIGINAL = SpeedSettings(precision="fp32", channels_last=False, compile=False)


def resolve_device(name: str) -> torch.device:
    """The torch device a `device` parameter names: "auto" is CUDA when present, else the CPU.
    Raises ValueError for a name that is no device, or CUDA asked for where PyTorch sees none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"parameter device={name!r} names no device: use auto, cpu, cuda or cuda:N (N the GPU's number)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for, but PyTorch sees no CUDA device here; use 'auto' or 'cpu'")
    return device


def speed_settings(device: torch.device, precision: str = "auto", compile_model: bool = False) -> SpeedSettings:
    """`auto`: bf16 autocast on a CUDA GPU that supports it; fp32 on the CPU, where a CPU without
    AVX-512 bf16 (as the 2-core development machine) runs bf16 slower, not faster. channels_last
    everywhere: cuDNN's fastest convolutions want it, and on the 2-core CPU it measured 1.05-1.4x for
    ResNet50 and 1.4x for the baseline (oneDNN's blocked kernels). On a CPU with glibc, the memory of
    activations is kept between steps (host_memory())."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed tile sizes: let cuDNN pick its fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores, as convolutions already are
    return SpeedSettings(precision=precision, channels_last=True, compile=compile_model,
                         keep_host_memory=not cuda and _glibc() is not None)  # fmt: skip


# glibc's mallopt parameters (malloc.h) and the values its own dynamic thresholds settle at on a
# 64-bit machine once large blocks have been freed (DEFAULT_MMAP_THRESHOLD_MAX, and twice that).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_SETTLED = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20}


@functools.cache
def _glibc():
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def host_memory(settings: SpeedSettings):
    """Within this block, memory freed by one training step is kept for the next.

    glibc serves every block over 32 MiB (a ResNet50 activation at batch 16 is 41 MiB) with a
    fresh mmap and returns it on free, so each step page-faults and zero-fills a gigabyte or more
    anew: 10-15 % of a ResNet50 step on the 2-core CPU. Taking all blocks from the heap and not
    trimming it makes a step reuse the last one's pages; the cost is a resident size that stays at
    its peak (+12 % measured) until the block ends, when the heap is trimmed and glibc's usual
    behaviour restored. Does nothing on CUDA (activations live on the GPU) or without glibc."""
    libc = _glibc() if settings.keep_host_memory else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        for parameter, value in _GLIBC_SETTLED.items():
            libc.mallopt(parameter, value)
        libc.malloc_trim(0)


def autocast(device: torch.device, settings: SpeedSettings):
    """bf16 autocast where asked, otherwise nothing."""
    if settings.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, settings: SpeedSettings, wrap=None):
    """(the module, what to call for steps): the module in the chosen memory format, wrapped by
    `wrap` when given (DistributedDataParallel under torchrun), and compiled when asked (around the
    wrapper, as PyTorch's DDP documentation does). Checkpoints save the module (no compile or DDP
    prefixes in its state dict)."""
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = wrap(model) if wrap is not None else model
    return model, (torch.compile(step) if settings.compile else step)


def prepare_input(tiles: torch.Tensor, settings: SpeedSettings) -> torch.Tensor:
    return tiles.contiguous(memory_format=torch.channels_last) if settings.channels_last else tiles


def describe(settings: SpeedSettings) -> str:
    return (f"{settings.precision}{', channels_last' if settings.channels_last else ''}{', torch.compile' if settings.compile else ''}"
            f"{', host memory kept between steps' if settings.keep_host_memory else ''}")  # fmt: skip
