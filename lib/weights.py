"""ResNet50's pretrained weights: where they are found, how a file is read and checked, and the one
command that downloads them (`make weights`). Nothing else in the workbook downloads anything.

A weights file is read with `torch.load(..., weights_only=True)` in the forms people hold: a bare
state dict, one saved from DataParallel/DDP (`module.` prefixes), one wrapped as `{"state_dict": ...}`
or `{"model": ...}` (a checkpoint of this workbook too), and one whose `fc` is not the head the run
builds (the backbone is loaded, the head starts fresh, and the run says so).

    python -m lib.weights download      # torchvision's IMAGENET1K_V1 file into the torch cache
"""

from __future__ import annotations

import hashlib
import pickle
import re
import socket
import sys
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

# torchvision's ResNet50 ImageNet weights, IMAGENET1K_V1: the original's `pretrained=True`.
WEIGHTS_ENUM = "ResNet50_Weights.IMAGENET1K_V1"


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message names the file and what to do."""


def imagenet_weights():
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1


def imagenet_cache_file() -> Path:
    """Where torchvision keeps ResNet50's ImageNet weights once downloaded
    (`<torch hub dir>/checkpoints/resnet50-0676ba61.pth`; TORCH_HOME moves it). Nothing is downloaded here."""
    return Path(torch.hub.get_dir()) / "checkpoints" / imagenet_weights().url.rsplit("/", 1)[-1]


def check_cached_file(path: Path) -> None:
    """torch.hub names a file it downloads by the first hex digits of its SHA-256 (its HASH_REGEX,
    `-([a-f0-9]*)\\.`); a file in the cache whose content does not match its name is corrupt or was
    put there by someone else, and is not torchvision's weights. Raises WeightsFileError then."""
    named = re.search(r"-([a-f0-9]+)\.", path.name)
    if not named:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(named.group(1)):
        raise WeightsFileError(f"{path} is corrupt, or not the file torchvision published: its SHA-256 begins {digest.hexdigest()[:8]}, "
                               f"its name says {named.group(1)}. Delete it and fetch it again with `make weights`; to start from "
                               "weights of your own, pass them as weights_path instead")  # fmt: skip


@dataclass
class LoadedWeights:
    state: dict  # parameter name -> tensor, ready for load_state_dict (with the head when it fits)
    notes: list[str]  # what was done to the file's contents, in words (unwrapped, prefixes removed, head left out)


def _read(path: Path, in_cache: bool) -> object:
    mend = ("delete it and fetch it again with `make weights`" if in_cache
            else "save it again, or copy it again if it came from elsewhere")  # fmt: skip
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:  # a real pickle of Python objects, which weights_only refuses by design
            raise WeightsFileError(
                f"{path} holds pickled Python objects ({found.group(1)}: a whole model, or a checkpoint with objects in it), "
                "which weights_only loading refuses because unpickling can run code. Where the model was built, save "
                "its weights alone: torch.save(model.state_dict(), 'resnet50.pth'), and pass that file (weights_path)."
            ) from None
        raise WeightsFileError(f"{path} cannot be read as a PyTorch file: it is truncated or corrupt (not a pickle torch can read); {mend}") from None
    except (RuntimeError, EOFError, KeyError, OSError) as error:
        raise WeightsFileError(f"{path} cannot be read as a PyTorch file: it is truncated or corrupt "
                               f"({type(error).__name__}: {str(error)[:120] or 'empty file'}); {mend}") from None  # fmt: skip


