"""Tiles in: the decoded uint8 tile set and its memory-mapped cache on disk, the splits, and batches.

Reading a data set's layout is lib/layouts.py; this module turns a TileIndex into tensors. Every
tile a run uses is decoded once, converted to RGB, brought to one size (the data set's own when all
its tiles share one), checked (a corrupt file is found here, before any training) and kept in
data/cache/ as a row of one uint8 array per data set and size, filled as runs ask for rows: a run
with `subset` decodes only the tiles it drew. Training reads its batches from that memory-mapped
array, so memory grows with the data set by no more than the cache's own pages.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lib.augment import augment_batch
from lib.config import MULTI_PAGES, original_crop
from lib.layouts import LAYOUTS, H5Tile, LayoutError, TileIndex, TileSource, read_layout  # noqa: F401  (the data API)
from lib.paths import TILE_CACHE_DIR

TILE_SIZE = 256  # pixels: the original's tiles and the baseline's input; the size for data sets whose tiles differ
CACHE_VERSION = 3  # bump when decoding or the cache's files change, so that old caches are not reused (2: row-by-row cache; 3: EXIF orientation, >8-bit scaling, pages)
# EXIF/TIFF orientation (tag 274) -> what a viewer does to show the stored pixels upright; 1 is upright already.
ORIENTATIONS = {2: "mirrored", 3: "turned 180°", 4: "flipped upside down", 5: "transposed", 6: "turned 90° clockwise",
                7: "transversed", 8: "turned 90° counter-clockwise"}  # fmt: skip


class BadImagesError(ValueError):
    """Images that cannot be decoded; the message lists every one of them."""


class MultiPageError(ValueError):
    """A file holds several images and multi_page does not say which to read."""


@dataclass
class DecodeRecord:
    """What decoding did to the tiles, for the run's record and the report."""

    resized: dict[str, int] = field(default_factory=dict)  # original "WxH" (upright) -> count, when not TILE_SIZE
    converted: dict[str, int] = field(default_factory=dict)  # the file's mode ("I;16", "RGB;16", "CMYK", ...) -> count, when not 8-bit RGB
    oriented: dict[str, int] = field(default_factory=dict)  # EXIF orientation "2".."8" -> count of tiles turned upright by it
    rescaled: dict[str, int] = field(default_factory=dict)  # "mode range" -> count of tiles deeper than 8 bits scaled to 0..255 by that range
    pages: dict[str, int] = field(default_factory=dict)  # how a file holding several images was read -> count
    bad: list[list[str]] = field(default_factory=list)  # [file, why] for every file that failed
    skipped: int = 0  # bad files left out because skip_bad_images was asked for
    cache: str = ""  # the cache file, and whether it was read or written

    def notes(self, size: int) -> list[str]:
        notes = []
        if self.resized:
            notes.append(f"resized to {size}x{size}: " + ", ".join(f"{n} tiles of {s}" for s, n in sorted(self.resized.items())))
        if self.converted:
            notes.append("converted to RGB: " + ", ".join(f"{n} {mode} tiles" for mode, n in sorted(self.converted.items())))
        if self.oriented:
            notes.append("turned upright by their EXIF orientation, as a viewer shows them: "
                         + ", ".join(f"{n} tiles {ORIENTATIONS[int(o)]} ({o})" for o, n in sorted(self.oriented.items())))  # fmt: skip
        if self.rescaled:
            notes.append("scaled to 8 bits by the range their values use: "
                         + ", ".join(f"{n} {key.split(' ', 1)[0]} tiles from {key.split(' ', 1)[1]}" for key, n in sorted(self.rescaled.items())))  # fmt: skip
            modes = Counter(key.split(" ", 1)[0] for key in self.rescaled)
            if any(count > 1 for count in modes.values()):
                notes.append("WARNING: tiles of the same bit depth were scaled by different ranges (above), so their brightness "
                             "is not comparable; convert them to one range yourself if that matters")  # fmt: skip
        if self.pages:
            notes.append("files holding several images: " + ", ".join(f"{n} tiles read as {how}" for how, n in sorted(self.pages.items())))
        if self.skipped:
            notes.append(f"{self.skipped} unreadable file(s) skipped (skip_bad_images): " + ", ".join(f for f, _ in self.bad[:10]))
        return notes


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from an 8-bit image; transparent pixels become white (the glass of a slide), not the black
    convert() gives. Deeper images are scaled to 8 bits first (_to_8_bits): convert() would clip them."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8_bits(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """(H, W[, C]) pixels of any integer or float dtype as uint8, and the range mapped to 0..255.
    Unsigned integers: 0..2**b - 1 for b the smallest even bit depth (at least 8) that holds the
    largest value, so 16-bit data spans 0..65535 as a viewer shows it and 12-bit camera data stored
    in 16 bits is not left near black. Floats: 0..1 when they lie there, else the tile's own
    min..max, as are signed integers holding negative values."""
    if pixels.dtype == np.uint8:
        return pixels, ""
    if pixels.dtype == bool:
        return pixels.astype(np.uint8) * 255, "0..1 (1 bit)"
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if np.issubdtype(pixels.dtype, np.floating):
        low, high, used = (0.0, 1.0, "0..1") if 0 <= low and high <= 1 else (low, high, "each tile's own min..max")
    elif low < 0:
        used = "each tile's own min..max"
    else:
        bits = max(8, int(high).bit_length() + int(high).bit_length() % 2)
        low, high, used = 0.0, float(2**bits - 1), f"0..{2**bits - 1} ({bits} bits)"
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint(np.nan_to_num((values - low) * scale)), 0, 255).astype(np.uint8), used


def _image_from_deep(pixels: np.ndarray, mode: str, notes: dict[str, str]) -> Image.Image:
    """An 8-bit L/LA/RGB/RGBA image from (H, W[, C]) pixels deeper than 8 bits; the range goes into
    `notes`. An alpha channel is scaled by its own range, so a 16-bit alpha does not darken 12-bit colour."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.ndim not in (2, 3) or channels not in (1, 2, 3, 4):
        raise ValueError(f"holds {pixels.shape} pixels ({mode}); expected grey, grey+alpha, RGB or RGBA images")
    alpha = None
    if channels in (2, 4):
        pixels, alpha = pixels[:, :, :-1], _to_8_bits(pixels[:, :, -1])[0]
        pixels = pixels[:, :, 0] if channels == 2 else pixels
    scaled, used = _to_8_bits(pixels)
    if used:
        notes["rescaled"] = f"{mode} {used}"
    if alpha is not None:
        scaled = np.dstack([scaled, alpha])
    return Image.fromarray(scaled, {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels])


