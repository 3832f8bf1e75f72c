"""One validated config per run, built from the registry and a notebook's parameters."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from lib import registry
from lib.paths import DEFAULT_DATA_DIR, RUNS_DIR, TILE_CACHE_DIR, resolve

MODELS = ("baseline", "resnet50", "small")
ORIGINAL_CROP = (200, 256)  # pixels: the original cropped 200 of 256; a crop follows its tile in that ratio unless set
BASELINE_TILE = 256  # pixels: the baseline CNN's first linear layer fixes its input at 256x256 (lib/models.py)
HEADS = ("imagenet1000", "binary")
WEIGHTS = ("imagenet", "none")
# The fields that choose ResNet50's head and starting weights: a network without pretrained weights is the same run whatever they say.
PRETRAINED_FIELDS = ("head", "weights", "weights_path", "weights_strict")
SCHEDULERS = ("none", "plateau")
SPLITS = ("auto", "random", "grouped")
INPUT_PIPELINES = ("tensor", "original")
PRECISIONS = ("auto", "fp32", "bf16")
MULTI_PAGES = ("refuse", "first", "largest")  # what to do with a file holding several images (multi-page TIFF, animated GIF)
NON_SQUARES = ("crop", "pad")  # how a tile that is not square becomes square before resizing; never squashed
STAIN_NORMALIZERS = ("none", "macenko", "reinhard")  # lib/data/stain.py


def original_crop(tile_size: int) -> int:
    """The crop that follows a tile of `tile_size` pixels in the original's ratio (200 of 256; 75 of 96)."""
    return round(tile_size * ORIGINAL_CROP[0] / ORIGINAL_CROP[1])


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one training run takes: the one declaration of the workbook's run parameters.

    Each field below is settable (except IDENTITY_FIELDS) from a run notebook's parameters cell,
    papermill (-p/-r/-y), `make run-all NAME=value` or `SET="name=value ..."`, and the pipeline's
    command line; its type here is the one every value is converted to and checked against, and its
    comment (meaning, unit) is what the notebooks' generated parameters cells show."""

    # The data
    data_dir: str = str(DEFAULT_DATA_DIR)  # a folder in any supported layout, or a path,label[,group] CSV file (relative: from the project root)
    positive_class: str = ""  # class-folder data sets: the folder labelled 1 (empty: the second alphabetically, stated)
    class_map: str = ""  # class-folder data sets: folders at any level mapped to labels, each folder name, an equals sign and 0 or 1 (1 is cancer), comma-separated (README); images in folders it leaves out are left out, stated; empty: two class folders
    group_level: int = 0  # class-folder data sets: the folder level naming each image's patient or slide, 1, 2, ... down from the class folder or -1, -2, ... up from the image (-1: its own folder; -2 in <patient>/<class>/<image>: the patient); 0: no groups
    skip_bad_images: bool = False  # True: leave out unreadable image files (counted in the record) instead of stopping
    multi_page: str = "refuse"  # a file holding several images (multi-page TIFF, animated GIF): "refuse" (listed by name before training), "first" (its first image; a pyramid's full resolution) or "largest" (the most pixels)
    # crop by default, as torchvision's Resize + CenterCrop: every pixel is tissue at one scale. White bands (pad) mark
    # the non-square tiles, and where tile shapes differ between classes or sources the network can learn the bands.
    non_square: str = "crop"  # a tile that is not square (BreakHis's 700x460): "crop" (centre-cropped to its shorter side, then resized; the sides are lost) or "pad" (padded to square with white, a slide's background, then resized; the whole tile kept). Never squashed
    subset: int = 0  # labelled tiles drawn (seeded) before the split; 0 for all
    valid_fraction: float = 0.1  # share of the labelled tiles that validate (0 < f < 1)
    split: str = "auto"  # "auto" (grouped when the data names groups), "random" (the original's) or "grouped"
    tile_size: int = 0  # pixels: tiles are brought to tile_size x tile_size; 0: the data set's own size when all its tiles share one, else 256 (the baseline takes 256 only and resizes to it)
    cache_dir: str = str(TILE_CACHE_DIR)  # decoded tiles kept between runs; "" to decode every time
    # The run
    profile: str = "auto"  # "auto" (full with CUDA, quick without), "full" or "quick"; the config records the one used
    epochs: int  # passes over the training tiles
    batch_size: int  # tiles per optimizer step; validation uses the same size with drop_last
    lr: float = 1e-3  # Adam's learning rate
    scheduler: str  # "none" or "plateau" (ReduceLROnPlateau on the summed validation loss)
    augment: bool  # the original's rotation, flips and random crop on training tiles
    crop_size: int = 0  # pixels, the random crop when augmenting; 0 follows the tile: round(tile_size * 200/256), the original's 200 of 256 (the baseline: no crop)
    # Stain colour (lib/data/stain.py). HED augmentation as Tellez et al. 2018 (IEEE TMI) and 2019 (MedIA): alpha ~ U[1-s1, 1+s1]
    # scales and beta ~ U[-s2, s2] shifts each stain channel, in scikit-image's rgb2hed units (optical density / 13.8). In
    # those units a shift of 0.05 already turns some tiles orange, green or white (notebook 05 draws them): shifts stay small.
    hed_scale: float = 0.0  # HED colour augmentation of training batches: each image's haematoxylin, eosin and DAB channels scaled by its own draw in [1 - hed_scale, 1 + hed_scale]; 0: off; below 1 (resnet50-stain: 0.2)
    hed_shift: float = 0.0  # HED colour augmentation of training batches: each stain channel shifted by a draw in [-hed_shift, hed_shift], scikit-image's stain units (optical density / 13.8); 0: off; below 1 (resnet50-stain: 0.02)
    stain_normalize: str = "none"  # "none", "macenko" (Macenko et al. 2009) or "reinhard" (Reinhard et al. 2001, in CIELAB): every tile's stain brought to one target once, when decoded, and cached apart from raw tiles; the evaluation brings the test tiles to the same target (runs/<run>/stain_target.json)
    stain_reference: str = ""  # an image file whose stain the tiles are normalised to (relative: from the project root); empty: a target fitted on up to 256 of the run's training tiles (seeded), never on validation or test tiles
    seed: int = 0  # every random draw (split, order, augmentation, initial weights) follows it
    # The network
    model: str  # "baseline" or "resnet50" (the original's), or "small" (a fast CNN for quick checks)
    head: str = "imagenet1000"  # ResNet50: the original's kept 1000-way head, or "binary" (2-way)
    weights: str = "imagenet"  # ResNet50: "imagenet" when found offline (else from scratch, said so), or "none"
    weights_path: str | None = None  # a ResNet50 state-dict file (.pth) to start from instead of the torch cache's ImageNet file
    weights_strict: bool = False  # True: fail when the ImageNet weights are not found, instead of training from scratch
    # Where and how fast
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on the CPU), "fp32" or "bf16"
    compile: bool = False  # True: torch.compile the model (minutes of compiling; pays off on long GPU runs)
    input_pipeline: str = "tensor"  # "tensor": decoded tiles, batches augmented on the device; "original": files + PIL per image
    loader_workers: int = 0  # DataLoader processes for the "original" input pipeline
    nproc_per_node: int = 1  # processes that train this run together under torchrun with DistributedDataParallel, one per GPU (nccl), or sharing the cores on a CPU (gloo); batch_size stays the global batch; 1: one process, no torchrun
    # Its folder
    runs_dir: str = str(RUNS_DIR)  # where runs/<run>/ is written (relative: from the project root)
    resume: bool = False  # True: continue from runs_dir/<run>/last.pt when it was written with this config
    fresh: bool = False  # True: discard what runs_dir/<run>/ holds and train from the beginning
    checkpoint_every_s: float = 60.0  # seconds: last.pt after the first epoch, then at most this often, and after the last; 0: every epoch
    title: str  # the run's heading in its notebook and the report
    # Its identity: set by the registry and run_config, never by a user
    run: str  # the registry's name of the run; also its folder under runs_dir
    notebook: str = ""  # the run's notebook in notebooks/
    order: int = 0  # its place in the original's sequence
    profile_reason: str = ""  # why that profile (for the run's record)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run


