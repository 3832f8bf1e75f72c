"""The networks: the original's baseline CNN, ResNet50 with its weights policy, and a small CNN for quick checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lib.config import BASELINE_TILE
from lib.weights import imagenet_cache_file, load_resnet50_weights


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class 0 or 1 per row of `logits` (B, 2 or 1000) -> (B,) int64: the arg-max over the two
    label outputs. With the original's kept 1000-way head the other 998 outputs are never a valid
    answer, so they are not allowed to win."""
    return logits[:, :2].argmax(dim=1)


def class1_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B,) float probability of class 1 from `logits` (B, 2 or 1000): the softmax over the two label
    outputs, as predicted_labels reads them (the 1000-way head's other outputs take no share)."""
    return torch.softmax(logits[:, :2], dim=1)[:, 1]


class BaselineCNN(nn.Module):
    """The original's small CNN, exactly: three convolutions, two poolings, two linear layers with
    no activation between them. Its first linear layer fixes the input at 256x256."""

    input_size = BASELINE_TILE  # linear1's 3 * 64 * 64 inputs: two poolings of 256

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 16, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(16, 3, kernel_size=3, padding=1)
        self.linear1 = nn.Linear(3 * 64 * 64, 64)
        self.linear2 = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-3:]) != (3, self.input_size, self.input_size):
            raise ValueError(
                f"BaselineCNN takes 3x{self.input_size}x{self.input_size} tiles only (its linear1 expects "
                f"3*64*64 features); got {'x'.join(map(str, x.shape[-3:]))}"
            )
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return self.linear2(self.linear1(torch.flatten(x, 1)))


class SmallCNN(nn.Module):
    """Not in the original: four 3x3 convolution blocks with batch norm and a global average pool,
    for any tile size. About 61,000 weights; it learns real tissue in a minute or two on a CPU,
    which makes it the check that the data path teaches a network something true."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


@dataclass
class WeightsOutcome:
    """What the model actually started from; recorded in the run's results and shown to the user."""

    pretrained: bool
    source: str  # a file path, or why there was none
    notice: str  # "" when the run does what the original did
    notes: str = ""  # what was done to the file's contents (unwrapped, prefixes removed, head left out)


def build_resnet50(head: str = "imagenet1000", weights: str = "imagenet", weights_path: str | None = None, strict: bool = False):
    """ResNet50 and what it started from (lib/weights.py reads and checks the file).

    head: "imagenet1000" keeps the 1000-way layer as the original did (labels 0 and 1 index its first
    two outputs); "binary" replaces it with a 2-way layer.
    weights: "imagenet" uses `weights_path`, or else torchvision's ImageNet file when it is in the
    local torch cache, and otherwise trains from scratch with a notice (or, with `strict`, raises
    FileNotFoundError); "none" trains from scratch. A weights_path that does not exist raises
    FileNotFoundError; an unusable file raises lib.weights.WeightsFileError.
    """
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if head == "binary":
        model.fc = nn.Linear(model.fc.in_features, 2)
    if weights == "none":
        return model, WeightsOutcome(False, "none asked for", "ResNet50 trains from scratch (weights='none').")
    path = Path(weights_path).expanduser() if weights_path else imagenet_cache_file()
    if path.is_file() or weights_path:
        loaded = load_resnet50_weights(path, model, in_cache=not weights_path)
        model.load_state_dict(loaded.state)
        notes = "; ".join(loaded.notes)
        return model, WeightsOutcome(True, str(path), f"Pretrained weights from {path}: {notes}." if notes else "", notes)
    if strict:
        raise FileNotFoundError(
            f"weights_strict=True: ResNet50's ImageNet weights are not in the torch cache ({path}) and no "
            "weights_path was given. Run `make weights` to download them, put the file there by hand "
            f"(torchvision's {path.name}), pass weights_path, or set weights_strict=False to train from scratch with a notice."
        )
    return model, WeightsOutcome(
        False,
        f"not found at {path}",
        f"NOTICE: ImageNet weights for ResNet50 were not found offline ({path}); this run trains "
        "from scratch, unlike the original, which started from ImageNet weights. `make weights` "
        "downloads them; or pass weights_path (make run-all WEIGHTS=/path/to/file.pth).",
    )


def build_model(config) -> tuple[nn.Module, WeightsOutcome]:
    """The network a RunConfig names."""
    if config.model == "baseline":
        return BaselineCNN(), WeightsOutcome(False, "not applicable", "")
    if config.model == "small":
        return SmallCNN(), WeightsOutcome(False, "not applicable", "")
    return build_resnet50(config.head, config.weights, config.weights_path, config.weights_strict)
