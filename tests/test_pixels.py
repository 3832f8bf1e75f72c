"""Every tile reaches the network as the image a viewer shows: EXIF orientation applied, more than
8 bits scaled by the range the values use, files of several images read as asked or refused by name."""

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data import BadImagesError, FileTileDataset, decode_tiles, open_tile, square_tile
from tests.helpers import halves, write_oriented, write_tiff


def spread_16_bit(shape, seed=0) -> np.ndarray:
    """16-bit values over the whole range, mean about 48,000, as the issue's greyscale TIFF."""
    values = np.random.default_rng(seed).beta(3, 1, size=shape) * 65535
    values.flat[:2] = 0, 65535
    return values.astype(np.uint16)


def test_a_16_bit_greyscale_tiff_is_scaled_by_its_range_not_clipped_to_white(tmp_path):
    pixels = spread_16_bit((24, 24))
    assert 45000 < pixels.mean() < 51000
    tiles, _, record = decode_tiles([write_tiff(tmp_path / "grey16.tif", pixels)], size=24, cache_dir=None)
    expected = np.rint(pixels / 257.0)
    assert np.abs(tiles[0, 0].numpy() - expected).max() <= 1  # 65535 -> 255, as a viewer shows 16 bits
    assert torch.equal(tiles[0, 0], tiles[0, 1]) and torch.equal(tiles[0, 1], tiles[0, 2])
    assert record.rescaled == {"I;16 0..65535 (16 bits)": 1} and record.converted == {"I;16": 1}
    assert "scaled to 8 bits by the range their values use: 1 I;16 tiles from 0..65535 (16 bits)" in record.notes(24)


def test_12_bit_camera_data_in_16_bit_files_is_scaled_by_12_bits_in_tiff_and_png(tmp_path):
    grey = np.random.default_rng(1).integers(0, 4096, (16, 16)).astype(np.uint16)
    grey.flat[0] = 4095
    rgb = np.random.default_rng(2).integers(0, 4096, (16, 16, 3)).astype(np.uint16)
    rgb.flat[0] = 4095
    sources = [write_tiff(tmp_path / "grey12.tif", grey), tmp_path / "grey12.png",
               write_tiff(tmp_path / "rgb12.tif", rgb, photometric="rgb"),
               write_tiff(tmp_path / "rgb12-planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")]  # fmt: skip
    Image.fromarray(grey).save(tmp_path / "grey12.png")  # Pillow writes 16-bit greyscale PNG (I;16)
    tiles, _, record = decode_tiles(sources, size=16, cache_dir=None)
    grey8, rgb8 = np.rint(grey / 4095 * 255), np.rint(rgb / 4095 * 255)
    assert np.abs(tiles[0, 1].numpy() - grey8).max() <= 1 and torch.equal(tiles[0], tiles[1])
    # Pillow alone reads 16-bit RGB TIFF as its high bytes (near black for 12-bit data); tifffile reads the values.
    assert np.abs(tiles[2].permute(1, 2, 0).numpy() - rgb8).max() <= 1 and torch.equal(tiles[2], tiles[3])
    assert record.rescaled == {"I;16 0..4095 (12 bits)": 2, "RGB;16 0..4095 (12 bits)": 2}
    assert record.converted == {"I;16": 2, "RGB;16": 2}


def test_tiles_of_one_bit_depth_scaled_by_different_ranges_are_warned_about(tmp_path):
    full, twelve = spread_16_bit((8, 8)), np.full((8, 8), 4095, np.uint16)
    _, _, record = decode_tiles([write_tiff(tmp_path / "a.tif", full), write_tiff(tmp_path / "b.tif", twelve)], size=8, cache_dir=None)
    assert record.rescaled == {"I;16 0..65535 (16 bits)": 1, "I;16 0..4095 (12 bits)": 1}
    assert any(note.startswith("WARNING: tiles of the same bit depth were scaled by different ranges") for note in record.notes(8))


