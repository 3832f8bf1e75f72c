"""Stain colour: HED augmentation against scikit-image, Macenko and Reinhard normalisation against
torchstain, the cache keyed by the stain target, and a run that uses both, evaluated with its own target."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.config import run_config
from lib.data import stain
from lib.data.batches import FileTileDataset, TileBatches
from lib.data.cache import TileCache
from lib.data.synthetic import SyntheticSpec, generate, render_split

REAL_TILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "lc25000-colon-2k"


def synthetic_tiles(n: int = 6, size: int = 48, seed: int = 3) -> torch.Tensor:
    """uint8 (n, 3, size, size) H&E-like tiles from the workbook's generator."""
    tiles, _ = render_split(SyntheticSpec(tile_size=size, seed=seed), "train", range(n))
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()


def real_tiles(n: int = 6, size: int = 64) -> torch.Tensor:
    """uint8 tiles of real H&E (LC25000 colon, both classes), resized small to keep the tests fast."""
    if not REAL_TILES.is_dir():
        pytest.skip(f"{REAL_TILES} (real H&E tiles) is absent on this machine")
    files = sorted((REAL_TILES / "colon_aca").glob("*.jpeg"))[: n // 2] + sorted((REAL_TILES / "colon_n").glob("*.jpeg"))[: n - n // 2]
    pixels = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()


# HED augmentation


def test_hed_matrices_are_scikit_images():
    from skimage.color import hed_from_rgb, rgb_from_hed

    assert np.array_equal(stain.RGB_FROM_HED.numpy(), rgb_from_hed)
    assert np.allclose(stain.HED_FROM_RGB.numpy(), hed_from_rgb, rtol=0, atol=1e-15)


def test_hed_augment_with_fixed_draws_is_scikit_images_rgb2hed_scale_shift_hed2rgb():
    from skimage.color import hed2rgb, rgb2hed

    images = torch.cat([synthetic_tiles(2).float() / 255, torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))])
    images[3, :, :4] = 0  # black pixels: the log floor
    alpha = torch.tensor([[1.1, 0.9, 1.05], [0.8, 1.2, 1.0], [1.0, 1.0, 0.95], [1.15, 0.85, 1.1]])
    beta = torch.tensor([[0.02, -0.03, 0.01], [-0.05, 0.04, 0.0], [0.0, 0.0, 0.0], [0.03, 0.03, -0.02]])
    out = stain.hed_augment(images, 0.0, 0.0, params=stain.HedParams(alpha, beta))
    for i in range(len(images)):
        rgb = images[i].permute(1, 2, 0).double().numpy()
        expected = hed2rgb(rgb2hed(rgb) * alpha[i].double().numpy() + beta[i].double().numpy())
        assert np.abs(out[i].permute(1, 2, 0).numpy() - expected).max() < 1e-5, i


def test_hed_identity_draw_returns_the_input_and_zero_settings_leave_it_alone():
    from skimage.color import hed2rgb

    # Images made from non-negative stains lie in the stains' cone, where rgb2hed's clipping changes nothing.
    stains = torch.rand(3, 24, 24, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
    images = torch.from_numpy(np.stack([hed2rgb(s.numpy()) for s in stains])).permute(0, 3, 1, 2).float()
    same = stain.hed_augment(images, 0.0, 0.0, params=stain.HedParams(torch.ones(3, 3), torch.zeros(3, 3)))
    assert (same - images).abs().max() < 1e-5
    tiles = synthetic_tiles(3).float() / 255
    assert stain.hed_augment(tiles, 0.0, 0.0) is tiles  # off: not even the round trip


def test_hed_draws_are_per_image_in_range_seeded_and_the_output_stays_in_0_1():
    image = synthetic_tiles(1).float() / 255
    batch = image.expand(8, -1, -1, -1).contiguous()
    params = stain.draw_hed_params(8, 0.2, 0.05, torch.Generator().manual_seed(0))
    assert params.scale.shape == params.shift.shape == (8, 3)
    assert ((params.scale >= 0.8) & (params.scale <= 1.2)).all() and (params.shift.abs() <= 0.05).all()
    assert len({tuple(row) for row in params.scale.tolist()}) == 8
    out = stain.hed_augment(batch, 0.2, 0.05, generator=torch.Generator().manual_seed(0))
    assert 0 <= out.min() and out.max() <= 1
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))
    again = stain.hed_augment(batch, 0.2, 0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_hed_augment_runs_on_the_inputs_device():
    images = torch.rand(2, 3, 8, 8)
    assert stain.hed_augment(images.to("meta"), 0.1, 0.1).device.type == "meta"  # no step falls back to the CPU
    if torch.cuda.is_available():
        on_gpu = stain.hed_augment(images.cuda(), 0.1, 0.1, generator=torch.Generator().manual_seed(5))
        on_cpu = stain.hed_augment(images, 0.1, 0.1, generator=torch.Generator().manual_seed(5))
        assert on_gpu.device.type == "cuda" and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5)