def resolve_profile(profile: str) -> tuple[str, str]:
    """The profile to use and why: `auto` means `full` on CUDA, `quick` otherwise."""
    if profile != "auto":
        return profile, f"profile {profile!r} asked for"
    import torch

    if torch.cuda.is_available():
        return "full", f"profile 'auto' chose 'full': CUDA device {torch.cuda.get_device_name(0)} found"
    return "quick", "profile 'auto' chose 'quick': no CUDA device, so the CPU-sized subset and epochs are used"


class ParameterError(ValueError):
    """A parameter name the workbook does not know; the message names the accepted ones."""


# Fields a run's identity fixes (the registry's entry and run_config set them); every other field
# is a parameter a user may set.
IDENTITY_FIELDS = ("run", "notebook", "order", "profile_reason")
TRUE_TEXTS, FALSE_TEXTS = ("true", "1", "yes"), ("false", "0", "no")


@functools.cache
def field_types() -> dict[str, object]:
    """Each RunConfig field's declared type (str, int, float, bool or str | None), read from the
    dataclass itself: the one table every conversion and check uses."""
    return typing.get_type_hints(RunConfig)


@functools.cache
def field_comments() -> dict[str, str]:
    """Each field's comment in the declaration above (its meaning and unit), for the notebooks'
    generated parameters cells."""
    comments = {}
    for line in inspect.getsource(RunConfig).splitlines():
        match = re.match(r"\s+(\w+): [^=#]+(?:=[^#]*)?(?:#\s*(.*))?$", line)
        if match and match.group(1) in field_types():
            comments[match.group(1)] = (match.group(2) or "").strip()
    return comments


