"""Each run's facts as a typed record, computed once from its saved folder (config, history and
result.json), the registry and the evaluation: what the report's sentences, tables and figures read.

A record holds nothing of the machine it was made on: paths are named relative to the project
(`data/synthetic`, `runs/baseline`), data outside it by its own folder's name, the decoded-tile
cache and the torch cache in words. Records keep the real run folder only to load checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lib import registry
from lib.config import BASELINE_TILE, ORIGINAL_CROP, run_config
from lib.paths import PROJECT_ROOT, TILE_CACHE_DIR
from lib.training.run_folder import RunResult

# The parameters a run is compared on, with its full profile (the original's) and with its own
# registry profile (a user's setting over the registry); tile and crop sizes are compared apart.
COMPARED_FIELDS = ("epochs", "batch_size", "lr", "subset", "scheduler", "augment", "valid_fraction", "seed", "model", "head", "weights")


# --- Paths, in the project's words ---------------------------------------------------------------

# An absolute path inside free text (notes, notices): a slash or ~ at the start of a word, not in a
# fraction ("200/256"), an URL ("https://") or a relative path ("data/cache").
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/)[^\s,;()'\"\[\]]*[^\s,;()'\"\[\].:]")
# The decoded-tile cache names its files by a content hash and the tile size (lib/data/cache.py).
_CACHE_FILE = re.compile(r"^[0-9a-f]{8,}(-\d+)?(\.[a-z]+)*$")


def _checkout_root(path: Path) -> Path | None:
    """The workbook checkout a path lies in (the folder holding registry.toml and lib/), or None."""
    for parent in path.parents:
        if (parent / "registry.toml").is_file() and (parent / "lib").is_dir():
            return parent
    return None


def _torch_hub_dir() -> Path | None:
    try:
        import torch

        return Path(torch.hub.get_dir())
    except Exception:  # no torch: no torch cache to name
        return None


def project_name(path: str | Path, data_dir: str | Path | None = None) -> str:
    """A path as the report names it: relative to the project it lies in (this checkout or another
    workbook checkout: `data/synthetic`, `runs/baseline`), "the decoded-tile cache" for a cache file,
    "the torch cache's <file>" there, a file in `data_dir` (a data set outside the project) after
    the data set's folder name (`pcam/train_labels.csv`), and otherwise the file's or folder's own
    name (that data set by its folder). Never an absolute path, a home folder or a cache hash."""
    path = Path(str(path)).expanduser()
    if not path.is_absolute():
        return str(path)
    data_dir = Path(str(data_dir)).expanduser() if data_dir else None
    if data_dir is not None and data_dir.is_absolute() and data_dir in path.parents and _checkout_root(path) is None:
        return f"{data_dir.name}/{path.relative_to(data_dir)}"
    if _CACHE_FILE.match(path.name) or path == TILE_CACHE_DIR or TILE_CACHE_DIR in path.parents:
        return "the decoded-tile cache"
    hub = _torch_hub_dir()
    if hub is not None and (path == hub or hub in path.parents):
        return f"the torch cache's {path.name}"
    for root in (PROJECT_ROOT, _checkout_root(path)):
        if root is not None and root in path.parents:
            relative = str(path.relative_to(root))
            return "the decoded-tile cache" if relative.startswith("data/cache") else relative
    return path.name or "/"


def machine_free(text: str, data_dir: str | Path | None = None) -> str:
    """Free text from a run's records (notes, notices, origins) with every absolute path in it named
    as project_name names it (files in `data_dir` after the data set's folder name)."""
    return _ABSOLUTE_PATH.sub(lambda m: project_name(m.group(0), data_dir), str(text))


# --- The record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One parameter in which a run differs from its full profile (the original's) or from its own
    registry profile (then a user set it over the registry)."""

    name: str  # a RunConfig field: "epochs", "tile_size", "lr", ...
    full: object  # the full profile's value; tile and crop: the original's 256 and 200 (None: not cropped)
    declared: object  # the registry's value in the run's own profile (None: resolved from the data)
    used: object  # what the run trained with

    @property
    def from_full(self) -> bool:
        return self.used != self.full

    @property
    def given_over(self) -> bool:
        return self.declared is not None and self.used != self.declared


@dataclass(frozen=True)
class WeightsFacts:
    """What a network started from, in the project's words."""

    pretrained: bool
    source: str  # a file's name, "not found at the torch cache's <file>", "none asked for" or "not applicable"
    notes: str  # what was done to the file's contents
    notice: str  # what the run said about it ("" when it did what the original did)

    @property
    def not_found(self) -> bool:
        return not self.pretrained and self.source.startswith("not found")


@dataclass(frozen=True)
class HeldOut:
    """A run's best checkpoint scored on held-out tiles (lib.metrics.score_predictions' dict)."""

    scored_on: str  # "test", or the split it was scored on when there were no test labels
    best_epoch: int | None
    metrics: dict  # with "intervals": each score's 95 % bootstrap interval (lib/stats.py)
    tta: dict | None = None  # the same scores of the mean over each tile's 8 flips and rotations, where asked
    calibration: dict | None = None  # lib/stats.py calibration of its probabilities on these tiles
    second: dict | None = None  # its scores on the second test set (another laboratory's stain), with intervals
    second_tta: dict | None = None


@dataclass(frozen=True)
class RunFacts:
    """One run's facts: what it is (registry), what it trained with, what it measured, how it was
    scored, where it ran, and how it differs from the original's (full) profile."""

    run: str
    title: str
    why: str  # the registry's reason for this run
    model: str
    profile: str
    profile_reason: str
    folder: str  # "runs/baseline": the run's folder as the report names it
    run_dir: Path  # the real folder, to load checkpoints from; never printed
    # What it trained with
    epochs: int
    tile_size: int
    crop_size: int | None  # None: not cropped (no augmentation, or a crop as large as the tile)
    augment: bool
    batch_size: int
    lr: float
    scheduler: str
    subset: int
    valid_fraction: float
    # What it measured
    n_labelled: int
    n_train: int
    n_valid: int
    n_valid_scored: int | None
    valid_majority_rate: float | None
    best_valid_accuracy: float
    best_epoch: int
    final_valid_accuracy: float
    elapsed_s: float
    images_per_s: float
    history: tuple[dict, ...]
    held_out: HeldOut | None
    # Where and from what
    device: str  # "cpu (AMD EPYC ...)"
    environment: dict
    data_set: str  # "data/synthetic", or a data set outside the project by its folder's name
    data_origin: str
    data_layout: str
    label_rule: str
    split: str
    input_path: str
    arithmetic: str
    processes: str  # "one process", or "2 processes under torchrun (gloo, 2 per node, 1 node)"
    data_notes: tuple[str, ...]
    weights: WeightsFacts
    # Against the original
    original: dict  # the registry's reported figures (summary, accuracies, elapsed_s, logged_epochs)
    full_epochs: int
    differences: tuple[Difference, ...]

    @property
    def from_full(self) -> dict[str, Difference]:
        """How this run differs from its full profile, the original's: {parameter: Difference}."""
        return {d.name: d for d in self.differences if d.from_full}

    @property
    def given_over(self) -> dict[str, tuple]:
        """The parameters set over the run's registry profile, {name: (registry's, used)}."""
        return {d.name: (d.declared, d.used) for d in self.differences if d.given_over}


def _processes(record: dict | None) -> str:
    """How many processes trained a run, in words, from result.json's "processes" (lib/training/distributed.py)."""
    if not record or record.get("processes", 1) == 1 and record.get("backend", "").startswith("none"):
        return "one process"
    nodes, n = record["nodes"], record["processes"]
    return (f"{n} process{'es' if n != 1 else ''} under torchrun ({record['backend']}, {record['nproc_per_node']} per node, "
            f"{nodes} node{'s' if nodes != 1 else ''}; DistributedDataParallel)")


def _crop(tile: int, crop: int, augment: bool) -> int | None:
    return crop if augment and crop and crop < tile else None


def differences(result: RunResult) -> tuple[Difference, ...]:
    """Every parameter in which a run differs from its full profile or from its registry profile,
    in COMPARED_FIELDS order, then tile and crop size. The full profile's tile and crop are the
    original's (256, cropped to 200 when augmenting); the registry's are compared only where it fixes
    them (0 means "from the data", resolved when the run starts)."""
    c, run = result.config, result.config["run"]
    full, declared = run_config(run, profile="full"), run_config(run, profile=result.summary["profile"])
    found = [Difference(k, getattr(full, k), getattr(declared, k), c[k]) for k in COMPARED_FIELDS if k in c]
    crop_of, tile_of = ORIGINAL_CROP
    tile = c.get("tile_size") or tile_of
    original_tile = BASELINE_TILE if c.get("model") == "baseline" else tile_of
    found.append(Difference("tile_size", original_tile, declared.tile_size or None, tile))
    full_crop = crop_of if full.augment else None
    declared_crop = _crop(declared.tile_size, declared.crop_size, declared.augment) if declared.tile_size and declared.crop_size else None
    found.append(Difference("crop_size", full_crop, declared_crop, _crop(tile, c.get("crop_size", 0), c.get("augment", False))))
    return tuple(d for d in found if d.from_full or d.given_over)


def _weights(record: dict) -> WeightsFacts:
    return WeightsFacts(pretrained=bool(record.get("pretrained")), source=machine_free(record.get("source", "")),
                        notes=machine_free(record.get("notes", "")), notice=machine_free(record.get("notice", "")))  # fmt: skip


def _held_out(run: str, evaluation: dict | None) -> HeldOut | None:
    evaluation = evaluation or {}
    scored = (evaluation.get("runs") or {}).get(run)
    if scored is None and evaluation.get("run") == run and evaluation.get("metrics"):  # an older file: the final run's alone
        scored = {k: evaluation.get(k) for k in ("scored_on", "best_epoch", "metrics")}
    if not scored or not scored.get("metrics"):
        return None
    second = scored.get("second") or {}
    return HeldOut(scored_on=scored.get("scored_on") or "test", best_epoch=scored.get("best_epoch"), metrics=scored["metrics"],
                   tta=scored.get("tta"), calibration=scored.get("calibration"), second=second.get("metrics"), second_tta=second.get("tta"))


def _device(environment: dict) -> str:
    chip = environment.get("gpu", "none") if environment.get("gpu", "none") != "none" else environment.get("cpu", "")
    return f"{environment.get('device', 'cpu')} ({chip})" if chip else environment.get("device", "cpu")


def run_facts(result: RunResult, evaluation: dict | None = None) -> RunFacts:
    """The record of one finished run (its RunResult, the registry and, when given, evaluation.json's
    scores of its best checkpoint). Raises KeyError for a run the registry does not know."""
    c, s = result.config, result.summary
    entry = registry.run_entry(c["run"])
    tile = c.get("tile_size") or ORIGINAL_CROP[1]
    data_dir = s.get("data_dir")
    environment = {k: machine_free(v) if isinstance(v, str) else v for k, v in s.get("environment", {}).items()}
    return RunFacts(
        run=c["run"], title=s.get("title") or entry.get("title", c["run"]), why=entry.get("why", ""), model=c["model"],
        profile=s["profile"], profile_reason=machine_free(s.get("profile_reason", "")),
        folder=f"{Path(str(c.get('runs_dir', 'runs'))).name}/{c['run']}", run_dir=result.run_dir,
        epochs=s["epochs"], tile_size=tile, crop_size=_crop(tile, c.get("crop_size", 0), c.get("augment", False)),
        augment=c.get("augment", False), batch_size=c["batch_size"], lr=c["lr"], scheduler=c.get("scheduler", "none"),
        subset=c.get("subset", 0), valid_fraction=c.get("valid_fraction", 0.1),
        n_labelled=s.get("n_labelled", s["n_train"] + s["n_valid"]), n_train=s["n_train"], n_valid=s["n_valid"],
        n_valid_scored=s.get("n_valid_scored"), valid_majority_rate=s.get("valid_majority_rate"),
        best_valid_accuracy=s["best_valid_accuracy"], best_epoch=s["best_epoch"], final_valid_accuracy=s["final_valid_accuracy"],
        elapsed_s=s["elapsed_s"], images_per_s=s["train_images_per_s"], history=tuple(result.history),
        held_out=_held_out(c["run"], evaluation),
        device=_device(environment), environment=environment,
        data_set=project_name(s["data_dir"]) if s.get("data_dir") else "", data_origin=machine_free(s.get("data_origin", ""), data_dir),
        data_layout=s.get("data_layout", "course"), label_rule=machine_free(s.get("label_rule", ""), data_dir),
        split=machine_free(s.get("split", ""), data_dir),
        input_path=machine_free(s.get("input_path", "")), arithmetic=s.get("speed_settings", "fp32"),
        processes=_processes(s.get("processes")),
        data_notes=tuple(machine_free(note, data_dir) for note in s.get("data_notes", [])),
        weights=_weights(s.get("weights", {})),
        original=registry.reported(c["run"]), full_epochs=registry.run_parameters(c["run"], "full")["epochs"],
        differences=differences(result),
    )  # fmt: skip


def all_run_facts(results: dict[str, RunResult], evaluation: dict | None = None) -> dict[str, RunFacts]:
    """{run: RunFacts} for every run in `results` (results.load_all's), in the same order."""
    return {run: run_facts(result, evaluation) for run, result in results.items()}