def _choose_page(n_pages: int, size_of, multi_page: str, kind: str) -> tuple[int, str]:
    """Which of a file's `n_pages` images to read, and how that is recorded; `size_of(k)` gives
    page k's (width, height). Raises MultiPageError for multi_page='refuse'."""
    if multi_page == "refuse":
        raise MultiPageError(f"holds {n_pages} images ({kind}); only one can be a tile. Set multi_page='first' (the first "
                             "image; a pyramid's full resolution) or 'largest' (the most pixels), or save the image you mean on its own")  # fmt: skip
    if multi_page == "first":
        return 0, f"page 1 of {n_pages} (multi_page='first')"
    sizes = [size_of(k) for k in range(n_pages)]
    largest = max(range(n_pages), key=lambda k: sizes[k][0] * sizes[k][1])  # the first of equals
    return largest, f"page {largest + 1} of {n_pages}, the largest (multi_page='largest')"


def _read_deep_tiff(f, multi_page: str, notes: dict[str, str]) -> tuple[Image.Image, str]:
    """A TIFF that Pillow cannot read faithfully (more than 8 bits per sample, or not at all),
    through tifffile: the chosen page as an 8-bit image (orientation still to apply, in notes),
    and the file's mode in Pillow's terms ("I;16", "RGB;16", "F", ...)."""
    import tifffile

    with tifffile.TiffFile(f) as tif:
        pages = tif.pages
        k = 0
        if len(pages) > 1:
            k, notes["pages"] = _choose_page(len(pages), lambda j: (pages[j].imagewidth, pages[j].imagelength), multi_page,
                                             "pages of a multi-page TIFF")  # fmt: skip
        page = pages[k]
        pixels = page.asarray()
        if page.axes.startswith("S"):  # planar configuration: one plane per sample
            pixels = np.moveaxis(pixels, 0, -1)
        photometric = int(page.photometric)
        if photometric not in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB; not palette, CMYK, YCbCr at these depths
            raise ValueError(f"a {page.bitspersample}-bit TIFF with photometric {page.photometric.name} is not read here; "
                             "save it as 8-bit RGB or 16-bit RGB or greyscale")  # fmt: skip
        if photometric == 0 and np.issubdtype(pixels.dtype, np.unsignedinteger):  # 0 is white: inverted, as a viewer shows it
            pixels = (2**page.bitspersample - 1) - pixels
        orientation = page.tags.get(274)
        if orientation is not None and int(orientation.value) in ORIENTATIONS:
            notes["orientation"] = str(int(orientation.value))
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    depth = f"{8 * pixels.itemsize}{'F' if np.issubdtype(pixels.dtype, np.floating) else ''}"
    mode = {1: "F" if depth == "32F" else f"I;{depth}", 2: f"LA;{depth}", 3: f"RGB;{depth}", 4: f"RGBA;{depth}"}.get(channels, f"{channels}-channel;{depth}")
    return _image_from_deep(pixels, mode, notes), mode


def _is_tiff(f) -> bool:
    f.seek(0)
    return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF


def read_tile(source: TileSource, multi_page: str = "refuse") -> tuple[Image.Image, str, dict[str, str]]:
    """The image a viewer shows for one file, before resizing: upright by its EXIF orientation,
    scaled to 8 bits by its range when deeper (_to_8_bits; a 16-bit RGB TIFF, of which Pillow keeps
    8 bits, or a TIFF Pillow cannot open, through tifffile), one image chosen by `multi_page` when
    the file holds several. Returns the image
    (an 8-bit PIL mode: L, LA, RGB, RGBA, P, CMYK, ...), the file's mode ("RGB", "I;16", "RGB;16",
    ...) and what was done, as {DecodeRecord field: key}. Raises MultiPageError for a file of
    several images under multi_page='refuse', and Pillow's or tifffile's errors for a bad file."""
    notes: dict[str, str] = {}
    with source.open("rb") as f:
        try:
            opened = Image.open(f)
        except UnidentifiedImageError:
            if not _is_tiff(f):
                raise
            f.seek(0)
            image, mode = _read_deep_tiff(f, multi_page, notes)
            return _apply_orientation(image, notes), mode, notes
        with opened as image:
            n_pages = getattr(image, "n_frames", 1)
            if image.format == "MPO":  # a camera JPEG with a preview or depth map after the photo: the photo is the image
                notes["pages"] = f"the main image of an MPO JPEG ({n_pages} images)"
            elif n_pages > 1:
                kind = "pages of a multi-page TIFF" if image.format == "TIFF" else f"frames of a {image.format} file"
                k, notes["pages"] = _choose_page(n_pages, lambda j: (image.seek(j), image.size)[1], multi_page, kind)
                image.seek(k)
            bits = image.tag_v2.get(258, (8,)) if image.format == "TIFF" else (8,)
            bits = max(bits if isinstance(bits, tuple) else (bits,))
            # Pillow holds the values of grey 16-bit, 32-bit integer and float images (whatever the
            # TIFF compression, through libtiff); of 16-bit RGB TIFF it would keep 8 bits: tifffile reads those.
            deep_mode = image.mode.startswith("I") or image.mode == "F"
            if bits > 8 and not deep_mode:
                f.seek(0)
                image, mode = _read_deep_tiff(f, multi_page, notes)
                return _apply_orientation(image, notes), mode, notes
            white_is_zero = image.format == "TIFF" and image.tag_v2.get(262) == 0  # Pillow inverts such 8-bit TIFF, not deeper ones
            # Pillow reads a 16-bit RGB PNG as 8-bit RGB (the high byte of each value): 0..65535, recorded.
            high_byte = image.format == "PNG" and bool(image.tile) and ";16" in str(image.tile[0].args) and image.mode in ("RGB", "RGBA")
            orientation = image.getexif().get(274, 1)  # read before load(): Pillow's TIFF loader turns the image and drops the tag
            if orientation in ORIENTATIONS:
                notes["oriented"] = str(orientation)
            image.load()  # decode now: a truncated file fails here, not halfway through an epoch
            still_turned = image.getexif().get(274, 1) in ORIENTATIONS
            image = ImageOps.exif_transpose(image) if still_turned else image.copy()  # upright, and outlives the file
    mode = image.mode
    if deep_mode:  # 16- and 32-bit integers, floats: convert() would clip them
        pixels = np.asarray(image)
        if white_is_zero and np.issubdtype(pixels.dtype, np.integer):
            pixels = (2**bits - 1) - pixels.astype(np.int64)
        image = _image_from_deep(pixels, mode, notes)
    elif high_byte:
        mode = f"{mode};16"
        notes["rescaled"] = f"{mode} 0..65535 (16 bits; Pillow keeps the high byte)"
    return image, mode, notes


def _apply_orientation(image: Image.Image, notes: dict[str, str]) -> Image.Image:
    """A tifffile-read image turned as its TIFF orientation says, by Pillow's own exif_transpose."""
    orientation = notes.pop("orientation", None)
    if orientation is None:
        return image
    image.getexif()[274] = int(orientation)
    notes["oriented"] = orientation
    return ImageOps.exif_transpose(image)


def open_tile(source: TileSource, size: int = TILE_SIZE, multi_page: str = "refuse") -> tuple[Image.Image, str, str]:
    """One tile as an RGB PIL image of size x size, with the file's mode and its upright "WxH" (for the record)."""
    image, mode, shape, _ = _open_tile(source, size, multi_page)
    return image, mode, shape


def _open_tile(source: TileSource, size: int, multi_page: str) -> tuple[Image.Image, str, str, dict[str, str]]:
    image, mode, notes = read_tile(source, multi_page)
    shape = f"{image.width}x{image.height}"
    if image.mode != "RGB":
        image = _to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return image, mode, shape, notes


def decode_tile(source: TileSource, size: int = TILE_SIZE, multi_page: str = "refuse") -> tuple[np.ndarray, str, str, dict[str, str]]:
    """One tile as (size, size, 3) uint8 as a viewer shows it, with the file's mode, its upright
    "WxH" and what reading it did ({DecodeRecord field: key}: oriented, rescaled, pages), for the record."""
    image, mode, shape, notes = _open_tile(source, size, multi_page)
    return np.asarray(image, dtype=np.uint8), mode, shape, notes


def check_multi_page(multi_page: str) -> None:
    """Raises ValueError, before any file is read, for a multi_page other than those of MULTI_PAGES."""
    if multi_page not in MULTI_PAGES:
        raise ValueError(f"multi_page={multi_page!r} is not one of {', '.join(MULTI_PAGES)}")


def source_signature(source: TileSource) -> list:
    """What identifies a file's content cheaply: size and modification time (or a zip member's CRC)."""
    if isinstance(source, zipfile.Path):
        info = source.root.getinfo(source.at)
        return [str(source), info.file_size, info.CRC]
    stat = os.stat(source.file if isinstance(source, H5Tile) else source)
    return [str(source), stat.st_size, stat.st_mtime_ns]



# A tile's row in the cache: not decoded yet, decoded, or unreadable (its reason kept in the cache's meta).
NOT_DECODED, DECODED, UNREADABLE = 0, 1, 2
# Below this many tiles to decode, threads (no start-up cost); above it, one process per core: PIL's
# TIFF and PNG readers parse headers in Python, under the GIL, so threads gain little on small files
# (96x96 TIFFs on 2 cores: 2,800 tiles/s with threads, 11,800 with processes).
PROCESS_DECODE_MIN = 2048
_CHUNK = 256  # tiles per task handed to a worker process


