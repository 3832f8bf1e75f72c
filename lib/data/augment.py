"""The original's augmentation, done for a whole batch at once on the tiles' device.

The original ran RandomRotation(45), RandomHorizontalFlip, RandomVerticalFlip and RandomCrop(200)
on one PIL image at a time in a DataLoader. Here every image of a batch still gets its own draw of
all four (torchvision.transforms.v2 called on a batch would give every image the same rotation),
and the four become one sampling grid: rotation, flips and crop cost one grid_sample together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_DEGREES = 45.0  # RandomRotation(45): uniform in [-45, 45]


@dataclass
class AugmentParams:
    """One draw per image: the same quantities torchvision's transforms draw."""

    degrees: torch.Tensor  # (B,) counter-clockwise, as torchvision's rotate
    hflip: torch.Tensor  # (B,) bool
    vflip: torch.Tensor  # (B,) bool
    top: torch.Tensor  # (B,) crop offsets in pixels
    left: torch.Tensor


def draw_params(batch: int, height: int, width: int, crop: int, generator: torch.Generator | None = None) -> AugmentParams:
    """Independent draws per image, on the CPU (tiny tensors; a CPU stream is the same on any device,
    so a seeded run augments alike on the CPU and the GPU, and resume restores it)."""
    if crop > min(height, width):
        raise ValueError(f"crop_size={crop} is larger than the {width}x{height} tiles")
    u = torch.rand(batch, generator=generator)
    flips = torch.rand(2, batch, generator=generator) < 0.5
    top = torch.randint(0, height - crop + 1, (batch,), generator=generator)
    left = torch.randint(0, width - crop + 1, (batch,), generator=generator)
    return AugmentParams((2 * u - 1) * MAX_DEGREES, flips[0], flips[1], top, left)


def sampling_grid(params: AugmentParams, height: int, width: int, crop: int, device) -> torch.Tensor:
    """(B, crop, crop, 2) grid_sample coordinates (align_corners=True) that rotate about the tile's
    centre, flip, then crop: the original's order."""
    batch = len(params.degrees)
    ys, xs = torch.meshgrid(torch.arange(crop, device=device, dtype=torch.float32),
                            torch.arange(crop, device=device, dtype=torch.float32), indexing="ij")  # fmt: skip
    # The draws travel to the device as one tensor (offsets are exact in float32); to a GPU from
    # pinned memory, so the copy does not wait for the work already queued there.
    packed = torch.stack([params.degrees, params.hflip, params.vflip, params.top, params.left]).to(torch.float32)
    if torch.device(device).type == "cuda":
        packed = packed.pin_memory()
    degrees, hflip, vflip, top, left = packed.to(device, non_blocking=True).view(5, batch, 1, 1)
    # Crop: a pixel of the output is this pixel of the flipped, rotated tile.
    x = xs + left
    y = ys + top
    # Flips: undo them to find the pixel of the rotated tile.
    x = torch.where(hflip.bool(), (width - 1) - x, x)
    y = torch.where(vflip.bool(), (height - 1) - y, y)
    # Rotation about the centre: the source of each rotated pixel, by the inverse rotation.
    cx, cy = (width - 1) / 2, (height - 1) / 2
    theta = degrees.mul(math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx, dy = x - cx, y - cy
    # Counter-clockwise on screen (y pointing down) has this inverse.
    source_x = cos * dx - sin * dy + cx
    source_y = sin * dx + cos * dy + cy
    return torch.stack((source_x / (width - 1) * 2 - 1, source_y / (height - 1) * 2 - 1), dim=-1)


def augment_batch(tiles: torch.Tensor, crop: int, generator: torch.Generator | None = None,
                  interpolation: str = "nearest", params: AugmentParams | None = None) -> torch.Tensor:
    """Float (B, 3, crop, crop) in [0, 1] from uint8 (B, 3, H, W), each tile its own rotation,
    flips and crop. `nearest` is torchvision's RandomRotation default; corners outside the tile are
    0 (black), as there."""
    batch, _, height, width = tiles.shape
    params = params or draw_params(batch, height, width, crop, generator)
    grid = sampling_grid(params, height, width, crop, tiles.device)
    images = tiles.float().div_(255)
    return F.grid_sample(images, grid, mode=interpolation, padding_mode="zeros", align_corners=True)