def test_training_batches_are_hed_augmented_and_validation_batches_are_not():
    tiles = synthetic_tiles(8, size=32)
    labels = torch.tensor([0, 1] * 4)

    def first_batch(hed_scale, hed_shift):
        torch.manual_seed(0)
        loader = TileBatches(tiles, labels, 8, shuffle=False, seed=0, device=torch.device("cpu"), crop_size=None, what="training",
                             hed_scale=hed_scale, hed_shift=hed_shift)  # fmt: skip
        return next(iter(loader))[0]

    plain = tiles.float() / 255
    assert torch.equal(first_batch(0.0, 0.0), plain)
    augmented = first_batch(0.1, 0.05)
    assert not torch.allclose(augmented, plain, atol=1e-3) and augmented.shape == plain.shape


def test_the_original_input_path_applies_hed_per_image(tmp_path):
    paths = []
    for i, tile in enumerate(synthetic_tiles(2, size=32).permute(0, 2, 3, 1).numpy()):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(tile).save(paths[-1])
    labels = torch.tensor([0, 1])
    plain = FileTileDataset(paths, labels, 32)[0][0]
    torch.manual_seed(0)
    coloured = FileTileDataset(paths, labels, 32, hed_scale=0.2, hed_shift=0.05)[0][0]
    assert coloured.shape == plain.shape and not torch.allclose(coloured, plain, atol=1e-3)


# Stain normalisation


def _torchstain_macenko(reference: torch.Tensor):
    import torchstain

    normalizer = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    normalizer.fit(reference)
    return normalizer


def test_macenko_matches_torchstain_on_real_tiles():
    tiles = real_tiles(6)
    reference = _torchstain_macenko(tiles[0])
    target = stain.fit_macenko(tiles[:1], "tile 0")
    assert np.allclose(np.array(target.stain_matrix), reference.HERef.numpy(), atol=1e-4)
    assert np.allclose(target.max_concentrations, reference.maxCRef.numpy(), rtol=1e-4)
    mine, normalized = stain.normalize_stain(tiles, target)
    assert normalized.all()
    for tile, ours in zip(tiles, mine):
        theirs = reference.normalize(tile, stains=False)[0].permute(2, 0, 1)
        assert (theirs.float() - ours.float()).abs().max() <= 1  # torchstain truncates to int, this module rounds


def test_macenko_matches_torchstain_on_synthetic_tiles():
    tiles = synthetic_tiles(4, size=48)
    usable = [i for i in range(4) if stain.tissue_mask(stain.optical_density(tiles[i : i + 1])).float().mean() > 0.1]
    reference = _torchstain_macenko(tiles[usable[0]])
    target = stain.fit_macenko(tiles[usable[0] : usable[0] + 1], "a synthetic tile")
    mine, _ = stain.normalize_stain(tiles[usable], target)
    for tile, ours in zip(tiles[usable], mine):
        theirs = reference.normalize(tile, stains=False)[0].permute(2, 0, 1)
        assert (theirs.float() - ours.float()).abs().max() <= 1


