"""One validated config per run, built from the registry and a notebook's parameters."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from lib import registry
from lib.paths import DEFAULT_DATA_DIR, RUNS_DIR, TILE_CACHE_DIR, resolve

MODELS = ("baseline", "resnet50", "small")
HEADS = ("imagenet1000", "binary")
WEIGHTS = ("imagenet", "none")
SCHEDULERS = ("none", "plateau")
SPLITS = ("auto", "random", "grouped")
INPUT_PIPELINES = ("tensor", "original")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs. Units in the comments."""

    run: str  # the registry's name of the run; also its folder under runs_dir
    title: str
    model: str  # "baseline" or "resnet50" (the original's), or "small" (a fast CNN for quick checks)
    epochs: int
    batch_size: int  # tiles per optimizer step; validation uses the same size with drop_last
    augment: bool  # the original's rotation, flips and random crop on training tiles
    scheduler: str  # "none" or "plateau" (ReduceLROnPlateau on the summed validation loss)
    lr: float = 1e-3  # Adam's learning rate
    crop_size: int = 0  # pixels, only with augment; 0 follows the tile: round(tile_size * 200/256), the original's 200 of 256
    tile_size: int = 0  # pixels per side; 0 = the data set's own when all its tiles share one, else 256 (the baseline: 256, resized)
    head: str = "imagenet1000"  # ResNet50: the original's kept 1000-way head, or "binary" (2-way)
    weights: str = "imagenet"  # ResNet50: "imagenet" when found offline (else from scratch, said so), or "none"
    weights_path: str | None = None  # a ResNet50 ImageNet state-dict file to use instead of the torch cache
    weights_strict: bool = False  # True: fail when the ImageNet weights are not found, instead of training from scratch
    subset: int = 0  # labelled tiles drawn (seeded) before the split; 0 for all
    valid_fraction: float = 0.1
    split: str = "auto"  # "auto" (grouped when the data names groups), "random" (the original's) or "grouped"
    data_dir: str = str(DEFAULT_DATA_DIR)  # a folder in any supported layout, or a path,label[,group] CSV file
    positive_class: str = ""  # class-folder data sets: the folder labelled 1 ("" = the second alphabetically, stated)
    skip_bad_images: bool = False  # leave out unreadable image files (counted in the record) instead of stopping
    cache_dir: str = str(TILE_CACHE_DIR)  # decoded tiles kept between runs; "" to decode every time
    runs_dir: str = str(RUNS_DIR)
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    input_pipeline: str = "tensor"  # "tensor": decoded tiles, batches augmented on the device; "original": files + PIL per image
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on the CPU), "fp32" or "bf16"
    compile: bool = False  # torch.compile the model (minutes of compiling; pays off on long GPU runs)
    loader_workers: int = 0  # DataLoader processes for input_pipeline="original"
    seed: int = 0
    resume: bool = False  # continue from runs_dir/<run>/last.pt when it was written with this config
    checkpoint_every_s: float = 60.0  # seconds: last.pt after the first epoch, then at most this often, and after the last; 0: every epoch
    profile: str = "full"  # the profile the registry values came from
    profile_reason: str = ""  # why that profile (for the run's record)
    notebook: str = ""
    order: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def resolve_profile(profile: str) -> tuple[str, str]:
    """The profile to use and why: `auto` means `full` on CUDA, `quick` otherwise."""
    if profile != "auto":
        return profile, f"profile {profile!r} asked for"
    import torch

    if torch.cuda.is_available():
        return "full", f"profile 'auto' chose 'full': CUDA device {torch.cuda.get_device_name(0)} found"
    return "quick", "profile 'auto' chose 'quick': no CUDA device, so the CPU-sized subset and epochs are used"


def _check_type(name: str, value, expected_type) -> None:
    allowed = expected_type if isinstance(expected_type, tuple) else (expected_type,)
    # bool is an int in Python, but epochs=True is a mistake, not a number.
    if isinstance(value, bool) and bool not in allowed:
        raise TypeError(f"parameter {name}={value!r} should be {expected_type}, not a bool")
    if not isinstance(value, allowed):
        raise TypeError(f"parameter {name}={value!r} should be of type {' or '.join(t.__name__ for t in allowed)}")


