"""The data part: from a folder of tile files to batches on the device. One module per job:

    layouts     detect and read a data set's layout (course, pcam, pcam-h5, csv, class folders) into a TileIndex
    decode      one file to RGB uint8 pixels as a viewer shows them, and the record of what decoding did
    cache       the memory-mapped tile cache: each tile decoded once, rows filled as runs ask for them
    tiles       a run's tile set: its subset, its tile and crop sizes, its tiles over the cache, its split
    splits      training and validation tiles: seeded, grouped, or the data set's own
    batches     batches cut from the cache and augmented on the device, or the original's file loader
    augment     per-image rotation, flips and crop on the device in one grid_sample
    stain       HED colour augmentation of batches on the device; Macenko and Reinhard stain normalisation at decode time
    synthetic   the embedded default data set, rendered from a seed (imported by name: lib.data.synthetic)

The names below are the data part's API; the rest of lib imports them from `lib.data`.
Nothing here imports models, training or the report.
"""

from lib.data.batches import EpochOrder, FileTileDataset, TileBatches, batch_plan, epoch_order, make_loader, original_augmentation, streamed
from lib.data.cache import PROCESS_DECODE_MIN, TileCache, decode_tiles
from lib.data.decode import (TILE_SIZE, BadImagesError, DecodeRecord, MultiPageError, decode_tile, open_tile, read_tile, source_signature,
                             square_tile)
from lib.data.layouts import LAYOUTS, H5Tile, LayoutError, TileIndex, TileSource, read_layout
from lib.data.splits import Split, given_split, grouped_split, seeded_split
from lib.data.stain import StainTarget, hed_augment, read_stain_reference, run_stain_target
from lib.data.tiles import (TileSet, choose_tile_size, crop_for, drawn_rows, load_tile_set, make_split, normalize_tile_set, read_run_layout,
                            resolve_sizes)

__all__ = [
    "BadImagesError", "DecodeRecord", "EpochOrder", "FileTileDataset", "H5Tile", "LAYOUTS", "LayoutError", "MultiPageError",
    "PROCESS_DECODE_MIN", "Split", "StainTarget", "TILE_SIZE", "TileBatches", "TileCache", "TileIndex", "TileSet", "TileSource",
    "batch_plan", "choose_tile_size", "crop_for", "decode_tile", "decode_tiles", "given_split", "grouped_split",
    "drawn_rows", "epoch_order", "hed_augment", "load_tile_set", "make_loader", "make_split", "normalize_tile_set", "open_tile", "original_augmentation",
    "read_layout", "read_run_layout", "read_stain_reference", "read_tile", "resolve_sizes", "run_stain_target", "seeded_split",
    "source_signature", "square_tile", "streamed",
]  # fmt: skip