def test_float_and_white_is_zero_tiffs_are_shown_as_a_viewer_shows_them(tmp_path):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    inverted = (65535 - spread_16_bit((8, 8), seed=3)).astype(np.uint16)
    sources = [write_tiff(tmp_path / "float.tif", ramp), write_tiff(tmp_path / "white0.tif", inverted, photometric="miniswhite")]
    tiles, _, record = decode_tiles(sources, size=8, cache_dir=None)
    assert np.abs(tiles[0, 0].numpy() - np.rint(ramp * 255)).max() <= 1
    assert np.abs(tiles[1, 0].numpy() - np.rint((65535 - inverted) / 257.0)).max() <= 1
    assert record.rescaled == {"F 0..1": 1, "I;16 0..65535 (16 bits)": 1}


def test_a_phone_jpeg_with_exif_orientation_6_is_turned_upright_before_resizing(tmp_path):
    upright = halves(48, 96)  # portrait: red top, blue bottom, as the viewer shows it
    stored = write_oriented(tmp_path / "phone.jpg", upright, 6)
    assert Image.open(stored).size == (96, 48)  # stored landscape, as the camera wrote it
    tiles, _, record = decode_tiles([stored], size=32, cache_dir=None)
    tile = tiles[0].permute(1, 2, 0).numpy().astype(int)
    assert (np.abs(tile[:12] - (200, 30, 30)).max(axis=2) < 40).all()  # the top is red ...
    assert (np.abs(tile[-12:] - (30, 30, 200)).max(axis=2) < 40).all()  # ... and the bottom blue
    assert record.oriented == {"6": 1} and record.resized == {"48x96": 1}  # the upright size
    assert "turned upright by their EXIF orientation, as a viewer shows them: 1 tiles turned 90° clockwise (6)" in record.notes(32)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_exif_orientation_gives_the_upright_pixels(tmp_path, orientation):
    upright = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8), "RGB")
    source = write_oriented(tmp_path / "tile.png", upright, orientation)
    image, _, shape = open_tile(source, size=32)
    assert shape == "20x12"
    assert np.array_equal(np.asarray(image), np.asarray(square_tile(upright, 32)))  # turned first, then made square and resized


def test_a_16_bit_tiff_with_an_orientation_tag_is_turned_too(tmp_path):
    pixels = np.zeros((10, 30), np.uint16)
    pixels[:, :15] = 65535  # stored: left half white
    source = write_tiff(tmp_path / "turned.tif", pixels, extratags=[(274, "H", 1, 6, True)])
    tiles, _, record = decode_tiles([source], size=30, cache_dir=None)
    assert (tiles[0, 0, :14] == 255).all() and (tiles[0, 0, 16:] == 0).all()  # a viewer turns the left half to the top
    assert record.oriented == {"6": 1} and record.resized == {"10x30": 1}