def test_reinhard_matches_torchstain():
    import torchstain

    tiles = real_tiles(4)
    reference = torchstain.normalizers.ReinhardNormalizer(backend="torch")
    reference.fit(tiles[0])
    target = stain.fit_reinhard(tiles[:1], "tile 0")
    assert np.allclose(target.means, reference.target_means.numpy(), atol=1e-3)
    assert np.allclose(target.stds, reference.target_stds.numpy(), rtol=1e-4)
    mine, normalized = stain.normalize_stain(tiles, target)
    assert normalized.all()
    for tile, ours in zip(tiles, mine):
        theirs = reference.normalize(tile).permute(2, 0, 1)
        assert (theirs.float() - ours.float()).abs().mean() < 1.0 and (theirs.float() - ours.float()).abs().max() <= 3


def restained(tiles: torch.Tensor, stains_from: torch.Tensor) -> torch.Tensor:
    """`tiles` with their own Macenko stain matrix swapped for another (a lab that stains bluer and paler)."""
    od = stain.optical_density(tiles)
    _, concentrations, defined = stain.macenko_stains(od, stain.tissue_mask(od))
    assert defined.all()
    return (stain.MACENKO_IO * torch.exp(-stains_from @ concentrations * 0.8)).clamp(0, 255).round().to(torch.uint8).view_as(tiles)


def densest(tiles: torch.Tensor, n: int) -> torch.Tensor:
    """The `n` tiles with the most pixels dense enough to count as tissue."""
    share = stain.tissue_mask(stain.optical_density(tiles)).float().mean(dim=1)
    return tiles[share.argsort(descending=True)[:n]]


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("kind, worst", [("synthetic", 0.35), ("real", 0.7)])
def test_normalisation_brings_a_restained_tile_back_toward_its_own_stain(method, kind, worst):
    """Each tile re-stained by a lab that stains bluer and paler, then normalised to a target fitted on
    the tile itself: the mean absolute difference from the tile drops. LC25000's tiles are pale (a few
    per cent of their pixels dense enough for Macenko's estimate), so less comes back there."""
    tiles = densest(synthetic_tiles(6, size=64) if kind == "synthetic" else real_tiles(12), 3)
    other = torch.tensor([[0.45, 0.20], [0.75, 0.85], [0.50, 0.48]])  # haematoxylin bluer, eosin greyer
    other = other / other.norm(dim=0)
    before, after = [], []
    for tile in tiles.split(1):
        moved = restained(tile, other)
        back, normalized = stain.normalize_stain(moved, stain.fit_stain_target(method, tile, "the tile's own stain"))
        assert normalized.all()
        before.append((moved.float() - tile.float()).abs().mean())
        after.append((back.float() - tile.float()).abs().mean())
    assert sum(after) < worst * sum(before), (before, after)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_background_tiles_are_kept_as_decoded_and_counted(method):
    tissue = synthetic_tiles(2, size=32)
    glass = torch.full((2, 3, 32, 32), 236, dtype=torch.uint8)
    glass[0] += torch.randint(0, 12, glass[0].shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))  # scanner noise
    glass[1, :, :2, :2] = 90  # a speck of dust: 4 pixels
    target = stain.fit_stain_target(method, tissue, "tissue")
    out, normalized = stain.normalize_stain(torch.cat([tissue, glass]), target)
    assert normalized.tolist()[2:] == [False, False] and torch.equal(out[2:], glass)
    assert torch.isfinite(out.float()).all()
    with pytest.raises(ValueError, match="too little tissue"):
        stain.fit_stain_target(method, glass, "glass")


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_runs_on_the_tiles_device(method):
    tiles = synthetic_tiles(2, size=32)
    target = stain.fit_stain_target(method, tiles, "two tiles")
    out, normalized = stain.normalize_stain(tiles.to("meta"), target)  # no step falls back to the CPU
    assert out.device.type == normalized.device.type == "meta" and out.dtype == torch.uint8


def test_a_stain_target_is_written_and_read_whole_and_its_digest_follows_its_values():
    target = stain.fit_macenko(synthetic_tiles(3, size=32), "three tiles")
    again = stain.StainTarget.from_json(target.to_json())
    assert again == target and again.digest() == target.digest()
    other = stain.fit_macenko(synthetic_tiles(3, size=32, seed=9), "three others")
    assert other.digest() != target.digest()
    assert json.loads(target.to_json())["digest"] == target.digest()


