"""The batched augmentation against torchvision's own transforms, and its per-image draws."""

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lib.data.augment import MAX_DEGREES, AugmentParams, augment_batch, draw_params
from lib.data import decode_tiles, read_layout


@pytest.fixture(scope="module")
def tiles(tiny_data):
    decoded, _, _ = decode_tiles(read_layout(tiny_data).train_paths[:2], cache_dir=None)
    return decoded


def torchvision_reference(tile, degrees, hflip, vflip, top, left, crop, interpolation):
    """The original's transforms with the same draws fixed: rotate, flips, crop, ToTensor."""
    image = TF.rotate(tile, degrees, interpolation=interpolation)
    if hflip:
        image = TF.horizontal_flip(image)
    if vflip:
        image = TF.vertical_flip(image)
    return TF.crop(image, top, left, crop, crop).float() / 255


@pytest.mark.parametrize("degrees, hflip, vflip, top, left", [
    (30.0, True, False, 10, 40), (-44.0, False, True, 56, 0), (0.0, False, False, 0, 0), (12.5, True, True, 33, 17),
])  # fmt: skip
def test_same_draws_give_torchvisions_image(tiles, degrees, hflip, vflip, top, left):
    params = AugmentParams(*(torch.tensor([v]) for v in (degrees, hflip, vflip, top, left)))
    # nearest, RandomRotation's default: the same pixels, exactly
    ours = augment_batch(tiles[:1], 200, params=params)[0]
    reference = torchvision_reference(tiles[0], degrees, hflip, vflip, top, left, 200, InterpolationMode.NEAREST)
    assert (ours - reference).abs().max() * 255 < 0.5
    # bilinear: within rounding, torchvision rounds to uint8 and this does not
    ours = augment_batch(tiles[:1], 200, params=params, interpolation="bilinear")[0]
    reference = torchvision_reference(tiles[0], degrees, hflip, vflip, top, left, 200, InterpolationMode.BILINEAR)
    assert (ours - reference).abs().max() * 255 <= 1.0 and (ours - reference).abs().mean() * 255 < 0.5


def test_every_image_gets_its_own_draw_with_the_originals_distribution():
    generator = torch.Generator().manual_seed(0)
    params = draw_params(20000, 256, 256, 200, generator)
    assert params.degrees.abs().max() <= MAX_DEGREES and params.degrees.std() > 20  # uniform in [-45, 45]: std 26
    assert abs(params.degrees.mean()) < 1 and abs(params.hflip.float().mean() - 0.5) < 0.02 and abs(params.vflip.float().mean() - 0.5) < 0.02
    assert params.top.min() == 0 and params.top.max() == 56 and params.left.min() == 0 and params.left.max() == 56
    assert len(set(params.degrees[:100].tolist())) == 100  # not one rotation for the whole batch


def test_a_batch_augments_each_tile_differently(tiles):
    torch.manual_seed(0)
    same_tile_twice = torch.stack([tiles[0], tiles[0]])
    out = augment_batch(same_tile_twice, 200)
    assert out.shape == (2, 3, 200, 200) and not torch.equal(out[0], out[1])