def three_pages(path):
    """A multi-page TIFF: pages of 8x8, 16x16 and 12x12 pixels in three greys (10, 20, 30)."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for grey, side in ((10, 8), (20, 16), (30, 12)):
            tif.write(np.full((side, side), grey, np.uint8))
    return path


def test_a_multi_page_tiff_is_refused_by_name_unless_multi_page_says_which_page(tmp_path):
    source = three_pages(tmp_path / "stack.tif")
    with pytest.raises(BadImagesError, match=r"stack\.tif: MultiPageError: holds 3 images \(pages of a multi-page TIFF\).*multi_page='first'"):
        decode_tiles([source], size=8, cache_dir=None)
    first, _, record = decode_tiles([source], size=8, cache_dir=None, multi_page="first")
    assert (first == 10).all() and record.pages == {"page 1 of 3 (multi_page='first')": 1}
    largest, _, record = decode_tiles([source], size=8, cache_dir=None, multi_page="largest")
    assert (largest == 20).all() and record.pages == {"page 2 of 3, the largest (multi_page='largest')": 1}
    assert "files holding several images: 1 tiles read as page 2 of 3, the largest (multi_page='largest')" in record.notes(8)
    with pytest.raises(ValueError, match="multi_page='all' is not one of refuse, first, largest"):
        decode_tiles([source], size=8, cache_dir=None, multi_page="all")


def test_a_multi_page_16_bit_tiff_goes_through_the_same_choice(tmp_path):
    pages = np.stack([np.full((8, 8), 65535, np.uint16), np.full((8, 8), 0, np.uint16)])
    source = write_tiff(tmp_path / "deep-stack.tif", pages)
    with pytest.raises(BadImagesError, match="deep-stack.tif: MultiPageError: holds 2 images"):
        decode_tiles([source], size=8, cache_dir=None)
    tiles, _, record = decode_tiles([source], size=8, cache_dir=None, multi_page="first")
    assert (tiles == 255).all() and record.pages == {"page 1 of 2 (multi_page='first')": 1}


def test_an_animated_gif_is_refused_but_a_camera_mpo_jpeg_is_its_main_image(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(BadImagesError, match=r"moving\.gif: MultiPageError: holds 2 images \(frames of a GIF file\)"):
        decode_tiles([tmp_path / "moving.gif"], size=8, cache_dir=None)
    frames[0].save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=frames[1:])
    tiles, _, record = decode_tiles([tmp_path / "camera.jpg"], size=8, cache_dir=None)
    assert tiles[0, 0].float().mean() > 200 and tiles[0, 2].float().mean() < 50  # the red main image
    assert record.pages == {"the main image of an MPO JPEG (2 images)": 1}


def test_the_cache_keeps_each_page_choice_apart_and_keeps_the_record(tmp_path):
    source = three_pages(tmp_path / "stack.tif")
    first, _, _ = decode_tiles([source], size=8, cache_dir=tmp_path / "cache", multi_page="first")
    largest, _, record = decode_tiles([source], size=8, cache_dir=tmp_path / "cache", multi_page="largest")
    assert record.cache.startswith("wrote") and (first == 10).all() and (largest == 20).all()  # not the first's cache
    again, _, reread = decode_tiles([source], size=8, cache_dir=tmp_path / "cache", multi_page="largest")
    assert reread.cache.startswith("read") and torch.equal(again, largest) and reread.notes(8) == record.notes(8)


def test_the_original_input_path_reads_files_as_the_decoded_path_does(tmp_path):
    stack = three_pages(tmp_path / "stack.tif")
    phone = write_oriented(tmp_path / "phone.png", halves(16, 32), 6)
    dataset = FileTileDataset([stack, phone], torch.tensor([0, 1]), 8, multi_page="largest")
    tiles, _, _ = decode_tiles([stack, phone], size=8, cache_dir=None, multi_page="largest")
    for i in range(2):
        assert torch.equal(dataset[i][0], tiles[i].float() / 255)
    with pytest.raises(ValueError, match="multi_page='every' is not one of"):
        FileTileDataset([stack], torch.tensor([0]), 8, multi_page="every")


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits"])
def test_compressed_16_bit_tiffs_are_read_by_their_values(tmp_path, compression):
    grey, rgb = spread_16_bit((12, 12), seed=5), spread_16_bit((12, 12, 3), seed=6)
    sources = [write_tiff(tmp_path / "grey.tif", grey, compression=compression),
               write_tiff(tmp_path / "rgb.tif", rgb, photometric="rgb", compression=compression)]  # fmt: skip
    Image.fromarray(grey).save(tmp_path / "grey-libtiff.tif", compression={"lzw": "tiff_lzw", "zlib": "tiff_adobe_deflate"}.get(compression, compression))
    tiles, _, record = decode_tiles([*sources, tmp_path / "grey-libtiff.tif"], size=12, cache_dir=None)
    assert np.abs(tiles[0, 0].numpy() - np.rint(grey / 257.0)).max() <= 1 and torch.equal(tiles[0], tiles[2])
    assert np.abs(tiles[1].permute(1, 2, 0).numpy() - np.rint(rgb / 257.0)).max() <= 1
    assert record.rescaled == {"I;16 0..65535 (16 bits)": 2, "RGB;16 0..65535 (16 bits)": 1}