def _tile_files(folder: Path, tiles: torch.Tensor) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, tile in enumerate(tiles.permute(0, 2, 3, 1).numpy()):
        paths.append(folder / f"{i}.png")
        Image.fromarray(tile).save(paths[-1])
    return paths


def test_normalised_tiles_are_cached_apart_from_raw_ones_and_read_back_without_normalising_again(tmp_path, monkeypatch):
    import lib.data.cache as cache_module

    tiles = synthetic_tiles(6, size=32)
    paths = _tile_files(tmp_path / "tiles", tiles)
    cache_dir = tmp_path / "cache"
    target = stain.fit_macenko(tiles[:3], "three tiles")
    rows = np.arange(6)

    cache = TileCache(paths, cache_dir)
    cache.open_size(32)
    cache.decode(rows, "decoding")
    raw = cache.tiles().clone()
    normalised, kept, now = cache.stain_normalized(rows, target)
    expected, normalized = stain.normalize_stain(raw, target)
    assert torch.equal(normalised, expected) and kept == int((~normalized).sum()) and now == 6
    assert not torch.equal(normalised, raw) and torch.equal(cache.tiles(), raw)  # the raw rows are untouched
    files = sorted(p.name for p in cache_dir.glob("*.npy"))
    assert f"{cache.key}-32.npy" in files and f"{cache.key}-32-macenko-{target.digest()}.npy" in files

    def no_normalising(*args, **kwargs):
        raise AssertionError("normalised again instead of read from the cache")

    monkeypatch.setattr(cache_module, "normalize_stain", no_normalising)
    second = TileCache(paths, cache_dir)
    second.open_size(32)
    second.decode(rows, "decoding")
    read, kept_again, now = second.stain_normalized(rows, target)
    assert torch.equal(read, expected) and kept_again == kept and now == 0
    other = stain.fit_macenko(tiles[3:], "three others")
    with pytest.raises(AssertionError, match="normalised again"):  # another target: other rows, computed afresh
        second.stain_normalized(rows, other)


def test_a_target_fitted_on_the_run_uses_training_tiles_only():
    tiles = torch.cat([synthetic_tiles(6, size=32), torch.zeros(4, 3, 32, 32, dtype=torch.uint8)])  # rows 6..9: black validation tiles
    train = np.arange(6)
    assert set(stain.sample_rows(np.arange(300), 0).tolist()) <= set(range(300)) and len(stain.sample_rows(np.arange(300), 0)) == 256
    target = stain.run_stain_target("macenko", "", tiles, train, seed=0)
    assert target == stain.fit_macenko(tiles[:6], target.source) and "6 of the run's training tiles" in target.source


def test_a_reference_image_sets_the_target_and_a_bad_one_is_named(tmp_path):
    reference = _tile_files(tmp_path / "ref", synthetic_tiles(1, size=48, seed=4))[0]
    target = stain.run_stain_target("reinhard", str(reference))
    assert target.method == "reinhard" and str(reference) in target.source
    with pytest.raises(FileNotFoundError, match=r"stain_reference=.*missing\.png"):
        stain.read_stain_reference(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match=r"stain_reference=.*broken\.png.*cannot be read"):
        stain.read_stain_reference(broken)


# Parameters and runs


@pytest.mark.parametrize("values, words", [
    ({"hed_scale": -0.1}, "hed_scale=-0.1 must lie in [0, 1)"),
    ({"hed_scale": 1.0}, "hed_scale=1.0 must lie in [0, 1)"),
    ({"hed_shift": -0.05}, "hed_shift=-0.05 must lie in [0, 1)"),
    ({"stain_normalize": "vahadane"}, "stain_normalize='vahadane' is not one of none, macenko, reinhard"),
    ({"stain_reference": "ref.png"}, "stain_reference='"),
    ({"stain_normalize": "macenko", "input_pipeline": "original"}, "stain_normalize='macenko' needs input_pipeline='tensor'"),
])  # fmt: skip
def test_bad_stain_parameters_are_refused_by_name(values, words):
    with pytest.raises(ValueError) as refused:
        run_config("baseline", profile="quick", **values)
    assert words in str(refused.value)