def _unwrap(content: object, path: Path, notes: list[str]) -> dict:
    """The state dict inside the forms training scripts save."""
    if isinstance(content, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            inner = content.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                notes.append(f"state dict taken from the file's {key!r} entry")
                content = inner
                break
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        found = type(content).__name__ + (f" with keys {', '.join(map(str, list(content)[:5]))}" if isinstance(content, dict) else "")
        raise WeightsFileError(f"{path} does not hold a state dict of tensors (found {found}); save model.state_dict() to a file and pass that")
    for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP, torch.compile
        if all(k.startswith(prefix) for k in content):
            content = {k.removeprefix(prefix): v for k, v in content.items()}
            notes.append(f"the {prefix!r} prefix of every key removed (saved from {'DataParallel/DDP' if prefix == 'module.' else 'a compiled model'})")
    return content


def load_resnet50_weights(path: str | Path, model: torch.nn.Module, in_cache: bool = False) -> LoadedWeights:
    """Read `path` and check it against `model` (a torchvision ResNet50, with the head the run
    builds). The backbone must match key for key and shape for shape; the `fc` head is kept when
    its shape fits `model`'s and left out otherwise (the head then starts fresh, said in `notes`).

    Raises FileNotFoundError (no such file) or WeightsFileError: pickled objects (how to save a
    state dict instead), truncated or corrupt (for the torch cache: delete and `make weights`),
    another architecture (its first missing keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {path} does not exist")
    if in_cache:
        check_cached_file(path)
    notes: list[str] = []
    state = _unwrap(_read(path, in_cache), path, notes)
    expected = model.state_dict()
    backbone = [k for k in expected if not k.startswith("fc.")]
    missing = [k for k in backbone if k not in state]
    if missing:
        others = [k for k in state if k not in expected]
        raise WeightsFileError(f"{path} is not a ResNet50 state dict: {len(missing)} of its {len(backbone)} backbone keys are missing, "
                               f"first {', '.join(missing[:5])}" + (f"; the file has keys such as {', '.join(others[:5])}" if others else ""))  # fmt: skip
    wrong = [k for k in backbone if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise WeightsFileError(f"{path} is not a ResNet50 state dict: wrong shapes for {', '.join(wrong[:5])} "
                               f"(file {tuple(state[wrong[0]].shape)}, ResNet50 {tuple(expected[wrong[0]].shape)})")  # fmt: skip
    loaded = {k: state[k] for k in backbone}
    head_shape = tuple(state["fc.weight"].shape) if "fc.weight" in state else None
    if head_shape == tuple(expected["fc.weight"].shape) and "fc.bias" in state:
        loaded |= {"fc.weight": state["fc.weight"], "fc.bias": state["fc.bias"]}
    else:
        found = f"is {head_shape[0]}-way" if head_shape else "is missing"
        notes.append(f"the file's fc head {found}, the run's is {expected['fc.weight'].shape[0]}-way: the backbone was "
                     "loaded and the head starts from random weights")  # fmt: skip
        loaded |= {k: expected[k] for k in ("fc.weight", "fc.bias")}
    return LoadedWeights(state=loaded, notes=notes)


def download_imagenet_weights(url: str | None = None, progress: bool = True, timeout_s: float = 15.0) -> Path:
    """Fetch ResNet50's ImageNet weights into the torch cache through torch.hub's
    `load_state_dict_from_url` (the call torchvision's weights API makes), with its progress bar and
    its hash check (the file name carries the first digits of its SHA-256). `url`: the enum's own by
    default (a test passes a server on 127.0.0.1). Returns the cached file.

    Raises ConnectionError, naming the host and how to place the file by hand, when the host cannot
    be reached within `timeout_s`; WeightsFileError when the download fails its hash check."""
    url = url or imagenet_weights().url
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    by_hand = (f"Place the file by hand: fetch {imagenet_weights().url} on a machine with internet and copy it to {imagenet_cache_file()} "
               "(or pass it as weights_path / make run-all WEIGHTS=/path/to/file.pth)")  # fmt: skip
    if target.is_file():
        try:
            check_cached_file(target)
            print(f"already in the torch cache, and its SHA-256 matches its name: {target}")
            return target
        except WeightsFileError as error:
            print(f"{error}\nFetching it again.")
            target.unlink()
    host = urllib.parse.urlsplit(url)
    try:  # fail at once offline, instead of waiting on the download's own unbounded connect
        socket.create_connection((host.hostname, host.port or (443 if host.scheme == "https" else 80)), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach {host.hostname} to download ResNet50's ImageNet weights ({error}). {by_hand}") from None
    try:
        torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except RuntimeError as error:
        if "hash" in str(error):
            raise WeightsFileError(f"the download from {url} failed its hash check ({error}); nothing was kept. Try again, or: {by_hand}") from None
        raise
    except urllib.error.URLError as error:
        raise ConnectionError(f"downloading {url} failed ({error}). {by_hand}") from None
    print(f"downloaded to {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["download"]:
        print("usage: python -m lib.weights download   (ResNet50's ImageNet weights into the torch cache)", file=sys.stderr)
        return 2
    try:
        download_imagenet_weights()
    except (ConnectionError, WeightsFileError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