_TYPES = {
    "run": str, "title": str, "model": str, "epochs": int, "batch_size": int, "augment": bool,
    "scheduler": str, "lr": (float, int), "crop_size": int, "tile_size": int, "head": str, "weights": str,
    "weights_path": (str, type(None)), "weights_strict": bool, "subset": int, "valid_fraction": float, "split": str,
    "data_dir": (str, Path), "positive_class": str, "skip_bad_images": bool, "cache_dir": (str, Path),
    "runs_dir": (str, Path), "device": str, "input_pipeline": str, "precision": str,
    "compile": bool, "loader_workers": int, "seed": int, "resume": bool, "checkpoint_every_s": (float, int), "profile": str, "profile_reason": str,
    "notebook": str, "order": int,
}  # fmt: skip


def run_config(run: str, profile: str = "auto", **overrides) -> RunConfig:
    """The config of a registry run in a profile; `overrides` (None meaning "the registry's value")
    come from a notebook's parameters cell. Unknown names and wrong types fail here, by name."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}")
    chosen, reason = resolve_profile(profile)
    values = registry.run_parameters(run, chosen)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update(run=run, profile=chosen, profile_reason=reason)
    for name, value in values.items():
        if name not in fields:
            raise TypeError(f"registry key {name!r} of run {run!r} is not a config field; accepted: {', '.join(sorted(fields))}")
        _check_type(name, value, _TYPES[name])
    values["lr"] = float(values["lr"])
    values["data_dir"] = str(resolve(values.get("data_dir", DEFAULT_DATA_DIR)))
    values["runs_dir"] = str(resolve(values.get("runs_dir", RUNS_DIR)))
    if values.get("cache_dir", None) not in (None, ""):
        values["cache_dir"] = str(resolve(values["cache_dir"]))
    config = RunConfig(**values)
    _validate(config)
    return config


def _validate(config: RunConfig) -> None:
    for name, allowed in (("model", MODELS), ("head", HEADS), ("weights", WEIGHTS), ("scheduler", SCHEDULERS), ("split", SPLITS),
                          ("input_pipeline", INPUT_PIPELINES), ("precision", PRECISIONS)):
        if getattr(config, name) not in allowed:
            raise ValueError(f"parameter {name}={getattr(config, name)!r} is not one of {', '.join(allowed)}")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"parameter {name}={getattr(config, name)} must be at least 1")
    if config.model == "baseline" and config.tile_size not in (0, 256):
        raise ValueError(f"parameter tile_size={config.tile_size}: the baseline CNN takes 256x256 tiles only (its first linear layer "
                         "is sized for them); leave tile_size at 0 and it resizes to 256")  # fmt: skip
    # crop_size against the tile is checked where the tile size is known (lib/data.py, crop_for).
    if config.augment and config.tile_size and config.crop_size > config.tile_size:
        raise ValueError(f"parameter crop_size={config.crop_size} is larger than tile_size={config.tile_size}")
    if 0 < config.tile_size < 16 or config.tile_size < 0:
        raise ValueError(f"parameter tile_size={config.tile_size} must be 0 (the data set's own) or at least 16 pixels")
    if config.crop_size < 0:
        raise ValueError(f"parameter crop_size={config.crop_size} must be 0 (follows the tile) or a positive number of pixels")
    if config.loader_workers < 0:
        raise ValueError(f"parameter loader_workers={config.loader_workers} must be 0 or more")
    if config.subset < 0:
        raise ValueError(f"parameter subset={config.subset} must be 0 (all tiles) or a positive count")
    if not 0 < config.valid_fraction < 1:
        raise ValueError(f"parameter valid_fraction={config.valid_fraction} must lie strictly between 0 and 1")
    if config.lr <= 0:
        raise ValueError(f"parameter lr={config.lr} must be positive")
    if config.checkpoint_every_s < 0:
        raise ValueError(f"parameter checkpoint_every_s={config.checkpoint_every_s} must be 0 (every epoch) or more seconds")
