"""A run's tile set: its subset drawn before decoding, the tile and crop sizes it uses, and its
tiles decoded once into the cache (or read from it) and returned over it, not copied."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lib.config import original_crop
from lib.data.cache import DECODED, TileCache, _raise_unless_skipped
from lib.data.decode import TILE_SIZE, DecodeRecord
from lib.data.layouts import LayoutError, TileIndex, TileSource, read_layout
from lib.data.splits import _seeded_order
from lib.paths import TILE_CACHE_DIR

@dataclass
class TileSet:
    """A data set's labelled tiles as a run uses them. Every array is indexed by position in
    index.train_paths (N positions); `kept` marks those the run drew (subset) and could read."""

    index: TileIndex
    sources: list[TileSource]  # every labelled tile, in the index's order
    tiles: torch.Tensor | None  # (N, 3, size, size) uint8 over the memory-mapped cache (only kept rows filled); None when only checked
    labels: torch.Tensor  # (N,) int64
    groups: np.ndarray | None  # (N,) str
    record: DecodeRecord
    kept: np.ndarray  # (N,) bool
    size: int = TILE_SIZE  # pixels: every tile is size x size
    subset: int = 0  # the draw made before decoding (0: every tile), with its seed
    seed: int = 0
    notes: list[str] = field(default_factory=list)  # for the run's output and record: tile size, subset, cache, decoding

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())



def crop_for(tile_size: int, crop_size: int = 0, model_input: int | None = None) -> int:
    """The random crop's side in pixels: `crop_size` when set, else the original's 200 of 256 scaled
    to the tile (75 of 96), or, for a network with a fixed input side `model_input` (the baseline
    CNN's 256), the whole tile: augmenting it rotates and flips without cropping. Raises ValueError,
    naming the parameter, when the crop is larger than the tile."""
    follows = tile_size if model_input else original_crop(tile_size)
    if crop_size > tile_size:
        raise ValueError(f"parameter crop_size={crop_size} is larger than the {tile_size}x{tile_size} tiles: set crop_size to at "
                         f"most {tile_size} (0 follows the tile: {follows}), or tile_size to at least {crop_size}")  # fmt: skip
    return crop_size or follows


def choose_tile_size(cache: TileCache, rows: np.ndarray, size: int, model_input: int | None) -> tuple[int, str]:
    """The side in pixels the run's tiles are brought to, and why, in words: `size` when set, else a
    model's fixed input, else the tiles' own when all the run uses share one (headers only), else TILE_SIZE."""
    if size:
        return size, f"tile_size {size}: the run's parameter (registry or given)"
    native, shapes = cache.native_size(rows)
    if model_input:
        if native == model_input:
            return model_input, f"tile_size {model_input}: the data set's own"
        return model_input, (f"tile_size {model_input}: the model takes {model_input}x{model_input} tiles only, so the data set's "
                             f"tiles ({shapes}) are resized to it")  # fmt: skip
    if native:
        return native, f"tile_size {native}: the data set's own (every tile the run uses is {native}x{native}; set tile_size to resize)"
    return TILE_SIZE, (f"tile_size {TILE_SIZE}: the tiles the run uses are not all one square size ({shapes}), so all are brought "
                       f"to {TILE_SIZE}x{TILE_SIZE}; set tile_size to choose")  # fmt: skip


def load_tile_set(index: TileIndex, size: int = TILE_SIZE, skip_bad_images: bool = False,
                  cache_dir: str | Path | None = TILE_CACHE_DIR, keep_tiles: bool = True, subset: int = 0, seed: int = 0,
                  model_input: int | None = None, multi_page: str = "refuse") -> TileSet:  # fmt: skip
    """The labelled tiles of `index` a run uses: with `subset`, that many drawn first (seeded, as the
    split draws them), so only those are decoded; all of them when the data set has no more. `size`
    0 chooses the size (choose_tile_size; `model_input` is a network's fixed input side). Tiles are
    decoded once into the cache (or read from it) and returned over it, not copied; with
    keep_tiles=False only checked, for the original input path (tiles is then None).
    Raises BadImagesError (unreadable files, unless skip_bad_images), LayoutError (one class left),
    ValueError (no room for the cache)."""
    n = len(index.train_paths)
    drawn = np.sort(_seeded_order(n, seed, subset))
    notes = []
    if subset > n:
        notes.append(f"subset={subset} asks for more than the data set's {n} labelled tiles: all {n} are used")
    elif subset:
        notes.append(f"subset: {subset} of the {n} labelled tiles drawn (seed {seed}) before decoding; only those are decoded")
    cache = TileCache(index.train_paths, cache_dir, keep_tiles, multi_page)
    size, why = choose_tile_size(cache, drawn, size, model_input)
    notes.insert(0, why)
    cache.open_size(size)
    cache.decode(drawn, "decoding labelled tiles" if keep_tiles else "checking tiles")
    record = cache.record(drawn)
    _raise_unless_skipped(record, skip_bad_images)
    kept = np.zeros(n, dtype=bool)
    kept[drawn[cache.state[drawn] == DECODED]] = True
    labels = torch.from_numpy(index.train_labels)
    if len(labels[kept].unique()) < 2:
        raise LayoutError(f"{index.data_dir}: after leaving out {record.skipped} unreadable file(s), only class {int(labels[kept][0])} remains")
    notes += ([f"decoded tiles: {record.cache}"] if record.cache else []) + record.notes(size)
    return TileSet(index=index, sources=index.train_paths, tiles=cache.tiles() if keep_tiles else None, labels=labels,
                   groups=index.train_groups, record=record, kept=kept, size=size, subset=subset, seed=seed, notes=notes)  # fmt: skip



def read_run_layout(config) -> TileIndex:
    """The TileIndex a run's config names (its data_dir and the parameters that steer how the
    layout is read); the one call that training, evaluation and the pipeline share."""
    return read_layout(config.data_dir, config.positive_class, class_map=config.class_map, group_level=config.group_level)