def _content_key(sources: list[TileSource], multi_page: str = "refuse") -> str:
    """Identifies the data set's files and their content (sizes and times) and how files of several
    images are read, whatever the tile size."""
    digest = hashlib.sha256(repr((CACHE_VERSION, multi_page)).encode())
    h5_stats: dict[Path, os.stat_result] = {}
    for source in sources:
        if isinstance(source, H5Tile):  # one stat per HDF5 file, not one per row
            stat = h5_stats.get(source.file) or h5_stats.setdefault(source.file, os.stat(source.file))
            signature = [str(source), stat.st_size, stat.st_mtime_ns]
        else:
            signature = source_signature(source)
        digest.update(repr(signature).encode())
    return digest.hexdigest()[:24]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Whole or absent: written to a temporary name, then renamed."""
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


# Set in each decoding process: the cache file it writes rows into, and where its rows begin (None when only checking).
_worker_file: tuple[int, int] | None = None


def _start_worker(data_file: str | None) -> None:
    global _worker_file
    if data_file:
        # Rows are written with pwrite, not through a writable mapping: on a sparse file every
        # first touch of a mapped page faults and allocates (measured: 30 % of the decode time).
        _worker_file = (os.open(data_file, os.O_WRONLY), np.load(data_file, mmap_mode="r").offset)


def _decode_chunk(chunk: list[tuple[int, str]], size: int, multi_page: str = "refuse") -> list[tuple[int, str, str, str, dict]]:
    """In a worker process: decode files into the shared cache; (row, error, mode, "WxH", notes) for each."""
    done = []
    for row, path in chunk:
        try:
            tile, mode, shape, notes = decode_tile(Path(path), size, multi_page)
        except Exception as error:  # PIL raises several types; every one means "not a usable image"
            done.append((row, f"{type(error).__name__}: {error}", "", "", {}))
            continue
        if _worker_file is not None:
            fd, offset = _worker_file
            row_bytes = np.ascontiguousarray(tile.transpose(2, 0, 1))
            os.pwrite(fd, row_bytes, offset + row * row_bytes.nbytes)
        done.append((row, "", mode, shape, notes))
    return done


def _header_chunk(chunk: list[tuple[int, str]]) -> list[tuple[int, int, int, str]]:
    """In a worker process: (row, width, height, mode) from each file's header (PIL opens lazily);
    (row, -2, -2, "") when unreadable, left for decoding to report."""
    return [_header(row, Path(path)) for row, path in chunk]


def _header(row: int, source: TileSource) -> tuple[int, int, int, str]:
    try:
        with source.open("rb") as f, Image.open(f) as image:
            return row, image.width, image.height, image.mode
    except Exception:  # a broken file: decoding finds it again and lists it with its reason
        return row, -2, -2, ""


class TileCache:
    """A data set's decoded tiles: for each size, one (N, 3, size, size) uint8 array whose row i is
    sources[i], memory-mapped from `cache_dir/<key>-<size>.npy` (in memory without a cache_dir), and
    filled row by row as runs ask for them, so a subset decodes only its own tiles; the file is
    sparse until then. Per row it also keeps the state (NOT_DECODED, DECODED, UNREADABLE) and the
    header (width, height, mode code; -1 not looked at yet). <key> covers every file's size and time:
    a changed file gives a new cache, and the old one is removed."""

    def __init__(self, sources: list[TileSource], cache_dir: str | Path | None, keep_tiles: bool = True, multi_page: str = "refuse"):
        if not sources:
            raise ValueError("no tiles to decode")
        check_multi_page(multi_page)
        self.sources, self.keep_tiles, self.multi_page = sources, keep_tiles, multi_page
        self.cache_dir = Path(cache_dir) if cache_dir and keep_tiles else None
        self.size, self.array, self.state, self.decoded_now = 0, None, None, 0
        # "notes": per decoded row, what decoding did beyond resizing (EXIF orientation, bit depth, pages).
        self.meta = {"first": str(sources[0]), "n": len(sources), "modes": [], "bad": {}, "notes": {}}
        self.headers = np.full((len(sources), 3), -1, dtype=np.int32)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self.key = _content_key(sources, multi_page)
            meta_file, headers_file = self._file(".json"), self._file(".headers.npy")
            if meta_file.is_file() and headers_file.is_file():
                self.meta, self.headers = json.loads(meta_file.read_text()), np.load(headers_file)
            else:
                _forget_older_caches(self.cache_dir, self.meta["first"])
                self._save_meta()

    def _file(self, suffix: str, size: int = 0) -> Path:
        return self.cache_dir / f"{self.key}{f'-{size}' if size else ''}{suffix}"

    def _save_meta(self) -> None:
        if self.cache_dir is not None:
            _save_npy(self._file(".headers.npy"), self.headers)
            tmp = self._file(".json.tmp")
            tmp.write_text(json.dumps(self.meta))
            os.replace(tmp, self._file(".json"))

    def _mode_code(self, mode: str) -> int:
        if mode not in self.meta["modes"]:
            self.meta["modes"].append(mode)
        return self.meta["modes"].index(mode)

    def scan_headers(self, rows: np.ndarray) -> None:
        """Width, height and mode of each of `rows` not looked at yet, from the file headers only."""
        todo = rows[self.headers[rows, 0] == -1]
        if not len(todo):
            return
        is_h5 = np.array([isinstance(self.sources[row], H5Tile) for row in todo], dtype=bool)
        shapes = {}  # an HDF5 array's tiles share its shape: one look per file
        for row in todo[is_h5]:
            source = self.sources[row]
            if source.file not in shapes:
                shapes[source.file] = source.h5_dataset().shape
            _, height, width, _ = shapes[source.file]
            self.headers[row] = (width, height, self._mode_code("RGB"))
        results = self._run(todo[~is_h5], None, "reading tile headers")
        for row, width, height, mode in results:
            self.headers[row] = (width, height, self._mode_code(mode) if mode else -2)
        self._save_meta()

    def native_size(self, rows: np.ndarray) -> tuple[int | None, str]:
        """The side of the `rows`' tiles when all are square and alike (None otherwise), and their sizes in words."""
        self.scan_headers(rows)
        readable = self.headers[rows][self.headers[rows, 0] > 0]
        if not len(readable):
            return None, "unreadable"
        shapes, counts = np.unique(readable[:, :2], axis=0, return_counts=True)
        words = ", ".join(f"{n} of {w}x{h}" for (w, h), n in sorted(zip(map(tuple, shapes), counts), key=lambda x: -x[1])[:5])
        if len(shapes) == 1 and shapes[0, 0] == shapes[0, 1]:
            return int(shapes[0, 0]), f"{shapes[0, 0]}x{shapes[0, 1]}"
        return None, words + (", ..." if len(shapes) > 5 else "")

    def open_size(self, size: int) -> None:
        """The array and row states for tiles of `size` pixels; a new cache file starts sparse."""
        self.size, n = size, len(self.sources)
        if self.cache_dir is None:
            # np.zeros takes pages from the system as rows are written: untouched rows cost no memory.
            self.array = np.zeros((n, 3, size, size), dtype=np.uint8) if self.keep_tiles else None
            self.state = np.zeros(n, dtype=np.uint8)
        else:
            data_file, state_file = self._file(".npy", size), self._file(".state.npy", size)
            if not (data_file.is_file() and state_file.is_file()):
                tmp = data_file.with_name(data_file.name + ".tmp.npy")
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size)).flush()  # sparse: no row written yet
                os.replace(tmp, data_file)
                _save_npy(state_file, np.zeros(n, dtype=np.uint8))
            self.array, self.state = np.load(data_file, mmap_mode="r+"), np.load(state_file)
        for row in self.meta["bad"]:  # unreadable at one size is unreadable at every size
            self.state[int(row)] = UNREADABLE

    def decode(self, rows: np.ndarray, desc: str) -> None:
        """Decode those of `rows` not decoded yet (PIL, in parallel; HDF5 rows in blocks)."""
        todo = rows[self.state[rows] == NOT_DECODED]
        self.decoded_now = len(todo)
        if not len(todo):
            return
        if self.cache_dir is not None:
            need, free = len(todo) * self.row_bytes, shutil.disk_usage(self.cache_dir).free
            if need > free - 2**30:  # a full disk would fail halfway, after minutes of decoding
                raise ValueError(f"decoding {len(todo)} tiles of {self.size}x{self.size} needs {need / 2**30:.1f} GiB in "
                                 f"{self.cache_dir}, which has {free / 2**30:.1f} GiB free: set cache_dir to a larger disk, "
                                 "or draw fewer tiles (subset) or smaller ones (tile_size)")  # fmt: skip
        h5_rows = todo[np.array([isinstance(self.sources[row], H5Tile) for row in todo], dtype=bool)]
        if len(h5_rows):
            self._read_h5(h5_rows)
        file_rows = np.setdiff1d(todo, h5_rows) if len(h5_rows) else todo
        for row, error, mode, shape, notes in self._run(file_rows, self.size, desc):
            if error:
                self.state[row] = UNREADABLE
                self.meta["bad"][str(row)] = error
            else:
                self.state[row] = DECODED
                width, height = map(int, shape.split("x"))
                self.headers[row] = (width, height, self._mode_code(mode))
                if notes:
                    self.meta.setdefault("notes", {})[str(row)] = notes
        if self.array is not None and hasattr(self.array, "flush"):
            self.array.flush()
        if self.cache_dir is not None:  # the states last: a row counts as decoded once its pixels are on disk
            _save_npy(self._file(".state.npy", self.size), self.state)
        self._save_meta()

    def _run(self, rows: np.ndarray, size: int | None, desc: str) -> list:
        """Decode (size given) or read the headers of (size None) `rows`; a list of per-row results."""
        from tqdm import tqdm

        if not len(rows):
            return []
        to_files = all(isinstance(self.sources[row], Path) for row in rows[:64])  # zip members and HDF5 rows stay in this process
        bar = tqdm(total=len(rows), desc=desc, unit="tile", leave=False)
        results = []
        if to_files and len(rows) >= PROCESS_DECODE_MIN and (os.cpu_count() or 1) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            data_file = str(self._file(".npy", self.size)) if size and self.cache_dir is not None else None
            if size and self.array is not None and data_file is None:  # in memory: processes cannot write into it
                results = self._run_threads(rows, size, bar)
            else:
                chunks = [[(int(row), str(self.sources[row])) for row in rows[i : i + _CHUNK]] for i in range(0, len(rows), _CHUNK)]
                # fork, as DataLoader's workers: the workers start at once and only run PIL and numpy.
                with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("fork"),
                                         initializer=_start_worker, initargs=(data_file,)) as pool:  # fmt: skip
                    futures = [pool.submit(_decode_chunk, chunk, size, self.multi_page) if size else pool.submit(_header_chunk, chunk)
                               for chunk in chunks]  # fmt: skip
                    for future in as_completed(futures):
                        done = future.result()
                        results += done
                        bar.update(len(done))
        elif size:
            results = self._run_threads(rows, size, bar)
        else:
            for row in rows:
                results.append(_header(int(row), self.sources[row]))
                bar.update()
        bar.close()
        return results

    def _run_threads(self, rows: np.ndarray, size: int, bar) -> list:
        def work(row: int):
            try:
                tile, mode, shape, notes = decode_tile(self.sources[row], size, self.multi_page)
            except Exception as error:  # PIL raises several types; every one means "not a usable image"
                return row, f"{type(error).__name__}: {error}", "", "", {}
            if self.array is not None:
                self.array[row] = tile.transpose(2, 0, 1)
            return row, "", mode, shape, notes

        results = []
        # PIL releases the GIL while decoding JPEG, so threads use every core without copying tiles between processes.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for result in pool.map(work, rows.tolist()):
                results.append(result)
                bar.update()
        return results

    def _read_h5(self, rows: np.ndarray) -> None:
        """HDF5 rows need no decoding: read in blocks of neighbouring rows, moved to channels-first."""
        from tqdm import tqdm

        by_dataset: dict[tuple, list[int]] = {}
        for row in rows:
            source = self.sources[row]
            by_dataset.setdefault((source.file, source.dataset), []).append(int(row))
        bar = tqdm(total=len(rows), desc="reading HDF5 tiles", unit="tile", leave=False)
        for rows_here in by_dataset.values():
            rows_here = np.array(sorted(rows_here, key=lambda r: self.sources[r].row))
            h5_rows = np.array([self.sources[r].row for r in rows_here])
            dataset = self.sources[rows_here[0]].h5_dataset()
            for start in range(0, len(rows_here), 1024):
                cache_rows, wanted = rows_here[start : start + 1024], h5_rows[start : start + 1024]
                first, last = int(wanted[0]), int(wanted[-1]) + 1
                # A block read is one contiguous copy; scattered rows (a small subset) are picked one by one.
                block = dataset[first:last][wanted - first] if last - first <= 4 * len(wanted) else dataset[wanted]
                height, width = block.shape[1:3]
                if (height, width) != (self.size, self.size):
                    block = np.stack([np.asarray(Image.fromarray(tile).resize((self.size, self.size), Image.Resampling.BILINEAR,
                                                                              reducing_gap=None)) for tile in block])  # fmt: skip
                if self.array is not None:
                    self.array[cache_rows] = block.transpose(0, 3, 1, 2)
                self.state[cache_rows] = DECODED
                self.headers[cache_rows] = (width, height, self._mode_code("RGB"))
                bar.update(len(cache_rows))
        bar.close()

    @property
    def row_bytes(self) -> int:
        return 3 * self.size * self.size

    def tiles(self) -> torch.Tensor:
        """(N, 3, size, size) uint8 over the cache file's pages, not a copy: only the rows a run
        touches come into memory, and the system can drop them again. A private mapping, so that
        nothing written to the tensor reaches the cache."""
        if self.cache_dir is None:
            return torch.from_numpy(self.array)
        self.array.flush()
        return torch.from_numpy(np.load(self._file(".npy", self.size), mmap_mode="c"))

    def record(self, rows: np.ndarray) -> DecodeRecord:
        """What decoding did to `rows`: sizes resized, modes converted, files unreadable, where the cache is."""
        ok = rows[self.state[rows] == DECODED]
        width, height, mode = self.headers[ok].T
        other_size = (width != self.size) | (height != self.size)
        resized = Counter(f"{w}x{h}" for w, h in zip(width[other_size].tolist(), height[other_size].tolist()))
        converted = Counter(self.meta["modes"][m] for m in mode.tolist() if m >= 0 and self.meta["modes"][m] != "RGB")
        bad = [[str(self.sources[row]), self.meta["bad"].get(str(row), "unreadable")] for row in rows[self.state[rows] == UNREADABLE]]
        counted = {"oriented": Counter(), "rescaled": Counter(), "pages": Counter()}
        row_notes = self.meta.get("notes", {})
        for row in ok.tolist():
            for name, key in row_notes.get(str(row), {}).items():
                counted[name][key] += 1
        return DecodeRecord(resized=dict(resized), converted=dict(converted), oriented=dict(counted["oriented"]),
                            rescaled=dict(counted["rescaled"]), pages=dict(counted["pages"]), bad=bad, cache=self.describe(len(rows)))  # fmt: skip

    def describe(self, n_rows: int) -> str:
        if self.cache_dir is None:
            return ""
        data_file = self._file(".npy", self.size)
        on_disk = os.stat(data_file).st_blocks * 512  # the sparse file's real size
        done = (f"wrote {data_file}: {self.decoded_now} of the run's {n_rows} tiles decoded into it now" if self.decoded_now
                else f"read {data_file}: all {n_rows} of the run's tiles decoded before")
        return (f"{done}; {on_disk / 2**30:.2f} GiB on disk ({int((self.state == DECODED).sum())} of {len(self.state)} tiles of "
                f"{self.size}x{self.size}); cache_dir moves it")  # fmt: skip


