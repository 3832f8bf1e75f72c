"""A run's tile set: its subset drawn before decoding, the tile and crop sizes it uses (resolved once,
before training), its tiles decoded once into the cache (or read from it) and returned over it, not
copied, normalised to a stain target when the run asks (once, cached apart), and its split into
training and validation tiles."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lib.config import BASELINE_TILE, RunConfig, original_crop
from lib.data.cache import DECODED, TileCache, _raise_unless_skipped
from lib.data.decode import TILE_SIZE, DecodeRecord
from lib.data.layouts import LayoutError, TileIndex, TileSource, read_layout
from lib.data.splits import Split, _require_trainable, _seeded_order, given_split, grouped_split, seeded_split
from lib.data.stain import StainTarget
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
    cache: TileCache | None = None  # where the tiles were decoded (stain normalisation reads them there)
    stain_kept: int = 0  # with a stain target: kept tiles whose stain was undefined (too little tissue), kept as decoded

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


def drawn_rows(n_tiles: int, seed: int, subset: int) -> np.ndarray:
    """The positions (sorted, int64) of the labelled tiles a run uses: `subset` of them drawn as the
    split draws them (seeded), or all n_tiles when subset is 0 or asks for more."""
    return np.sort(_seeded_order(n_tiles, seed, subset))


def _require_labelled(index: TileIndex) -> None:
    """A test set alone (the course layout's test part) has nothing to train on: said by name."""
    if not index.train_paths:
        raise LayoutError(f"{index.data_dir} holds test tiles only ({len(index.test_paths)}, {index.label_rule}); train on a data set "
                          "with labelled tiles, then score a trained run on these with predict_test_tiles(run_dir, data_dir=...)")  # fmt: skip


def resolve_sizes(config: RunConfig, index: TileIndex) -> tuple[RunConfig, str]:
    """The run's config with its tile and crop sizes as it will use them, and why the tile size, in
    words. Done once, before training: what the run records in config.json, resumes with and is
    evaluated at. tile_size 0 becomes the size of the tiles the run draws (choose_tile_size: file
    headers only, remembered in the cache), or the baseline CNN's fixed 256; crop_size 0 follows the
    tile when augmenting (crop_for). A config already resolved comes back equal.
    Raises ValueError (crop_for) for a crop larger than the tile, LayoutError for a test set alone."""
    _require_labelled(index)
    model_input = BASELINE_TILE if config.model == "baseline" else None
    cache = TileCache(index.train_paths, config.cache_dir or None, config.input_pipeline == "tensor", config.multi_page, config.non_square)
    size, why = choose_tile_size(cache, drawn_rows(len(index.train_paths), config.seed, config.subset), config.tile_size, model_input)
    crop = crop_for(size, config.crop_size, model_input) if config.augment else config.crop_size
    return replace(config, tile_size=size, crop_size=crop), why


def load_tile_set(index: TileIndex, size: int = TILE_SIZE, skip_bad_images: bool = False,
                  cache_dir: str | Path | None = TILE_CACHE_DIR, keep_tiles: bool = True, subset: int = 0, seed: int = 0,
                  model_input: int | None = None, multi_page: str = "refuse", size_note: str = "",
                  non_square: str = "crop") -> TileSet:  # fmt: skip
    """The labelled tiles of `index` a run uses: with `subset`, that many drawn first (seeded, as the
    split draws them), so only those are decoded; all of them when the data set has no more. `size`
    0 chooses the size (choose_tile_size; `model_input` is a network's fixed input side); a run passes
    the size resolve_sizes chose, with its reason as `size_note` for the notes. Tiles are
    decoded once into the cache (or read from it) and returned over it, not copied; with
    keep_tiles=False only checked, for the original input path (tiles is then None). Tiles that are
    not square are centre-cropped or padded to square as `non_square` says, never squashed.
    Raises BadImagesError (unreadable files, unless skip_bad_images), LayoutError (one class left, or a test set alone),
    ValueError (no room for the cache)."""
    _require_labelled(index)
    n = len(index.train_paths)
    drawn = drawn_rows(n, seed, subset)
    notes = []
    if subset > n:
        notes.append(f"subset={subset} asks for more than the data set's {n} labelled tiles: all {n} are used")
    elif subset:
        notes.append(f"subset: {subset} of the {n} labelled tiles drawn (seed {seed}) before decoding; only those are decoded")
    cache = TileCache(index.train_paths, cache_dir, keep_tiles, multi_page, non_square)
    size, why = (size, size_note) if size and size_note else choose_tile_size(cache, drawn, size, model_input)
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
                   groups=index.train_groups, record=record, kept=kept, size=size, subset=subset, seed=seed, notes=notes,
                   cache=cache)  # fmt: skip


def normalize_tile_set(tile_set: TileSet, target: StainTarget, device=None) -> TileSet:
    """The tile set with its kept tiles normalised to `target` (TileCache.stain_normalized, on
    `device`: once, then read from the cache), and a note saying how many were kept as decoded."""
    rows = np.flatnonzero(tile_set.kept)
    tiles, kept, now = tile_set.cache.stain_normalized(rows, target, device, "normalising stain")
    done = f"{now} normalised now, the rest read from the cache" if now < len(rows) else "all normalised now"
    note = (f"stain normalised ({target.method}), once per tile and cached apart from the raw tiles ({done}): {len(rows) - kept} of "
            f"the run's {len(rows)} tiles; {kept} kept as decoded (too little tissue for a stain estimate); target: {target.describe()}")  # fmt: skip
    return replace(tile_set, tiles=tiles, notes=[*tile_set.notes, note], stain_kept=kept)



def make_split(tile_set: TileSet, how: str, valid_fraction: float, seed: int, subset: int = 0) -> Split:
    """`auto`: the data set's own split when it has one, else grouped when it names groups, else the
    original's random split. Positions index the tile set; only its kept tiles are used. Raises
    ValueError when a side would hold fewer than two tiles of either class (nothing to learn or
    measure), with the counts, or when the tile set was drawn with another subset or seed."""
    if tile_set.subset and (subset, seed) != (tile_set.subset, tile_set.seed):
        raise ValueError(f"the tile set was drawn with subset={tile_set.subset}, seed={tile_set.seed}; split it with the same, "
                         f"not subset={subset}, seed={seed}")  # fmt: skip
    given, kept = tile_set.index.given_valid, tile_set.kept
    if how == "auto" and given is not None:
        split = given_split(given, seed, subset, kept)
    elif how == "grouped" or (how == "auto" and tile_set.groups is not None):
        if tile_set.groups is None:
            raise ValueError(f"split='grouped' asked for, but {tile_set.index.data_dir} ({tile_set.index.layout} layout) names no groups; "
                             "give a CSV with a group column, or use split='random'")  # fmt: skip
        split = grouped_split(tile_set.groups, valid_fraction, seed, subset, kept)
    else:
        split = seeded_split(len(tile_set.labels), valid_fraction, seed, subset, kept)
        if tile_set.groups is not None or given is not None:  # random asked for over grouped or split data: allowed, but never silently
            ignored = "the data set's own split ignored" if given is not None else "groups ignored, near-copies may sit on both sides"
            split = Split(split.train, split.valid, split.description + f"; WARNING: {ignored}")
    _require_trainable(split, tile_set.labels.numpy())
    return split


def read_run_layout(config) -> TileIndex:
    """The TileIndex a run's config names (its data_dir and the parameters that steer how the
    layout is read); the one call that training, evaluation and the pipeline share."""
    return read_layout(config.data_dir, config.positive_class, class_map=config.class_map, group_level=config.group_level)
