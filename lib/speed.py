"""How fast the arithmetic runs: precision, memory format, compilation. One place decides, from the
run's parameters and the device, and says what it decided (the run records it)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lib.config import PRECISIONS


@dataclass(frozen=True)
class SpeedSettings:
    precision: str  # "fp32" or "bf16" (autocast; weights and optimizer stay fp32)
    channels_last: bool  # NHWC activations: what cuDNN's fastest convolutions want
    compile: bool  # torch.compile the model


# The original's arithmetic: fp32, contiguous activations, no compilation.
ORIGINAL = SpeedSettings(precision="fp32", channels_last=False, compile=False)


def speed_settings(device: torch.device, precision: str = "auto", compile_model: bool = False) -> SpeedSettings:
    """`auto`: bf16 autocast on a CUDA GPU that supports it; fp32 on the CPU, where a CPU without
    AVX-512 bf16 (as the 2-core development machine) runs bf16 slower, not faster. channels_last
    everywhere: cuDNN's fastest convolutions want it, and on the 2-core CPU it measured 1.2-1.4x for
    ResNet50 and 1.4x for the baseline (oneDNN's blocked kernels)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed tile sizes: let cuDNN pick its fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores, as convolutions already are
    return SpeedSettings(precision=precision, channels_last=True, compile=compile_model)


def autocast(device: torch.device, settings: SpeedSettings):
    """bf16 autocast where asked, otherwise nothing."""
    if settings.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, settings: SpeedSettings):
    """(the module, what to call for steps): the module in the chosen memory format, and its
    compiled form when asked. Checkpoints save the module (no compile prefixes in its state dict)."""
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, (torch.compile(model) if settings.compile else model)


def prepare_input(tiles: torch.Tensor, settings: SpeedSettings) -> torch.Tensor:
    return tiles.contiguous(memory_format=torch.channels_last) if settings.channels_last else tiles


def describe(settings: SpeedSettings) -> str:
    return f"{settings.precision}{', channels_last' if settings.channels_last else ''}{', torch.compile' if settings.compile else ''}"
