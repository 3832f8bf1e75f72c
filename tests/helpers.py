"""Small image files for layout tests: real encoded files, written where a test asks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_tile(path: Path, seed: int, size: int = 32, mode: str = "RGB") -> Path:
    """A random RGB tile saved at `path` (format from the suffix), converted to `mode` first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def class_folders(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """ImageFolder layout: one folder per class name holding `count` tiles."""
    seed = 0
    for name, count in counts.items():
        for i in range(count):
            seed += 1
            write_tile(root / name / f"{name}{i}{suffix}", seed)
    return root
