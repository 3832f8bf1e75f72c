"""runs/<run>/: the one module that knows a run's folder, its files and how each is written and read.

    config.json    the RunConfig the run was trained with
    split.csv      which tiles trained and which validated (`tile,side`), names relative to data_dir
    history.json   one row per epoch, rewritten as each epoch ends
    initial.pt     the weights before training (for the filter figures)
    best.pt        the best validation state (model, optimizer, epoch), as the original kept
    last.pt        everything needed to continue (model, optimizer, scheduler, epoch, random state)
    result.json    the run's summary: what the report reads
    tensorboard/   the original's scalar tags
    training.fingerprint   what the training depended on (lib/pipeline.py's training_fingerprint), written
                   by the pipeline after the run's notebook succeeded: a later `make run-all` whose training is
                   unchanged redraws the notebook from this result instead of training again

Every file is written to a temporary name, flushed to the disk and renamed (lib/files.py), so an
interruption or a power loss leaves the previous one whole, and a full disk says so, naming the
file. Checkpoints are plain dicts of tensors and numbers, loaded with `weights_only=True`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.config import RunConfig
from lib.files import stored_bytes, write_whole
from lib.paths import resolve

CHECKPOINTS = ("initial", "best", "last")
# A fresh start removes these, so that a later resume cannot continue another run's state.
# training.fingerprint goes too: a run trained outside the pipeline (its notebook in JupyterLab) must not
# pass for the one the pipeline recorded.
_STALE_ON_FRESH_START = ("last.pt", "best.pt", "history.json", "result.json", "split.csv", "training.fingerprint")


def save_atomically(obj, path: Path) -> None:
    """Write `obj` (JSON for a dict or list and a .json path, torch.save otherwise; DiskFullError on a full disk) to a temporary
    file, then rename it over `path`: an interruption leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(obj, (dict, list)) and path.suffix == ".json":
        write_whole(path, json.dumps(obj, indent=2).encode(), "runs_dir", tmp=tmp)
    else:  # through a file of ours, so that a full disk shows as the OSError under torch's RuntimeError
        write_whole(path, lambda f: torch.save(obj, f), "runs_dir", needed=stored_bytes(obj), tmp=tmp)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint of ours (a dict of tensors and numbers), on the CPU, through the safe loader."""
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class RunResult:
    """A run's saved results: its config (as a dict), its per-epoch history and its summary."""

    config: dict
    history: list[dict]
    summary: dict

    @property
    def run_dir(self) -> Path:
        return Path(self.config["runs_dir"]) / self.config["run"]


@dataclass(frozen=True)
class SplitRecord:
    """The tiles a run trained and validated on, by name (path relative to the data set's folder)."""

    train: list[str]
    valid: list[str]


class RunFolder:
    """One run's folder. `RunFolder(config.run_dir)` or `RunFolder("runs/baseline")` (relative paths
    from the project root)."""

    def __init__(self, path: str | Path):
        self.path = resolve(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # Paths
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def history_file(self) -> Path:
        return self.path / "history.json"

    @property
    def result_file(self) -> Path:
        return self.path / "result.json"

    @property
    def split_file(self) -> Path:
        return self.path / "split.csv"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def fingerprint_file(self) -> Path:
        return self.path / "training.fingerprint"

    def checkpoint_file(self, which: str) -> Path:
        """`which`: "initial", "best" or "last"."""
        if which not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {which!r}; a run folder holds {', '.join(CHECKPOINTS)}")
        return self.path / f"{which}.pt"

    # Writing
    def start(self, fresh: bool) -> None:
        """Create the folder; a fresh start also removes an earlier run's state and results."""
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            for stale in _STALE_ON_FRESH_START:
                (self.path / stale).unlink(missing_ok=True)

    def write_config(self, config: RunConfig) -> None:
        save_atomically(dataclasses.asdict(config), self.config_file)

    def write_split(self, train: list[str], valid: list[str]) -> None:
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["tile", "side"])
        writer.writerows([name, "train"] for name in train)
        writer.writerows([name, "valid"] for name in valid)
        write_whole(self.split_file, text.getvalue().encode(), "runs_dir")

    def write_history(self, history: list[dict]) -> None:
        save_atomically(history, self.history_file)

    def write_result(self, summary: dict) -> None:
        save_atomically(summary, self.result_file)

    def save_checkpoint(self, which: str, state: dict) -> None:
        save_atomically(state, self.checkpoint_file(which))

    def record_training_fingerprint(self, fingerprint: str) -> None:
        write_whole(self.fingerprint_file, fingerprint.encode(), "runs_dir")

    # Reading
    def _require(self, path: Path) -> Path:
        if not path.is_file():
            raise FileNotFoundError(f"run {self.name!r} has no {path.name} at {path}; train it first (its notebook or `make run-all`)")
        return path

    def read_config(self) -> dict:
        return json.loads(self._require(self.config_file).read_text())

    def run_config(self) -> RunConfig:
        """The saved config as a RunConfig (fields a later workbook added take their defaults;
        fields it no longer has are dropped)."""
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        return RunConfig(**{k: v for k, v in self.read_config().items() if k in fields})

    def read_split(self) -> SplitRecord:
        train, valid = [], []
        with open(self._require(self.split_file), newline="") as f:
            for row in csv.DictReader(f):
                (train if row["side"] == "train" else valid).append(row["tile"])
        return SplitRecord(train=train, valid=valid)

    def read_history(self) -> list[dict]:
        return json.loads(self._require(self.history_file).read_text())

    def read_result(self) -> dict:
        return json.loads(self._require(self.result_file).read_text())

    def has_result(self) -> bool:
        return self.result_file.is_file()

    def training_fingerprint(self) -> str | None:
        """The training fingerprint the pipeline recorded after the run last succeeded; None when
        there is none (never run by the pipeline, or trained afresh since)."""
        return self.fingerprint_file.read_text() if self.fingerprint_file.is_file() else None

    def load_checkpoint(self, which: str) -> dict:
        return load_checkpoint(self._require(self.checkpoint_file(which)))

    def result(self) -> RunResult:
        """The finished run's config, history and summary; FileNotFoundError naming the file when
        the run has not finished."""
        summary = self.read_result()
        return RunResult(config=self.read_config(), history=self.read_history(), summary=summary)
