"""The two networks: the original's baseline CNN, and ResNet50 with its weights policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class BaselineCNN(nn.Module):
    """The original's small CNN, exactly: three convolutions, two poolings, two linear layers with
    no activation between them. Its first linear layer fixes the input at 256x256."""

    input_size = 256

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


def imagenet_cache_file() -> Path:
    """Where torchvision keeps ResNet50's ImageNet weights (IMAGENET1K_V1, the original's
    `pretrained=True`) once downloaded; nothing is downloaded here."""
    from torchvision.models import ResNet50_Weights

    filename = ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_resnet50_state_dict(path: Path) -> dict:
    """A ResNet50 state dict from a file, loaded safely and checked against the architecture."""
    import torchvision

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint of ours rather than a bare state dict
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    expected = torchvision.models.resnet50().state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape) and not k.startswith("fc."))
    if missing or wrong:
        detail = f"missing {', '.join(missing[:5])}" if missing else f"wrong shapes for {', '.join(wrong[:5])}"
        raise ValueError(f"{path} is not a ResNet50 state dict: {detail}")
    return state


def build_resnet50(head: str = "imagenet1000", weights: str = "imagenet", weights_path: str | None = None, strict: bool = False):
    """ResNet50 and what it started from.

    head: "imagenet1000" keeps the 1000-way layer as the original did (labels 0 and 1 index its first
    two outputs); "binary" replaces it with a 2-way layer.
    weights: "imagenet" uses `weights_path` or the local torch cache when the file is there, and
    otherwise trains from scratch with a notice (or, with `strict`, fails); "none" trains from scratch.
    """
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if weights == "none":
        outcome = WeightsOutcome(False, "none asked for", "ResNet50 trains from scratch (weights='none').")
    else:
        path = Path(weights_path) if weights_path else imagenet_cache_file()
        if path.is_file():
            state = load_resnet50_state_dict(path)
            model.load_state_dict(state)
            outcome = WeightsOutcome(True, str(path), "")
        elif weights_path:
            raise FileNotFoundError(f"weights_path {weights_path} does not exist")
        elif strict:
            raise FileNotFoundError(
                f"weights_strict=True: ResNet50's ImageNet weights are not in the torch cache ({path}) and no "
                "weights_path was given. Put the file there (torchvision's resnet50-0676ba61.pth), pass "
                "weights_path, or set weights_strict=False to train from scratch with a notice."
            )
        else:
            outcome = WeightsOutcome(
                False,
                f"not found at {path}",
                f"NOTICE: ImageNet weights for ResNet50 were not found offline ({path}); this run trains "
                "from scratch, unlike the original, which started from ImageNet weights. Put the file "
                "there or pass weights_path to use them.",
            )
    if head == "binary":
        model.fc = nn.Linear(model.fc.in_features, 2)
    return model, outcome


def build_model(config) -> tuple[nn.Module, WeightsOutcome]:
    """The network a RunConfig names."""
    if config.model == "baseline":
        return BaselineCNN(), WeightsOutcome(False, "not applicable", "")
    if config.model == "small":
        return SmallCNN(), WeightsOutcome(False, "not applicable", "")
    return build_resnet50(config.head, config.weights, config.weights_path, config.weights_strict)


# ResNet50 has 53 convolutions; these show the stem and one 3x3 layer per stage.
RESNET50_SHOWN_LAYERS = ("conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2")


def filters_before_after(run_dir: str | Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(layer name, weights before training, weights after the last epoch) for the filter figures."""
    run_dir = Path(run_dir)
    before = torch.load(run_dir / "initial.pt", map_location="cpu", weights_only=True)["model"]
    after = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]
    names = [k.removesuffix(".weight") for k, v in before.items() if k.endswith(".weight") and v.dim() == 4]
    if len(names) > len(RESNET50_SHOWN_LAYERS):
        names = [n for n in names if n in RESNET50_SHOWN_LAYERS]
    return [(name, before[name + ".weight"], after[name + ".weight"]) for name in names]