def settable_fields() -> list[str]:
    """The RunConfig fields a user may set, in declaration order."""
    return [f.name for f in dataclasses.fields(RunConfig) if f.name not in IDENTITY_FIELDS]


def _type_name(kind) -> str:
    return " or ".join(getattr(t, "__name__", str(t)) for t in typing.get_args(kind)) if typing.get_args(kind) else kind.__name__


def convert(name: str, value):
    """`value` as field `name`'s declared type. Text (from make, `papermill -r`, or a CLI) is
    converted by the type: "3" for an int, "true"/"false"/"1"/"0" for a bool, "None" or "" for an
    optional field. Typed values are taken only where nothing is lost: an int for a float, any
    number for a str (papermill's `-p positive_class 1` arrives as the int 1 and means "1"); a float
    for an int (`-p epochs 3.0`) is refused.

    Raises ParameterError for a name that is no settable field (naming the accepted ones) and TypeError
    for a value its type cannot take (naming the field and its type)."""
    types = field_types()
    if name not in types or name in IDENTITY_FIELDS:
        raise ParameterError(unknown_names_message([name]))
    kind = types[name]
    optional = type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    refused = TypeError(f"parameter {name}={value!r} should be {_type_name(kind)}"
                        + (" (a whole number)" if base is int else "") + f", not {type(value).__name__}")  # fmt: skip
    if value is None or (optional and isinstance(value, str) and value.strip() in ("", "None")):
        if optional:
            return None
        raise refused
    if isinstance(value, Path):
        value = str(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE_TEXTS + FALSE_TEXTS:
            return value.strip().lower() in TRUE_TEXTS
        raise TypeError(f"{refused}: write {' or '.join(TRUE_TEXTS)} for True, {' or '.join(FALSE_TEXTS)} for False")
    if isinstance(value, bool):  # bool is an int in Python, but epochs=True is a mistake, not a number
        raise refused
    if base is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise refused
    if base is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise refused from None
        raise refused
    if isinstance(value, (str, int, float)):
        return str(value)
    raise refused


def unknown_names_message(names, where: str = "") -> str:
    return (f"unknown parameter(s) {', '.join(sorted(names))}{where}; accepted: {', '.join(settable_fields())} "
            "(lib/config.py's RunConfig declares each with its meaning)")  # fmt: skip


def run_config(run: str, profile: str | None = "auto", **user) -> RunConfig:
    """The config of registry run `run`. Precedence, lowest first: RunConfig's defaults, the
    registry's [defaults], the run's own entry, its profile's overrides, then `user` (from a
    notebook's parameters cell, papermill or make; None means "not set"). `profile` "auto" means
    full with CUDA, quick without.

    Raises KeyError (unknown run), ParameterError (unknown parameter, naming the accepted ones), TypeError (a value its
    field's type cannot take) or ValueError (a value out of range), each naming the parameter."""
    user = {name: value for name, value in user.items() if value is not None}
    unknown = [name for name in user if name not in settable_fields()]
    if unknown:
        raise ParameterError(unknown_names_message(unknown))
    user = {name: convert(name, value) for name, value in user.items()}
    user.pop("profile", None)
    chosen, reason = resolve_profile(profile or "auto")
    values = registry.run_parameters(run, chosen)
    for name, value in values.items():
        if name not in field_types():
            raise ParameterError(f"registry key {name!r} of run {run!r} is not a RunConfig field; accepted: {', '.join(settable_fields())}")
        values[name] = convert(name, value) if name not in IDENTITY_FIELDS else value
    values.update(user)
    values.update(run=run, profile=chosen, profile_reason=reason)
    values["data_dir"] = str(resolve(values.get("data_dir", DEFAULT_DATA_DIR)))
    values["runs_dir"] = str(resolve(values.get("runs_dir", RUNS_DIR)))
    for name in ("cache_dir", "stain_reference"):
        if values.get(name, None) not in (None, ""):
            values[name] = str(resolve(values[name]))
    config = RunConfig(**values)
    _validate(config)
    return config


# Names a Jupyter kernel defines on its own; never parameters.
_KERNEL_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
_PLAIN = (str, int, float, bool, list, dict, tuple, type(None), Path)


def notebook_parameters(namespace: dict, accepted=None) -> dict:
    """The parameters a notebook's kernel holds (pass its `globals()`): every accepted name found in
    it (default: the settable RunConfig fields), None meaning "not set". Papermill only warns about a
    parameter the notebook does not declare and runs on without it; here any other plain value
    (str, number, bool, list, dict, None) under a public name is such a parameter, and fails.

    Raises ParameterError naming the unknown names and the accepted ones."""
    accepted = list(accepted) if accepted is not None else settable_fields()
    unknown = [name for name, value in namespace.items()
               if not name.startswith("_") and name not in accepted and name not in _KERNEL_NAMES and isinstance(value, _PLAIN)]  # fmt: skip
    if unknown:
        if accepted == settable_fields():
            raise ParameterError(unknown_names_message(unknown, " given to this notebook"))
        raise ParameterError(f"unknown parameter(s) {', '.join(sorted(unknown))} given to this notebook; accepted: {', '.join(accepted)}")
    return {name: namespace[name] for name in accepted if name in namespace}


PARAMETERS_CELL_HEAD = """\
# Parameters: every field of RunConfig (lib/config.py), this cell generated from it (`python -m lib.config`).
# None means "not set": the value comes from RunConfig's default < registry.toml's [defaults] < this run's
# entry < its profile's overrides < what is set here, by papermill (-p, -r, -y) or by make (NAME=value, SET=...).
"""


def parameters_cell_source() -> str:
    """The parameters cell of every run notebook: each settable field as `name = None  # meaning`.
    (Papermill's parser cannot read a line whose comment holds "=", so no field comment may.)"""
    lines = [f"{name} = None  # {field_comments().get(name, '')}".rstrip(" #") for name in settable_fields()]
    return PARAMETERS_CELL_HEAD + "\n".join(lines)


def write_parameters_cells(notebooks) -> list[Path]:
    """Rewrite each notebook's cell tagged `parameters` to parameters_cell_source(); returns the
    notebooks that changed (outputs are never written: committed notebooks carry none)."""
    import nbformat

    changed = []
    for path in notebooks:
        notebook = nbformat.read(str(path), as_version=4)
        cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
        if cell.source != parameters_cell_source():
            cell.source = parameters_cell_source()
            nbformat.write(notebook, str(path))
            changed.append(Path(path))
    return changed


def validated(config: RunConfig) -> RunConfig:
    """`config` once its values pass the checks run_config makes (ValueError naming the parameter)."""
    _validate(config)
    return config


def _validate(config: RunConfig) -> None:
    for name, allowed in (("model", MODELS), ("head", HEADS), ("weights", WEIGHTS), ("scheduler", SCHEDULERS), ("split", SPLITS),
                          ("input_pipeline", INPUT_PIPELINES), ("precision", PRECISIONS), ("multi_page", MULTI_PAGES),
                          ("non_square", NON_SQUARES), ("stain_normalize", STAIN_NORMALIZERS)):
        if getattr(config, name) not in allowed:
            raise ValueError(f"parameter {name}={getattr(config, name)!r} is not one of {', '.join(allowed)}")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"parameter {name}={getattr(config, name)} must be at least 1")
    side = BASELINE_TILE
    if config.model == "baseline" and config.tile_size not in (0, side):
        raise ValueError(f"parameter tile_size={config.tile_size}: the baseline CNN takes {side}x{side} tiles only (its first linear layer "
                         f"is sized for them); leave tile_size at 0 and it resizes to {side}")  # fmt: skip
    if config.model == "baseline" and config.augment and config.crop_size not in (0, side):
        raise ValueError(f"parameter crop_size={config.crop_size} with augment=True would crop the baseline's tiles, but the baseline "
                         f"CNN takes {side}x{side} tiles only: leave crop_size at 0 (for the baseline: rotation and flips, no crop), "
                         "or augment=False")  # fmt: skip
    if 0 < config.tile_size < 16 or config.tile_size < 0:  # before the crop, which a bad tile size makes look wrong
        raise ValueError(f"parameter tile_size={config.tile_size} must be 0 (the data set's own) or at least 16 pixels")
    # crop_size against tile_size 0 is checked where the data's tile size is known (lib/data/, crop_for).
    if config.augment and config.tile_size and config.crop_size > config.tile_size:
        follows = original_crop(config.tile_size)
        raise ValueError(f"parameter crop_size={config.crop_size} is larger than tile_size={config.tile_size} for {config.run}: set "
                         f"crop_size to at most {config.tile_size} (crop_size=0 follows the tile: {follows}), or tile_size to at "
                         f"least {config.crop_size}")  # fmt: skip
    if config.crop_size < 0:
        raise ValueError(f"parameter crop_size={config.crop_size} must be 0 (follows the tile) or a positive number of pixels")
    if config.nproc_per_node < 1:
        raise ValueError(f"parameter nproc_per_node={config.nproc_per_node} must be at least 1 (1: one process; N: N processes under torchrun)")
    if config.batch_size < config.nproc_per_node:
        raise ValueError(f"parameter batch_size={config.batch_size} is smaller than nproc_per_node={config.nproc_per_node}: each batch is "
                         "shared among the processes, and every process needs at least one tile of it. Use a batch_size of at least "
                         f"{config.nproc_per_node}, or fewer processes")  # fmt: skip
    if config.nproc_per_node > 1 and ":" in config.device:
        raise ValueError(f"parameter device={config.device!r} names one GPU, but nproc_per_node={config.nproc_per_node} processes would "
                         "share it: several processes on one GPU are not supported. Use device='cuda' (each process takes its own "
                         "GPU: cuda:0, cuda:1, ...; CUDA_VISIBLE_DEVICES chooses which) or nproc_per_node=1")  # fmt: skip
    if config.loader_workers < 0:
        raise ValueError(f"parameter loader_workers={config.loader_workers} must be 0 or more")
    if config.subset < 0:
        raise ValueError(f"parameter subset={config.subset} must be 0 (all tiles) or a positive count")
    if config.model == "resnet50" and config.weights == "none" and config.weights_path:
        raise ValueError(f"parameter weights='none' asks for no pretrained weights, but weights_path={config.weights_path!r} is given: "
                         "leave one of them out")  # fmt: skip
    if not 0 < config.valid_fraction < 1:
        raise ValueError(f"parameter valid_fraction={config.valid_fraction} must lie strictly between 0 and 1")
    if config.lr <= 0:
        raise ValueError(f"parameter lr={config.lr} must be positive")
    if config.fresh and config.resume:
        raise ValueError("parameters fresh=True and resume=True contradict each other: fresh discards what the run folder holds, "
                         "resume continues it; set one of them")  # fmt: skip
    for name in ("hed_scale", "hed_shift"):
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ValueError(f"parameter {name}={value} must lie in [0, 1): 0 turns HED colour augmentation off; resnet50-stain "
                             "uses hed_scale 0.2 and hed_shift 0.02")  # fmt: skip
    if config.stain_reference and config.stain_normalize == "none":
        raise ValueError(f"parameter stain_reference={config.stain_reference!r} is given, but stain_normalize='none' normalises "
                         "nothing: set stain_normalize to 'macenko' or 'reinhard', or leave stain_reference empty")  # fmt: skip
    if config.stain_normalize != "none" and config.input_pipeline == "original":
        raise ValueError(f"parameter stain_normalize={config.stain_normalize!r} needs input_pipeline='tensor': tiles are normalised "
                         "once, when decoded into the cache, and the 'original' input path decodes every file again each epoch; "
                         "set input_pipeline='tensor', or stain_normalize='none'")  # fmt: skip
    if config.checkpoint_every_s < 0:
        raise ValueError(f"parameter checkpoint_every_s={config.checkpoint_every_s} must be 0 (every epoch) or more seconds")


def main() -> int:
    """`python -m lib.config`: regenerate the run notebooks' parameters cells from RunConfig."""
    from lib.paths import NOTEBOOKS_DIR

    notebooks = [NOTEBOOKS_DIR / registry.run_entry(run)["notebook"] for run in registry.run_names()]
    for path in write_parameters_cells(notebooks):
        print(f"rewrote the parameters cell of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
