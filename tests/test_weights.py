"""Pretrained weights as users hold them: the forms read, the ones refused with what to do, and the
one download (`make weights`), tested against a server on 127.0.0.1 that the test starts."""

import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch
import torchvision

from lib.models import build_resnet50
from lib.weights import WeightsFileError, download_imagenet_weights, imagenet_cache_file, load_resnet50_weights


@pytest.fixture(scope="module")
def reference():
    return torchvision.models.resnet50().state_dict()


def _loads(path, head="imagenet1000"):
    model, outcome = build_resnet50(head, "imagenet", str(path))
    return model, outcome


@pytest.mark.parametrize("wrap, said", [
    (lambda sd: sd, None),
    (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "'module.' prefix of every key removed"),
    (lambda sd: {"state_dict": sd, "epoch": 3}, "taken from the file's 'state_dict' entry"),
    (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}}, "taken from the file's 'model' entry"),
])  # fmt: skip
def test_the_forms_people_hold_are_read(tmp_path, reference, wrap, said):
    path = tmp_path / "weights.pth"
    torch.save(wrap(reference), path)
    model, outcome = _loads(path)
    assert outcome.pretrained and outcome.source == str(path)
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)
    assert (said is None and outcome.notice == "") or said in outcome.notice


def test_a_head_of_another_size_loads_the_backbone_and_says_so(tmp_path, reference):
    two_way = dict(reference) | {"fc.weight": torch.zeros(2, 2048), "fc.bias": torch.zeros(2)}
    path = tmp_path / "finetuned.pth"
    torch.save(two_way, path)
    model, outcome = _loads(path)  # the original's 1000-way head
    assert torch.equal(model.conv1.weight, reference["conv1.weight"]) and model.fc.weight.shape == (1000, 2048)
    assert "fc head is 2-way, the run's is 1000-way: the backbone was loaded and the head starts from random weights" in outcome.notice
    model, outcome = _loads(path, head="binary")  # a head that fits is kept
    assert torch.equal(model.fc.weight, two_way["fc.weight"]) and outcome.notice == ""


def test_a_whole_pickled_model_is_refused_with_how_to_save_its_weights(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet50(), path)
    with pytest.raises(WeightsFileError, match=r"whole.pth holds pickled Python objects \(torchvision.models.resnet.ResNet: a whole model.*torch.save\(model.state_dict\(\)"):
        _loads(path)


@pytest.mark.parametrize("content", [b"", b"not a torch file", "half"])
def test_a_truncated_or_corrupt_file_is_refused_by_path(tmp_path, reference, content):
    path = tmp_path / "broken.pth"
    if content == "half":
        torch.save(reference, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(WeightsFileError, match=r"broken.pth cannot be read as a PyTorch file: it is truncated or corrupt"):
        _loads(path)


def test_a_corrupt_file_in_the_torch_cache_says_delete_and_fetch_again(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    imagenet_cache_file().parent.mkdir(parents=True)
    imagenet_cache_file().write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsFileError, match=r"is corrupt, or not the file torchvision published.*fetch it again with `make weights`"):
        build_resnet50("imagenet1000", "imagenet")


def test_another_architecture_is_refused_naming_missing_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsFileError, match=r"not a ResNet50 state dict: \d+ of its \d+ backbone keys are missing, first layer1.0.conv3.weight"):
        _loads(path)
    with pytest.raises(WeightsFileError, match=r"does not hold a state dict of tensors"):
        torch.save({"epoch": 3, "lr": 0.1}, path)
        _loads(path)


def _serve(folder):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_fetches_into_the_torch_cache_with_its_hash_checked(tmp_path, monkeypatch, reference):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    served = tmp_path / "served"
    served.mkdir()
    blob = served / "tmp.pth"
    torch.save(reference, blob)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    good, bad = f"resnet50-{digest[:8]}.pth", f"resnet50-{'0' * 8 if digest[:8] != '0' * 8 else '1' * 8}.pth"
    blob.rename(served / good)
    (served / bad).write_bytes((served / good).read_bytes())
    server = _serve(served)
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        path = download_imagenet_weights(f"{url}/{good}", progress=False)
        assert path == tmp_path / "hub" / "checkpoints" / good and path.read_bytes() == (served / good).read_bytes()
        model = torchvision.models.resnet50()
        assert load_resnet50_weights(path, model).notes == []
        with pytest.raises(WeightsFileError, match="failed its hash check"):
            download_imagenet_weights(f"{url}/{bad}", progress=False)
        assert not (tmp_path / "hub" / "checkpoints" / bad).exists(), "a file that failed its check is not kept"
        path.write_bytes(path.read_bytes()[:1000])  # a cached file cut short is fetched again, not taken as done
        assert download_imagenet_weights(f"{url}/{good}", progress=False).read_bytes() == (served / good).read_bytes()
    finally:
        server.shutdown()


def test_download_offline_fails_at_once_saying_how_to_place_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    server = _serve(tmp_path)
    port = server.server_port
    server.shutdown()
    server.server_close()  # nothing listens there now: as offline as a test can be without the internet
    with pytest.raises(ConnectionError, match=r"cannot reach 127.0.0.1 .*Place the file by hand: fetch https://download.pytorch.org/.*resnet50-0676ba61.pth"):
        download_imagenet_weights(f"http://127.0.0.1:{port}/resnet50-00000000.pth", progress=False, timeout_s=5)
