"""Tiles in: reading the course layout, the seeded split, decoded uint8 tiles and their batches."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

COURSE_LAYOUT_HELP = (
    "the course layout: train/1.jpg ... with train_label.csv (a header row, then id,label rows: "
    "id = file stem, label 0 or 1), and optionally test/1.jpg ... (and test_label.csv for scoring)"
)


@dataclass
class TileIndex:
    """Where a data set's tiles are, and their labels where known."""

    data_dir: Path
    train_paths: list[Path]
    train_labels: np.ndarray  # int64, 0 or 1
    test_ids: list[int]
    test_paths: list[Path]
    test_labels: np.ndarray | None  # only for scoring; training never reads it
    origin: str  # where the data came from, for the report


def _read_label_file(path: Path) -> list[tuple[str, int]]:
    """Rows of (id, label) read by position after a header row, as the original did."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)  # the header: "id,label" or "# Id,Values", whatever its names
        for line_number, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{path}, line {line_number}: expected 'id,label', got {','.join(row)!r}")
            try:
                label = int(row[1])
            except ValueError:
                raise ValueError(f"{path}, line {line_number}: label {row[1]!r} is not 0 or 1") from None
            if label not in (0, 1):
                raise ValueError(f"{path}, line {line_number}: label {label} is not 0 or 1")
            rows.append((row[0].strip(), label))
    return rows


def _image_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")}


def read_course_layout(data_dir: str | Path) -> TileIndex:
    """The original course layout under `data_dir`, checked: every label has its image."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist; expected {COURSE_LAYOUT_HELP}")
    label_file = data_dir / "train_label.csv"
    train_dir = data_dir / "train"
    if not label_file.is_file() or not train_dir.is_dir():
        found = sorted(p.name for p in data_dir.iterdir())[:20]
        raise FileNotFoundError(f"{data_dir} is not in {COURSE_LAYOUT_HELP}; it holds: {', '.join(found) or 'nothing'}")
    images = _image_by_stem(train_dir)
    rows = _read_label_file(label_file)
    missing = [tile_id for tile_id, _ in rows if tile_id not in images]
    if missing:
        raise FileNotFoundError(
            f"{label_file}: {len(missing)} id(s) have no image in {train_dir}: {', '.join(missing[:10])}"
        )
    if not rows:
        raise ValueError(f"{label_file} lists no tiles")
    test_dir = data_dir / "test"
    test_images = _image_by_stem(test_dir) if test_dir.is_dir() else {}
    test_ids = sorted(int(stem) for stem in test_images if stem.isdigit())
    test_labels = None
    test_label_file = data_dir / "test_label.csv"
    if test_label_file.is_file():
        known = dict(_read_label_file(test_label_file))
        if all(str(i) in known for i in test_ids):
            test_labels = np.array([known[str(i)] for i in test_ids], dtype=np.int64)
    origin_file = data_dir / "DATASET.json"
    origin = "generated (lib/synthetic.py)" if origin_file.exists() else f"user data at {data_dir}"
    return TileIndex(
        data_dir=data_dir,
        train_paths=[images[tile_id] for tile_id, _ in rows],
        train_labels=np.array([label for _, label in rows], dtype=np.int64),
        test_ids=test_ids,
        test_paths=[test_images[str(i)] for i in test_ids],
        test_labels=test_labels,
        origin=origin,
    )


@dataclass(frozen=True)
class Split:
    """Positions into a TileIndex's training list."""

    train: np.ndarray
    valid: np.ndarray


def seeded_split(n_tiles: int, valid_fraction: float, seed: int, subset: int = 0) -> Split:
    """The original's split: a seeded permutation, its first floor((1 - f) * n) train, the rest
    validate. With `subset`, that many tiles are drawn first (seeded) and split the same way."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_tiles, generator=generator).numpy()
    if subset:
        if subset > n_tiles:
            raise ValueError(f"subset={subset} asks for more tiles than the {n_tiles} labelled ones")
        order = order[:subset]
    n_train = math.floor((1 - valid_fraction) * len(order))
    return Split(train=order[:n_train], valid=order[n_train:])


def decode_tiles(paths: list[Path], desc: str = "decoding tiles") -> torch.Tensor:
    """Decode image files into one (N, 3, H, W) uint8 tensor; every tile must share one size."""
    from tqdm import tqdm

    tiles = None
    for i, path in enumerate(tqdm(paths, desc=desc, unit="tile", leave=False)):
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # a writable copy, as torch wants
        if tiles is None:
            tiles = torch.empty((len(paths), 3, *array.shape[:2]), dtype=torch.uint8)
        if array.shape[:2] != tuple(tiles.shape[2:]):
            raise ValueError(f"{path} is {array.shape[1]}x{array.shape[0]}; the other tiles are {tiles.shape[3]}x{tiles.shape[2]}")
        tiles[i] = torch.from_numpy(array).permute(2, 0, 1)
    if tiles is None:
        raise ValueError("no tiles to decode")
    return tiles


def original_augmentation(crop_size: int) -> v2.Compose:
    """The original's training transforms, on one uint8 tile at a time (each tile its own draw)."""
    return v2.Compose([
        v2.RandomRotation(45),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomCrop(crop_size),
    ])  # fmt: skip


class TileDataset(Dataset):
    """Decoded uint8 tiles with labels; yields float tiles in [0, 1] as ToTensor did."""

    def __init__(self, tiles: torch.Tensor, labels: torch.Tensor, transform=None):
        self.tiles, self.labels, self.transform = tiles, labels, transform

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int):
        tile = self.tiles[i]
        if self.transform is not None:
            tile = self.transform(tile)
        return tile.float().div_(255), self.labels[i]


def make_loader(dataset: TileDataset, batch_size: int, shuffle: bool, seed: int, what: str) -> DataLoader:
    """A loader with the original's drop_last; fails by name when not one full batch fits."""
    if len(dataset) < batch_size:
        raise ValueError(
            f"the {what} set has {len(dataset)} tiles, fewer than batch_size={batch_size}; with drop_last "
            "(as the original) it would give no batch. Use a smaller batch_size or more tiles (subset)."
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=True, generator=generator)
