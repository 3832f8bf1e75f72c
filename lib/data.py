"""Tiles in: the decoded uint8 tile set and its cache on disk, the splits, and batches.

Reading a data set's layout is lib/layouts.py; this module turns a TileIndex into tensors. Every
tile is decoded once, converted to RGB, brought to TILE_SIZE, checked (a corrupt file is found here,
before any training) and kept in data/cache/ as one uint8 array, so later runs skip decoding.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
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
from lib.layouts import LAYOUTS, LayoutError, TileIndex, TileSource, read_layout  # noqa: F401  (the data API)
from lib.paths import TILE_CACHE_DIR

TILE_SIZE = 256  # pixels: the original's tiles, and the input both networks are built around
CACHE_VERSION = 2  # bump when decoding changes, so that old caches are not reused (2: EXIF orientation, >8-bit scaling, pages)
MULTI_PAGE = ("refuse", "first", "largest")  # what to do with a file holding several images (multi-page TIFF, animated GIF)
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
    """Raises ValueError, before any file is read, for a multi_page other than those of MULTI_PAGE."""
    if multi_page not in MULTI_PAGE:
        raise ValueError(f"multi_page={multi_page!r} is not one of {', '.join(MULTI_PAGE)}")


def source_signature(source: TileSource) -> list:
    """What identifies a file's content cheaply: size and modification time (or a zip member's CRC)."""
    if isinstance(source, zipfile.Path):
        info = source.root.getinfo(source.at)
        return [str(source), info.file_size, info.CRC]
    stat = os.stat(source)
    return [str(source), stat.st_size, stat.st_mtime_ns]


def _cache_key(sources: list[TileSource], size: int, multi_page: str = "refuse") -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, size, multi_page]).encode())
    for source in sources:
        digest.update(json.dumps(source_signature(source)).encode())
    return digest.hexdigest()[:24]


def _decode_into(array: np.ndarray | None, sources: list[TileSource], size: int, desc: str, record: DecodeRecord,
                 multi_page: str = "refuse") -> np.ndarray:  # fmt: skip
    """Decode every source into `array` (N, 3, size, size), or only check it when `array` is None;
    returns the mask of the ones that worked."""
    from tqdm import tqdm

    check_multi_page(multi_page)

    def work(i: int):
        try:
            tile, mode, shape, notes = decode_tile(sources[i], size, multi_page)
        except Exception as error:  # PIL raises several types; every one means "not a usable image"
            return i, None, f"{type(error).__name__}: {error}", "", "", {}
        return i, tile, "", mode, shape, notes

    ok = np.zeros(len(sources), dtype=bool)
    resized, converted, counted = Counter(), Counter(), {"oriented": Counter(), "rescaled": Counter(), "pages": Counter()}
    # PIL releases the GIL while decoding, so threads use every core without copying tiles between processes.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, tile, error, mode, shape, notes in tqdm(pool.map(work, range(len(sources)), chunksize=16), total=len(sources),
                                                desc=desc, unit="tile", leave=False):  # fmt: skip
            if tile is None:
                record.bad.append([str(sources[i]), error])
                continue
            if array is not None:
                array[i] = tile.transpose(2, 0, 1)
            ok[i] = True
            if mode != "RGB":
                converted[mode] += 1
            if shape != f"{size}x{size}":
                resized[shape] += 1
            for name, key in notes.items():
                counted[name][key] += 1
    record.resized, record.converted = dict(resized), dict(converted)
    record.oriented, record.rescaled, record.pages = (dict(counted[name]) for name in ("oriented", "rescaled", "pages"))
    return ok


def _forget_older_caches(cache_dir: Path, first: str, size: int) -> None:
    """A data set that changed leaves its old cache behind; drop caches of the same set and size."""
    for meta_file in cache_dir.glob("*.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("first") == first and meta.get("size") == size:
            meta_file.with_suffix(".npy").unlink(missing_ok=True)
            meta_file.unlink(missing_ok=True)


def decode_tiles(sources: list[TileSource], size: int = TILE_SIZE, desc: str = "decoding tiles",
                 skip_bad_images: bool = False, cache_dir: str | Path | None = TILE_CACHE_DIR,
                 multi_page: str = "refuse") -> tuple[torch.Tensor, np.ndarray, DecodeRecord]:
    """Every source decoded to one (N_ok, 3, size, size) uint8 tensor, the mask of the sources kept,
    and what decoding did. Bad files are all found first and listed in one BadImagesError, unless
    `skip_bad_images`, which leaves them out and records how many. With `cache_dir`, the decoded
    array is kept on disk (memory-mapped, so a set larger than memory still works) and reused while
    no file changes. `multi_page` ("refuse", "first", "largest"): what to read of a file holding
    several images (read_tile)."""  # fmt: skip
    if not sources:
        raise ValueError("no tiles to decode")
    record = DecodeRecord()
    if cache_dir is None:
        array = np.zeros((len(sources), 3, size, size), dtype=np.uint8)
        ok = _decode_into(array, sources, size, desc, record, multi_page)
    else:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = _cache_key(sources, size, multi_page)
        data_file, meta_file = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
        if data_file.is_file() and meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            ok = np.array(meta["ok"], dtype=bool)
            record = DecodeRecord(**meta["record"])
            array = np.load(data_file, mmap_mode="r")
            record.cache = f"read {data_file}"
        else:
            tmp = data_file.with_name(data_file.name + ".tmp.npy")
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(sources), 3, size, size))
            ok = _decode_into(array, sources, size, desc, record, multi_page)
            array.flush()
            del array
            os.replace(tmp, data_file)  # whole or absent: an interrupted decode leaves no half cache
            _forget_older_caches(cache_dir, str(sources[0]), size)
            meta_file.write_text(json.dumps({"first": str(sources[0]), "size": size, "ok": ok.tolist(),
                                             "record": record.__dict__ | {"cache": ""}}))  # fmt: skip
            array = np.load(data_file, mmap_mode="r")
            record.cache = f"wrote {data_file}"
    _raise_unless_skipped(record, skip_bad_images)
    kept = np.flatnonzero(ok)
    tiles = torch.from_numpy(np.ascontiguousarray(array[kept]) if len(kept) < len(array) else np.array(array))
    return tiles, ok, record


@dataclass
class TileSet:
    """A data set's labelled tiles, decoded, with labels and groups for the kept ones."""

    index: TileIndex
    sources: list[TileSource]  # the files kept, in the order of `tiles`
    tiles: torch.Tensor | None  # (N, 3, size, size) uint8; None when only checked
    labels: torch.Tensor  # int64
    groups: np.ndarray | None
    record: DecodeRecord


