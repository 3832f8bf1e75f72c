"""Both networks' shapes and ResNet50's weights policy."""

import pytest
import torch
import torchvision

from lib.models import BaselineCNN, SmallCNN, build_resnet50


def test_baseline_takes_256_tiles_and_gives_two_outputs():
    model = BaselineCNN()
    assert model(torch.zeros(2, 3, 256, 256)).shape == (2, 2)
    assert [m.out_channels for m in (model.conv1, model.conv2, model.conv3)] == [16, 16, 3]
    assert model.linear1.in_features == 3 * 64 * 64


def test_baseline_rejects_other_sizes_clearly():
    with pytest.raises(ValueError, match="256x256 tiles only.*got 3x200x200"):
        BaselineCNN()(torch.zeros(1, 3, 200, 200))


def test_resnet50_heads():
    kept, outcome = build_resnet50("imagenet1000", "none")
    binary, _ = build_resnet50("binary", "none")
    x = torch.zeros(1, 3, 64, 64)
    kept.eval(), binary.eval()
    assert kept(x).shape == (1, 1000) and binary(x).shape == (1, 2)
    assert not outcome.pretrained


def test_missing_imagenet_weights_fall_back_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-cache"))
    model, outcome = build_resnet50("imagenet1000", "imagenet")
    assert not outcome.pretrained and "NOTICE" in outcome.notice and "from scratch" in outcome.notice
    with pytest.raises(FileNotFoundError, match="weights_strict=True: ResNet50's ImageNet weights are not in the torch cache"):
        build_resnet50("imagenet1000", "imagenet", strict=True)


def test_small_cnn_takes_any_tile_size():
    model = SmallCNN().eval()
    assert model(torch.zeros(2, 3, 96, 96)).shape == model(torch.zeros(2, 3, 128, 160)).shape == (2, 2)


def test_weights_file_is_loaded_safely_and_checked(tmp_path):
    reference = torchvision.models.resnet50()
    good = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), good)
    model, outcome = build_resnet50("imagenet1000", "imagenet", str(good))
    assert outcome.pretrained and outcome.source == str(good)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)

    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(ValueError, match="resnet18.pth is not a ResNet50 state dict: .* missing, first layer1.0.conv3.weight"):
        build_resnet50("imagenet1000", "imagenet", str(wrong))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_resnet50("imagenet1000", "imagenet", str(tmp_path / "missing.pth"))


def test_cache_file_is_found_where_torchvision_keeps_it_and_checked_against_its_name(monkeypatch, tmp_path):
    import hashlib

    import lib.weights
    from lib.models import imagenet_cache_file

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = imagenet_cache_file()
    assert path.parent == tmp_path / "checkpoints" and path.name == "resnet50-0676ba61.pth"
    path.parent.mkdir()
    torch.save(torchvision.models.resnet50().state_dict(), path)  # not torchvision's file: its hash differs from its name
    with pytest.raises(ValueError, match=r"resnet50-0676ba61.pth is corrupt, or not the file torchvision published.*make weights"):
        build_resnet50("imagenet1000", "imagenet")
    # A file whose SHA-256 matches its name, as torch.hub names what it downloads, is taken.
    named = path.parent / f"resnet50-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"
    path.rename(named)
    monkeypatch.setattr(lib.weights, "imagenet_weights", lambda: type("W", (), {"url": f"https://example.invalid/{named.name}"})())
    _, outcome = build_resnet50("imagenet1000", "imagenet")
    assert outcome.pretrained and outcome.source == str(named) and outcome.notice == ""  # the original's set-up: nothing to say
    _, outcome = build_resnet50("binary", "imagenet")
    assert outcome.pretrained and "fc head is 1000-way, the run's is 2-way" in outcome.notice


def test_what_a_network_learned_is_drawn_for_every_model_a_run_may_take():
    """The report's feature maps and Grad-CAM take the small CNN too (model=small), not the
    baseline's and ResNet50's layers only."""
    from lib.report.explain import feature_maps, grad_cam, last_conv_block

    small = SmallCNN()
    maps = feature_maps(small, torch.rand(3, 64, 64))
    assert len(maps) >= 2 and all(v.dim() == 3 for v in maps.values())
    assert grad_cam(small, torch.rand(2, 3, 64, 64), last_conv_block(small), torch.tensor([0, 1])).shape == (2, 64, 64)
    assert list(feature_maps(BaselineCNN(), torch.rand(3, 256, 256))) == ["conv1 + relu + pool", "conv2 + relu + pool", "conv3 + relu"]