def _forget_older_caches(cache_dir: Path, first: str) -> None:
    """A data set that changed leaves its old cache behind: drop every cache of the same set (by its first file)."""
    for meta_file in cache_dir.glob("*.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("first") == first:
            key = meta_file.stem
            for old in cache_dir.glob(f"{key}*"):
                old.unlink(missing_ok=True)


def decode_tiles(sources: list[TileSource], size: int = TILE_SIZE, desc: str = "decoding tiles",
                 skip_bad_images: bool = False, cache_dir: str | Path | None = TILE_CACHE_DIR,
                 multi_page: str = "refuse") -> tuple[torch.Tensor, np.ndarray, DecodeRecord]:
    """Every source decoded to one (N_ok, 3, size, size) uint8 tensor, the (N,) bool mask of the
    sources kept, and what decoding did. Bad files are all found first and listed in one
    BadImagesError, unless `skip_bad_images`, which leaves them out and records how many. With
    `cache_dir`, the tensor lies over the memory-mapped cache (no copy, unless files were skipped:
    then the kept rows are gathered), reused while no file changes."""  # fmt: skip
    cache = TileCache(sources, cache_dir, multi_page=multi_page)
    rows = np.arange(len(sources))
    cache.open_size(size)
    cache.decode(rows, desc)
    record = cache.record(rows)
    _raise_unless_skipped(record, skip_bad_images)
    ok = cache.state == DECODED
    tiles = cache.tiles()
    return (tiles if ok.all() else tiles[torch.from_numpy(np.flatnonzero(ok))]), ok, record


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


def _raise_unless_skipped(record: DecodeRecord, skip_bad_images: bool) -> None:
    if record.bad and not skip_bad_images:
        listed = "\n".join(f"  {path}: {why}" for path, why in record.bad)
        raise BadImagesError(f"{len(record.bad)} file(s) could not be read as images (nothing has been trained yet):\n{listed}\n"
                             "Replace or remove them, or set skip_bad_images=True to leave them out (the run records how many).")  # fmt: skip
    record.skipped = len(record.bad)


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


@dataclass(frozen=True)
class Split:
    """Positions into a TileSet (index positions, int64), and how they were chosen (for the report)."""

    train: np.ndarray
    valid: np.ndarray
    description: str = ""

    def batch_notes(self, batch_size: int) -> list[str]:
        """What the run should say when a side holds less than one batch (it is then one smaller batch)."""
        return [f"the {what} split holds {len(rows)} tiles, fewer than batch_size={batch_size}: one batch of {len(rows)} per epoch"
                for rows, what in ((self.train, "training"), (self.valid, "validation")) if len(rows) < batch_size]  # fmt: skip


def seeded_split(n_tiles: int, valid_fraction: float, seed: int, subset: int = 0, kept: np.ndarray | None = None) -> Split:
    """The original's split: a seeded permutation, its first floor((1 - f) * n) train, the rest
    validate. With `subset`, that many tiles are drawn first (seeded) and split the same way (all of
    them when there are no more); `kept` (bool per tile) leaves out the drawn tiles that could not be read."""
    order = _seeded_order(n_tiles, seed, subset)
    if kept is not None:
        order = order[kept[order]]
    n_train = math.floor((1 - valid_fraction) * len(order))
    return Split(train=order[:n_train], valid=order[n_train:],
                 description=f"random (the original's): seeded permutation (seed {seed}), first floor({1 - valid_fraction:g}*n) train")  # fmt: skip


def _seeded_order(n_tiles: int, seed: int, subset: int) -> np.ndarray:
    """A seeded permutation of the tiles' positions, cut to its first `subset` when that is fewer."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_tiles, generator=generator).numpy()
    return order[:subset] if subset else order


def grouped_split(groups: np.ndarray, valid_fraction: float, seed: int, subset: int = 0, kept: np.ndarray | None = None) -> Split:
    """A leak-free split: whole groups (slide, patient, source tile) go to validation, in a seeded
    order, until it holds at least valid_fraction of the tiles; no group is on both sides."""
    chosen = np.sort(_seeded_order(len(groups), seed, subset))
    if kept is not None:
        chosen = chosen[kept[chosen]]
    names = np.unique(groups[chosen])
    if len(names) < 2:
        raise ValueError(f"a grouped split needs at least two groups; the tiles hold {len(names)}")
    generator = torch.Generator().manual_seed(seed)
    group_order = names[torch.randperm(len(names), generator=generator).numpy()]
    sizes = Counter(groups[chosen])
    target, valid_groups, taken = valid_fraction * len(chosen), set(), 0
    for name in group_order:
        if taken >= target or len(valid_groups) == len(names) - 1:
            break
        valid_groups.add(name)
        taken += sizes[name]
    in_valid = np.isin(groups[chosen], list(valid_groups))
    return Split(train=chosen[~in_valid], valid=chosen[in_valid],
                 description=f"grouped (leak-free): {len(names) - len(valid_groups)} groups train, {len(valid_groups)} "
                             f"validate, none on both sides (seed {seed})")  # fmt: skip


def given_split(given_valid: np.ndarray, seed: int, subset: int = 0, kept: np.ndarray | None = None) -> Split:
    """The data set's own split (PatchCamelyon's train and valid files), as given; a subset draws
    its tiles from both (seeded) and each keeps its side."""
    chosen = np.sort(_seeded_order(len(given_valid), seed, subset))
    if kept is not None:
        chosen = chosen[kept[chosen]]
    in_valid = given_valid[chosen]
    return Split(train=chosen[~in_valid], valid=chosen[in_valid], description="given: the data set's own train and validation tiles")


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


def _require_trainable(split: Split, labels: np.ndarray) -> None:
    """Training needs two tiles of each class to learn anything, validation one of each to measure it."""
    counts = {what: np.bincount(labels[rows], minlength=2) for what, rows in (("training", split.train), ("validation", split.valid))}
    if min(counts["training"]) < 2 or min(counts["validation"]) < 1:
        said = "; ".join(f"{what} {c.sum()} (class 0: {c[0]}, class 1: {c[1]})" for what, c in counts.items())
        raise ValueError(f"too few tiles to train: {said}. A run needs at least two tiles of each class to train on and one "
                         "of each to validate on: use more tiles (a larger subset, or 0 for all), or another valid_fraction")  # fmt: skip


def original_augmentation(crop_size: int) -> v2.Compose:
    """The original's training transforms, on one uint8 tile at a time (each tile its own draw)."""
    return v2.Compose([
        v2.RandomRotation(45),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomCrop(crop_size),
    ])  # fmt: skip