def check_tiles(sources: list[TileSource], size: int = TILE_SIZE, skip_bad_images: bool = False,
                multi_page: str = "refuse") -> tuple[np.ndarray, DecodeRecord]:  # fmt: skip
    """Decode every source once without keeping it: the checks of decode_tiles (bad files listed
    before training, modes and sizes recorded) for the original input path, which reads files per epoch."""
    record = DecodeRecord()
    ok = _decode_into(None, sources, size, "checking tiles", record, multi_page)
    _raise_unless_skipped(record, skip_bad_images)
    return ok, record


def _raise_unless_skipped(record: DecodeRecord, skip_bad_images: bool) -> None:
    if record.bad and not skip_bad_images:
        listed = "\n".join(f"  {path}: {why}" for path, why in record.bad)
        raise BadImagesError(f"{len(record.bad)} file(s) could not be read as images (nothing has been trained yet):\n{listed}\n"
                             "Replace or remove them, or set skip_bad_images=True to leave them out (the run records how many).")  # fmt: skip
    record.skipped = len(record.bad)


def load_tile_set(index: TileIndex, size: int = TILE_SIZE, skip_bad_images: bool = False,
                  cache_dir: str | Path | None = TILE_CACHE_DIR, keep_tiles: bool = True, multi_page: str = "refuse") -> TileSet:  # fmt: skip
    """Every labelled tile of `index`, decoded once (or read from the cache); with keep_tiles=False
    only checked, for the original input path (tiles is then None)."""
    if keep_tiles:
        tiles, ok, record = decode_tiles(index.train_paths, size, "decoding labelled tiles", skip_bad_images, cache_dir, multi_page)
    else:
        tiles, (ok, record) = None, check_tiles(index.train_paths, size, skip_bad_images, multi_page)
    labels = torch.from_numpy(index.train_labels[ok])
    groups = index.train_groups[ok] if index.train_groups is not None else None
    if len(labels.unique()) < 2:
        raise LayoutError(f"{index.data_dir}: after leaving out {record.skipped} unreadable file(s), only class {int(labels[0])} remains")
    sources = [source for source, kept in zip(index.train_paths, ok) if kept]
    return TileSet(index=index, sources=sources, tiles=tiles, labels=labels, groups=groups, record=record)


@dataclass(frozen=True)
class Split:
    """Positions into a TileSet, and how they were chosen (for the report)."""

    train: np.ndarray
    valid: np.ndarray
    description: str = ""


def seeded_split(n_tiles: int, valid_fraction: float, seed: int, subset: int = 0) -> Split:
    """The original's split: a seeded permutation, its first floor((1 - f) * n) train, the rest
    validate. With `subset`, that many tiles are drawn first (seeded) and split the same way."""
    order = _seeded_order(n_tiles, seed, subset)
    n_train = math.floor((1 - valid_fraction) * len(order))
    return Split(train=order[:n_train], valid=order[n_train:],
                 description=f"random (the original's): seeded permutation (seed {seed}), first floor({1 - valid_fraction:g}*n) train")  # fmt: skip


def _seeded_order(n_tiles: int, seed: int, subset: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_tiles, generator=generator).numpy()
    if subset:
        if subset > n_tiles:
            raise ValueError(f"subset={subset} asks for more tiles than the {n_tiles} labelled ones")
        order = order[:subset]
    return order


