"""Decoding one tile file to the RGB uint8 pixels a viewer shows: EXIF orientation, RGB conversion,
images deeper than 8 bits, files holding several images, and the record of what decoding did."""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lib.config import MULTI_PAGES, NON_SQUARES
from lib.data.layouts import H5Tile, TileSource

TILE_SIZE = 256  # pixels: the original's tiles and the baseline's input; the size for data sets whose tiles differ
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
    non_square: str = "crop"  # how tiles that are not square were made square before resizing (RunConfig.non_square)
    bad: list[list[str]] = field(default_factory=list)  # [file, why] for every file that failed
    skipped: int = 0  # bad files left out because skip_bad_images was asked for
    cache: str = ""  # the cache file, and whether it was read or written

    def notes(self, size: int) -> list[str]:
        notes = []
        squares = {shape: n for shape, n in self.resized.items() if len(set(shape.split("x"))) == 1}
        if squares:
            notes.append(f"resized to {size}x{size}: " + ", ".join(f"{n} tiles of {s}" for s, n in sorted(squares.items())))
        for shape, n in sorted(self.resized.items()):
            if shape not in squares:
                notes.append(self._squared(shape, n, size))
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

    def _squared(self, shape: str, n: int, size: int) -> str:
        """What was done to `n` tiles of a non-square `shape` ("700x460"), in words."""
        width, height = map(int, shape.split("x"))
        side = min(width, height) if self.non_square == "crop" else max(width, height)
        done = (f"centre-cropped to {side}x{side} (non_square='crop'; the sides are left out)" if self.non_square == "crop"
                else f"padded with white to {side}x{side} (non_square='pad'; the whole tile kept)")  # fmt: skip
        return f"{n} tiles of {shape} {done}" + (f", then resized to {size}x{size}" if side != size else "") + ", never squashed"


def square_tile(image: Image.Image, size: int, non_square: str = "crop") -> Image.Image:
    """An RGB `image` as size x size without changing the shape of what it shows: one that is not
    square centre-cropped to its shorter side (non_square "crop") or padded to its longer side with
    white, the background of an H&E slide ("pad"), then resized (bilinear). Returns the new image."""
    width, height = image.size
    if width != height:
        if non_square == "crop":
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        else:
            side = max(width, height)
            padded = Image.new("RGB", (side, side), (255, 255, 255))
            padded.paste(image, ((side - width) // 2, (side - height) // 2))
            image = padded
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return image


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


def open_tile(source: TileSource, size: int = TILE_SIZE, multi_page: str = "refuse",
              non_square: str = "crop") -> tuple[Image.Image, str, str]:  # fmt: skip
    """One tile as an RGB PIL image of size x size (square_tile: a non-square one cropped or padded,
    never squashed), with the file's mode and its upright "WxH" (for the record)."""
    image, mode, shape, _ = _open_tile(source, size, multi_page, non_square)
    return image, mode, shape


def _open_tile(source: TileSource, size: int, multi_page: str, non_square: str = "crop") -> tuple[Image.Image, str, str, dict[str, str]]:
    image, mode, notes = read_tile(source, multi_page)
    shape = f"{image.width}x{image.height}"
    if image.mode != "RGB":
        image = _to_rgb(image)
    return square_tile(image, size, non_square), mode, shape, notes


def decode_tile(source: TileSource, size: int = TILE_SIZE, multi_page: str = "refuse",
                non_square: str = "crop") -> tuple[np.ndarray, str, str, dict[str, str]]:  # fmt: skip
    """One tile as (size, size, 3) uint8 as a viewer shows it (a non-square one cropped or padded
    as `non_square` says, square_tile), with the file's mode, its upright "WxH" and what reading it
    did ({DecodeRecord field: key}: oriented, rescaled, pages), for the record."""
    image, mode, shape, notes = _open_tile(source, size, multi_page, non_square)
    return np.asarray(image, dtype=np.uint8), mode, shape, notes


def check_multi_page(multi_page: str) -> None:
    """Raises ValueError, before any file is read, for a multi_page other than those of MULTI_PAGES."""
    if multi_page not in MULTI_PAGES:
        raise ValueError(f"multi_page={multi_page!r} is not one of {', '.join(MULTI_PAGES)}")


def check_non_square(non_square: str) -> None:
    """Raises ValueError, before any file is read, for a non_square other than those of NON_SQUARES."""
    if non_square not in NON_SQUARES:
        raise ValueError(f"non_square={non_square!r} is not one of {', '.join(NON_SQUARES)}")


def source_signature(source: TileSource) -> list:
    """What identifies a file's content cheaply: size and modification time (or a zip member's CRC)."""
    if isinstance(source, zipfile.Path):
        info = source.root.getinfo(source.at)
        return [str(source), info.file_size, info.CRC]
    stat = os.stat(source.file if isinstance(source, H5Tile) else source)
    return [str(source), stat.st_size, stat.st_mtime_ns]