def test_the_training_fingerprint_follows_the_stain_parameters():
    from lib.pipeline import training_parameters

    plain = training_parameters(run_config("baseline", profile="quick"), None)
    coloured = training_parameters(run_config("baseline", profile="quick", hed_scale=0.05, hed_shift=0.05, stain_normalize="macenko"), None)
    assert {k for k in plain if plain[k] != coloured[k]} == {"hed_scale", "hed_shift", "stain_normalize"}


def test_make_names_a_bad_stain_reference_before_any_run_and_a_changed_one_retrains(tmp_path):
    from lib.pipeline import preflight, training_parameters

    reference = _tile_files(tmp_path / "ref", synthetic_tiles(1, size=32))[0]
    config = run_config("baseline", profile="quick", device="cpu", stain_normalize="macenko", stain_reference=str(reference))
    preflight([config])
    before = training_parameters(config, None)
    Image.fromarray(synthetic_tiles(1, size=40, seed=8)[0].permute(1, 2, 0).numpy()).save(reference)
    assert training_parameters(config, None) != before
    reference.unlink()
    with pytest.raises(FileNotFoundError, match="parameter stain_reference="):
        preflight([config])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """40 labelled and 8 test tiles of 48x48 in the course layout."""
    return generate(tmp_path_factory.mktemp("stain") / "small", SyntheticSpec(n_train=40, n_test=8, tile_size=48, seed=5), workers=1)


def test_a_run_with_hed_augmentation_and_macenko_normalisation_records_both_and_is_evaluated_with_its_target(small_data, tmp_path,
                                                                                                            capsys, monkeypatch):  # fmt: skip
    import lib.report.evaluate as evaluate
    from lib.training.loop import fit

    config = run_config("resnet50-10ep", profile="quick", data_dir=str(small_data), runs_dir=str(tmp_path / "runs"), model="small",
                        crop_size=40, epochs=1, batch_size=8, subset=0, device="cpu", cache_dir=str(tmp_path / "cache"),
                        hed_scale=0.05, hed_shift=0.05, stain_normalize="macenko")  # fmt: skip
    result = fit(config)
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "resnet50-10ep"
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["hed_scale"], saved["hed_shift"], saved["stain_normalize"], saved["stain_reference"]) == (0.05, 0.05, "macenko", "")
    target = stain.StainTarget.from_json((run_dir / "stain_target.json").read_text())
    assert "of the run's training tiles (seed 0)" in target.source
    assert result.summary["stain"]["digest"] == target.digest()
    line = next(line for line in out.splitlines() if line.startswith("data: stain normalised (macenko), once per tile"))
    assert f"{result.summary['stain']['kept_as_decoded']} kept as decoded" in line
    assert "HED colour augmentation of training tiles (scale 0.05, shift 0.05)" in result.summary["input_path"]

    seen = {}
    decode = evaluate.decode_tiles

    def spy(sources, *args, **kwargs):
        tiles, ok, record = decode(sources, *args, **kwargs)
        seen.update(stain=kwargs.get("stain"), tiles=tiles.clone(), raw=decode(sources, *args, **(kwargs | {"stain": None}))[0].clone())
        return tiles, ok, record

    monkeypatch.setattr(evaluate, "decode_tiles", spy)
    predictions = evaluate.predict_test_tiles(run_dir, device="cpu")
    assert predictions.scored_on == "test" and len(predictions.ids) == 8
    assert seen["stain"] == target
    assert torch.equal(seen["tiles"], stain.normalize_stain(seen["raw"], target)[0]) and not torch.equal(seen["tiles"], seen["raw"])


def test_a_missing_stain_reference_is_named_before_training(small_data, tmp_path):
    from lib.training.loop import fit

    missing = tmp_path / "no-such-reference.png"
    config = run_config("resnet50-10ep", profile="quick", data_dir=str(small_data), runs_dir=str(tmp_path / "runs"), model="small",
                        epochs=1, batch_size=8, device="cpu", stain_normalize="reinhard", stain_reference=str(missing),
                        cache_dir=str(tmp_path / "cache"))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"parameter stain_reference=.*no-such-reference\.png"):
        fit(config)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs" / "resnet50-10ep" / "config.json").exists()