def grouped_split(groups: np.ndarray, valid_fraction: float, seed: int, subset: int = 0) -> Split:
    """A leak-free split: whole groups (slide, patient, source tile) go to validation, in a seeded
    order, until it holds at least valid_fraction of the tiles; no group is on both sides."""
    chosen = np.sort(_seeded_order(len(groups), seed, subset))
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


def make_split(tile_set: TileSet, how: str, valid_fraction: float, seed: int, subset: int = 0) -> Split:
    """`auto`: grouped when the data names groups, else the original's random split."""
    if how == "grouped" or (how == "auto" and tile_set.groups is not None):
        if tile_set.groups is None:
            raise ValueError(f"split='grouped' asked for, but {tile_set.index.data_dir} ({tile_set.index.layout} layout) names no groups; "
                             "give a CSV with a group column, or use split='random'")  # fmt: skip
        return grouped_split(tile_set.groups, valid_fraction, seed, subset)
    split = seeded_split(len(tile_set.labels), valid_fraction, seed, subset)
    if tile_set.groups is not None:  # random asked for over grouped data: allowed, but never silently
        return Split(split.train, split.valid, split.description + "; WARNING: groups ignored, near-copies may sit on both sides")
    return split


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
        self.sources, self.labels, self.size, self.transform, self.multi_page = sources, labels, size, transform, multi_page

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        image, _, _ = open_tile(self.sources[i], self.size, self.multi_page)
        if self.transform is not None:
            image = self.transform(image)
        tile = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return tile.float().div_(255), self.labels[i]  # ToTensor


def require_one_batch(n_tiles: int, batch_size: int, what: str) -> None:
    """With drop_last, as the original, fewer tiles than one batch would give no batch at all."""
    if n_tiles < batch_size:
        raise ValueError(
            f"the {what} set has {n_tiles} tiles, fewer than batch_size={batch_size}; with drop_last "
            "(as the original) it would give no batch. Use a smaller batch_size or more tiles (subset)."
        )


class TileBatches:
    """The fast input path: batches cut from decoded uint8 tiles with one index operation, moved to
    the device as uint8 (a quarter of float's bytes), augmented there per image (lib/augment.py).
    Tiles stay on the GPU when they fit; otherwise they wait in host memory and each batch, once
    gathered, is pinned and streamed in.
    Like the original's loader: reshuffled each epoch (seeded), the last partial batch dropped."""

    def __init__(self, tiles: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                 device: torch.device, crop_size: int | None, what: str):  # fmt: skip
        require_one_batch(len(tiles), batch_size, what)
        self.batch_size, self.shuffle, self.device, self.crop_size = batch_size, shuffle, device, crop_size
        self.generator = torch.Generator().manual_seed(seed)  # the order's stream; saved and restored on resume
        self.labels = labels.to(device)
        self.tiles, self.placement = _place(tiles, device)

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self):
        n = len(self)
        order = torch.randperm(len(self.labels), generator=self.generator) if self.shuffle else torch.arange(len(self.labels))
        order = order[: n * self.batch_size].view(n, self.batch_size)
        # The epoch's order goes to the device in one copy: a copy per batch from ordinary host
        # memory would make the host wait for the GPU's queue to drain, every batch.
        order_on_device = order.to(self.device)
        order_for_tiles = order_on_device if self.tiles.device == order_on_device.device else order
        for batch in range(n):
            tiles = self.tiles[order_for_tiles[batch]]
            if tiles.device != self.device:
                # Streamed from host memory: the gathered batch is pinned so its copy runs beside
                # the GPU's work instead of waiting for it.
                tiles = tiles.pin_memory().to(self.device, non_blocking=True)
            if self.crop_size is not None:
                images = augment_batch(tiles, self.crop_size)
            else:
                images = tiles.float().div_(255)
            yield images, self.labels[order_on_device[batch]]


def _place(tiles: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, str]:
    """The tiles on `device` when it is a GPU with room to spare (half its free memory), else in
    host memory (each gathered batch is pinned on its way, see __iter__; pinning the whole set would
    not help, as gathering rows copies them into ordinary memory); on the CPU, where they are."""
    if device.type != "cuda":
        return tiles, "host memory"
    free, _ = torch.cuda.mem_get_info(device)
    if tiles.numel() < free // 2:
        return tiles.to(device), f"GPU memory ({tiles.numel() / 2**30:.2f} GiB of uint8 tiles)"
    return tiles, f"host memory, streamed per batch through pinned copies ({tiles.numel() / 2**30:.2f} GiB would not fit beside the model)"


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, what: str, workers: int = 0) -> DataLoader:
    """A loader with the original's drop_last; fails by name when not one full batch fits."""
    require_one_batch(len(dataset), batch_size, what)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=True, generator=generator, num_workers=workers)


def read_run_layout(config) -> TileIndex:
    """The TileIndex a run's config names (its data_dir and the parameters that steer how the
    layout is read); the one call that training, evaluation and the pipeline share."""
    return read_layout(config.data_dir, config.positive_class, class_map=config.class_map, group_level=config.group_level)
