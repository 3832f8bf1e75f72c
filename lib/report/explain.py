"""What a trained network learned and looks at: its filters before and after training, feature maps
of the baseline, Grad-CAM for ResNet50."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lib.models import BaselineCNN
from lib.training.run_folder import RunFolder


@torch.inference_mode()
def baseline_feature_maps(model: BaselineCNN, tile: torch.Tensor) -> dict[str, torch.Tensor]:
    """The activations of one float tile (3, 256, 256) after each of the baseline's convolution
    stages, as the forward pass computes them: {stage name: (channels, H, W)}."""
    model.eval()
    x = tile.unsqueeze(0)
    maps = {}
    x = F.max_pool2d(F.relu(model.conv1(x)), 2)
    maps["conv1 + relu + pool"] = x[0]
    x = F.max_pool2d(F.relu(model.conv2(x)), 2)
    maps["conv2 + relu + pool"] = x[0]
    maps["conv3 + relu"] = F.relu(model.conv3(x))[0]
    return maps


@torch.inference_mode()
def feature_maps(model: nn.Module, tile: torch.Tensor) -> dict[str, torch.Tensor]:
    """The activations of one float tile (3, H, W) after each convolution stage of `model`:
    baseline_feature_maps for the original's baseline; for another network (the small CNN a run may
    be given with model=small), each convolution's output through a ReLU, in forward order.
    Returns {stage name: (channels, H', W')}."""
    if isinstance(model, BaselineCNN):
        return baseline_feature_maps(model, tile)
    model.eval()
    maps, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(lambda m, i, out, name=name: maps.__setitem__(f"{name} + relu", F.relu(out)[0])))
    try:
        model(tile.unsqueeze(0))
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def last_conv_block(model: nn.Module) -> nn.Module:
    """Where Grad-CAM looks: ResNet50's last residual block (layer4[-1]), else the network's last
    convolution. Raises ValueError for a network without one."""
    if hasattr(model, "layer4"):
        return model.layer4[-1]
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM to look at")
    return convolutions[-1]


def grad_cam(model: nn.Module, tiles: torch.Tensor, target_layer: nn.Module, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): for each float tile (N, 3, H, W), the target layer's
    activations weighted by the mean gradient of the class's output, rectified and scaled to
    [0, 1] at the tile's size. Returns (N, H, W)."""
    model.eval()
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["activations"] = output

    handle = target_layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(tiles.requires_grad_(False))
            model.zero_grad(set_to_none=True)
            logits.gather(1, classes.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
    activations = captured["activations"]
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tiles.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return (cam / peak.view(-1, 1, 1)).detach()


# ResNet50 has 53 convolutions; these show the stem and one 3x3 layer per stage.
RESNET50_SHOWN_LAYERS = ("conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2")


def filters_before_after(run_dir: str | Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(layer name, weights before training, weights after the last epoch) for the filter figures:
    every convolution of the small networks, the stem and one 3x3 layer per stage of ResNet50.
    Each weight is (out_channels, in_channels, k, k) float32, read from the run's initial.pt and last.pt."""
    folder = RunFolder(run_dir)
    before, after = folder.load_checkpoint("initial")["model"], folder.load_checkpoint("last")["model"]
    names = [k.removesuffix(".weight") for k, v in before.items() if k.endswith(".weight") and v.dim() == 4]
    if len(names) > len(RESNET50_SHOWN_LAYERS):
        names = [n for n in names if n in RESNET50_SHOWN_LAYERS]
    return [(name, before[name + ".weight"], after[name + ".weight"]) for name in names]