class FileTileDataset(Dataset):
    """The original's input path: each item opened and decoded from its file every epoch, its
    transforms run on the PIL image, one image at a time, then ToTensor. For comparison, and for
    data sets too large to keep decoded."""

    def __init__(self, sources: list[TileSource], labels: torch.Tensor, size: int, transform=None, multi_page: str = "refuse"):
        check_multi_page(multi_page)
        self.multi_page = multi_page
        self.sources, self.labels, self.size, self.transform = sources, labels, size, transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        image, _, _ = open_tile(self.sources[i], self.size, self.multi_page)
        if self.transform is not None:
            image = self.transform(image)
        tile = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return tile.float().div_(255), self.labels[i]  # ToTensor


def batch_plan(n_tiles: int, batch_size: int, what: str) -> int:
    """The batch size a side of the split really uses: `batch_size`, with the last partial batch
    dropped as the original did, when at least one full batch exists; else all its tiles in one
    smaller batch (said in the run's notes, Split.batch_notes). Raises ValueError for no tiles at all."""
    if n_tiles < 1:
        raise ValueError(f"the {what} set has no tiles; use more tiles (subset) or another valid_fraction")
    return min(batch_size, n_tiles)


class TileBatches:
    """The fast input path: batches cut from decoded uint8 tiles with one index operation, moved to
    the device as uint8 (a quarter of float's bytes), augmented there per image (lib/augment.py).
    `tiles` is the whole (N, 3, H, W) tile set (over the memory-mapped cache) and `rows` the
    positions this loader uses, so a split costs no copy. Tiles go to the GPU when they fit;
    otherwise they stay where they are and each batch, once gathered, is pinned and streamed in.
    Like the original's loader: reshuffled each epoch (seeded), the last partial batch dropped
    (unless the rows hold less than one batch: then they are one smaller batch, see batch_plan)."""

    def __init__(self, tiles: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                 device: torch.device, crop_size: int | None, what: str, rows: np.ndarray | torch.Tensor | None = None):  # fmt: skip
        rows = torch.arange(len(tiles)) if rows is None else torch.as_tensor(rows, dtype=torch.int64)
        self.batch_size = batch_plan(len(rows), batch_size, what)
        self.shuffle, self.device, self.crop_size = shuffle, device, crop_size
        self.generator = torch.Generator().manual_seed(seed)  # the order's stream; saved and restored on resume
        self.labels = labels[rows].to(device)
        self.tiles, self.rows, self.placement = _place(tiles, rows, device)

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self):
        n = len(self)
        order = torch.randperm(len(self.labels), generator=self.generator) if self.shuffle else torch.arange(len(self.labels))
        order = order[: n * self.batch_size].view(n, self.batch_size)
        # The epoch's order goes to the device in one copy: a copy per batch from ordinary host
        # memory would make the host wait for the GPU's queue to drain, every batch.
        order_on_device = order.to(self.device)
        picked = self.rows[order_on_device if self.rows.device == order_on_device.device else order]
        for batch in range(n):
            tiles = self.tiles[picked[batch]]
            if streamed(tiles.device, self.device):
                # Streamed from host memory: the gathered batch is pinned so its copy runs beside
                # the GPU's work instead of waiting for it.
                tiles = tiles.pin_memory().to(self.device, non_blocking=True)
            if self.crop_size is not None:
                images = augment_batch(tiles, self.crop_size)
            else:
                images = tiles.float().div_(255)
            yield images, self.labels[order_on_device[batch]]


