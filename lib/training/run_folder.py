"""runs/<run>/: the one module that knows a run's folder, its files and how each is written and read.

    config.json    the RunConfig the run was trained with
    split.csv      which tiles trained and which validated (`tile,side`), names relative to data_dir
    history.json   one row per epoch, rewritten as each epoch ends
    initial.pt     the weights before training (for the filter figures)
    best.pt        the best validation state (model, optimizer, epoch), as the original kept
    last.pt        everything needed to continue (model, optimizer, scheduler, epoch, random state)
    result.json    the run's summary: what the report reads
    stain_target.json   with stain_normalize: the target its tiles were normalised to (lib/data/stain.py),
                   which the evaluation normalises the test tiles to
    tensorboard/   the original's scalar tags
    launch.json    with nproc_per_node > 1: the config a notebook's fit handed to torchrun's processes
                   (lib/training/distributed.py); rank 0 alone writes every other file
    training.fingerprint   what the training depended on (lib/pipeline.py's training_fingerprint), written
                   by the pipeline after the run's notebook succeeded: a later `make run-all` whose training is
                   unchanged redraws the notebook from this result instead of training again

Every file is written to a temporary name unique to its writer (its pid), flushed to the disk and
renamed (lib/files.py), so an interruption or a power loss leaves the previous one whole, and a full
disk says so, naming the file. Checkpoints are plain dicts of tensors and numbers, loaded with
`weights_only=True`. A file that cannot be read, or files that disagree (check_whole), raise
DamagedRunFolder naming the file and what to do. Paths that say where the run lives (runs_dir, and
data_dir and cache_dir inside the project) are read as where the folder and the project are now,
so a runs folder or a whole checkout moved elsewhere resumes and evaluates.

    .<run>.lock    beside the folder, in runs_dir: held while `fit` writes it (lib/writer_lock.py)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.config import RunConfig
from lib.data.stain import StainTarget
from lib.files import stored_bytes, write_whole
from lib.paths import PROJECT_ROOT, resolve
from lib.writer_lock import WriterLock, held_by_parent, lock_file

CHECKPOINTS = ("initial", "best", "last")
# A fresh start removes these, so that a later resume cannot continue another run's state.
# training.fingerprint goes too: a run trained outside the pipeline (its notebook in JupyterLab) must not
# pass for the one the pipeline recorded.
_STALE_ON_FRESH_START = ("last.pt", "best.pt", "history.json", "result.json", "split.csv", "training.fingerprint", "stain_target.json")


def save_atomically(obj, path: Path) -> None:
    """Write `obj` (JSON for a dict or list and a .json path, torch.save otherwise; DiskFullError on a full disk) to a temporary
    file, then rename it over `path`: an interruption leaves the previous file intact."""
    tmp = temporary_name(path)
    if isinstance(obj, (dict, list)) and path.suffix == ".json":
        write_whole(path, json.dumps(obj, indent=2).encode(), "runs_dir", tmp=tmp)
    else:  # through a file of ours, so that a full disk shows as the OSError under torch's RuntimeError
        write_whole(path, lambda f: torch.save(obj, f), "runs_dir", needed=stored_bytes(obj), tmp=tmp)


def temporary_name(path: Path) -> Path:
    """Where `path` is written before its rename: a name unique to this process, so that two writers,
    even unlocked ones, never write or rename each other's half-written file."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def load_checkpoint(path: str | Path, lazily: bool = False) -> dict:
    """A checkpoint of ours (a dict of tensors and numbers), on the CPU, through the safe loader.
    `lazily`: its tensors mapped from the file, not read (a cheap check that it loads). Raises
    DamagedRunFolder naming the file when it cannot be loaded (empty, truncated, not a checkpoint)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DamagedRunFolder(f"{_shown(path)} is damaged (empty: 0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=lazily)
    except FileNotFoundError:
        raise
    except Exception as error:  # the zip reader's RuntimeError, EOFError, an unpickling error: all mean "cannot be loaded"
        reason = str(error).split(". ")[0] or type(error).__name__
        raise DamagedRunFolder(f"{_shown(path)} is damaged (truncated or not a checkpoint: {reason})") from None


class DamagedRunFolder(ValueError):
    """A run folder's file cannot be read, or its files say different runs; the message names the
    file and what to do."""


def _shown(path: Path) -> str:
    """`path` as the user reads it: relative to the project root when it lies below it."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


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
    def stain_target_file(self) -> Path:
        return self.path / "stain_target.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.path / "training.fingerprint"

    def checkpoint_file(self, which: str) -> Path:
        """`which`: "initial", "best" or "last"."""
        if which not in CHECKPOINTS:
            raise ValueError(f"unknown checkpoint {which!r}; a run folder holds {', '.join(CHECKPOINTS)}")
        return self.path / f"{which}.pt"

    @property
    def lock_file(self) -> Path:
        return self.path.parent / f".{self.name}.lock"

    # Writing
    @contextmanager
    def writer(self):
        """Hold this run's lock while it is written, with runs_dir's lock shared (other runs may train
        beside it; a pipeline, which holds runs_dir's whole, may not), unless the pipeline that executes
        this notebook holds runs_dir's lock for it. Raises FolderInUse naming the holder."""
        runs_lock = lock_file(self.path.parent)
        with ExitStack() as stack:
            if not held_by_parent(runs_lock):
                stack.enter_context(WriterLock(runs_lock, f"runs_dir {self.path.parent}", f"training {self.name}", shared=True))
            stack.enter_context(WriterLock(self.lock_file, f"run folder {self.path}", f"training {self.name}"))
            yield self

    def start(self, fresh: bool) -> None:
        """Create the folder; a fresh start also removes an earlier run's state and results."""
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            for stale in _STALE_ON_FRESH_START:
                (self.path / stale).unlink(missing_ok=True)

    def write_config(self, config: RunConfig) -> None:
        # The project's place beside it: data_dir and cache_dir inside the project are read from where it is now (read_config).
        save_atomically(dataclasses.asdict(config) | {"project_root": str(PROJECT_ROOT)}, self.config_file)

    def write_split(self, train: list[str], valid: list[str]) -> None:
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["tile", "side"])
        writer.writerows([name, "train"] for name in train)
        writer.writerows([name, "valid"] for name in valid)
        write_whole(self.split_file, text.getvalue().encode(), "runs_dir", tmp=temporary_name(self.split_file))

    def write_stain_target(self, target: StainTarget) -> None:
        write_whole(self.stain_target_file, target.to_json().encode(), "runs_dir", tmp=temporary_name(self.stain_target_file))

    def write_history(self, history: list[dict]) -> None:
        save_atomically(history, self.history_file)

    def write_result(self, summary: dict) -> None:
        save_atomically(summary, self.result_file)

    def save_checkpoint(self, which: str, state: dict) -> None:
        save_atomically(state, self.checkpoint_file(which))

    def record_training_fingerprint(self, fingerprint: str) -> None:
        write_whole(self.fingerprint_file, fingerprint.encode(), "runs_dir", tmp=temporary_name(self.fingerprint_file))

    # Reading
    def _require(self, path: Path) -> Path:
        if not path.is_file():
            raise FileNotFoundError(f"run {self.name!r} has no {path.name} at {path}; train it first (its notebook or `make run-all`)")
        return path

    def mend(self) -> str:
        """What to do about a damaged file of this folder, in words."""
        again = (f"delete {_shown(self.path)}/ and make run-all trains {self.name} again (make run-all FRESH=true RUNS={self.name}, "
                 "or fresh = True in its notebook, discards it the same way)")  # fmt: skip
        if not self.has_result() and self.checkpoint_file("last").is_file():
            again += ", or make run-all RESUME=true to continue from last.pt if it is whole"
        return again

    def _read_json(self, path: Path):
        text = self._require(path).read_bytes()
        try:
            return json.loads(text)
        except ValueError as error:  # JSONDecodeError, or bytes that are no text
            cut = "empty: 0 bytes" if not text else f"cut short or not JSON: {error}"
            raise DamagedRunFolder(f"{_shown(path)} is damaged ({cut}): {self.mend()}") from None

    def read_config(self) -> dict:
        """config.json, with the paths that say where the run lives read as where it is now: runs_dir is
        this folder's parent, and data_dir and cache_dir that lay inside the project it was trained in lie
        at the same place inside this one (a checkout moved with its data)."""
        saved = self._read_json(self.config_file)
        saved["runs_dir"] = str(self.path.parent)
        old_root = saved.pop("project_root", None)
        for name in ("data_dir", "cache_dir"):
            if old_root and saved.get(name) and Path(saved[name]).is_relative_to(old_root):
                saved[name] = str(PROJECT_ROOT / Path(saved[name]).relative_to(old_root))
        return saved

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

    def stain_target(self) -> StainTarget | None:
        """The target the run normalised its tiles to (stain_target.json), None when its config asks for
        no stain normalisation. Raises FileNotFoundError or DamagedRunFolder naming the file."""
        if self.run_config().stain_normalize == "none":
            return None
        record = self._read_json(self.stain_target_file)
        try:
            return StainTarget.from_json(json.dumps(record))
        except (KeyError, TypeError, ValueError) as error:
            raise DamagedRunFolder(f"{_shown(self.stain_target_file)} is damaged (not a stain target: {error}): {self.mend()}") from None

    def read_history(self) -> list[dict]:
        return self._read_json(self.history_file)

    def read_result(self) -> dict:
        return self._read_json(self.result_file)

    def has_result(self) -> bool:
        return self.result_file.is_file()

    def training_fingerprint(self) -> str | None:
        """The training fingerprint the pipeline recorded after the run last succeeded; None when
        there is none (never run by the pipeline, or trained afresh since)."""
        return self.fingerprint_file.read_text() if self.fingerprint_file.is_file() else None

    def load_checkpoint(self, which: str, lazily: bool = False) -> dict:
        """A checkpoint ("initial", "best" or "last"); `lazily`: mapped, not read. Raises
        FileNotFoundError or DamagedRunFolder, each naming the file."""
        try:
            return load_checkpoint(self._require(self.checkpoint_file(which)), lazily)
        except DamagedRunFolder as error:
            raise DamagedRunFolder(f"{error}: {self.mend()}") from None

    def result(self) -> RunResult:
        """The finished run's config, history and summary; FileNotFoundError naming the file when
        the run has not finished, DamagedRunFolder when one cannot be read."""
        summary = self.read_result()
        return RunResult(config=self.read_config(), history=self.read_history(), summary=summary)

    def check_whole(self) -> RunResult:
        """The finished run's result once its files agree that they are one whole run: result.json's
        epochs, config.json's and history.json's rows the same count, result.json and config.json the
        same run, and best.pt loading (mapped, not read: cheap) with result.json's best epoch. A run
        cut short, or written by two processes at once, fails here rather than passing for done.
        Raises FileNotFoundError (a file missing) or DamagedRunFolder, naming the file and what to do."""
        result = self.result()
        summary, config, history = result.summary, result.config, result.history
        epochs = {"result.json": summary.get("epochs"), "config.json": config.get("epochs"), "history.json": len(history)}
        if len(set(epochs.values())) != 1 or summary.get("run") != config.get("run"):
            said = (f"result.json says {summary.get('run')!r} for {epochs['result.json']} epochs, config.json {config.get('run')!r} "
                    f"for {epochs['config.json']}, history.json holds {epochs['history.json']} epochs")  # fmt: skip
            raise DamagedRunFolder(f"{_shown(self.path)} does not hold one whole run ({said}: cut short, or written by two runs at "
                                   f"once): {self.mend()}")  # fmt: skip
        best = self.load_checkpoint("best", lazily=True)
        if best.get("epoch") != summary.get("best_epoch"):
            raise DamagedRunFolder(f"{_shown(self.checkpoint_file('best'))} holds epoch {best.get('epoch')}, but result.json's best "
                                   f"epoch is {summary.get('best_epoch')} (written by another run): {self.mend()}")  # fmt: skip
        return result