def streamed(tiles_device: torch.device, device: torch.device) -> bool:
    """Whether batches gathered on `tiles_device` must be copied to `device` (host tiles, GPU training).
    Compared by type, not with `!=`: torch.device("cuda") and a tensor's torch.device("cuda:0") are
    unequal, and that once sent tiles already on the GPU to pin_memory(), which refuses them."""
    return tiles_device.type == "cpu" and device.type != "cpu"


def _place(tiles: torch.Tensor, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Where the loader reads: (tiles, rows into them, in words). On a GPU with room to spare (half
    its free memory) the rows' tiles are copied there, in blocks so that no host copy of them all is
    made; otherwise they stay in host memory (each gathered batch is pinned on its way, see
    __iter__; pinning the whole set would not help, as gathering rows copies them into ordinary
    memory). On the CPU they stay where they are: over the memory-mapped cache, read as batches need them."""
    tile_bytes = tiles[0].numel()
    gib = len(rows) * tile_bytes / 2**30
    if device.type != "cuda":
        return tiles, rows, f"host memory ({gib:.2f} GiB of uint8 tiles, read from the cache as batches need them)"
    free, _ = torch.cuda.mem_get_info(device)
    if len(rows) * tile_bytes < free // 2:
        on_device = torch.empty((len(rows), *tiles.shape[1:]), dtype=torch.uint8, device=device)
        for start in range(0, len(rows), 4096):
            on_device[start : start + 4096] = tiles[rows[start : start + 4096]].to(device)
        return on_device, torch.arange(len(rows), device=device), f"GPU memory ({gib:.2f} GiB of uint8 tiles)"
    return tiles, rows, f"host memory, streamed per batch through pinned copies ({gib:.2f} GiB would not fit beside the model)"


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, what: str, workers: int = 0) -> DataLoader:
    """A loader with the original's drop_last; less than one full batch is one smaller batch (batch_plan)."""
    batch_size = batch_plan(len(dataset), batch_size, what)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=True, generator=generator, num_workers=workers)


def read_run_layout(config) -> TileIndex:
    """The TileIndex a run's config names (its data_dir and the parameters that steer how the
    layout is read); the one call that training, evaluation and the pipeline share."""
    return read_layout(config.data_dir, config.positive_class, class_map=config.class_map, group_level=config.group_level)
