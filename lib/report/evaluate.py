"""Predictions from each run's best checkpoint, their scores beside the majority-class floor, and
the submission file in the form the data set's competition expects."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.data import decode_tiles, read_run_layout
from lib.metrics import score_predictions
from lib.data.layouts import LayoutError
from lib.files import write_whole
from lib.models import build_model, predicted_labels
from lib.paths import resolve
from lib.progress import progress
from lib.training.run_folder import RunFolder
from lib.training.speed import autocast, host_memory, prepare_input, prepare_model, resolve_device, speed_settings

SUBMISSION_HEADER = "# Id,Values"  # the original's (course) submission: hard 0/1 labels
SAMPLE_SUBMISSION = "sample_submission.csv"  # a Kaggle data set's own form: its header, id order, class-1 probabilities


@dataclass
class TilePredictions:
    ids: list[str]
    predictions: np.ndarray  # 0/1 per test tile, in id order
    scores: np.ndarray  # probability of class 1 (softmax over the two label outputs)
    labels: np.ndarray | None  # known test labels, when the data set has them
    checkpoint: str
    best_epoch: int
    scored_on: str  # "test", or why the validation tiles stood in for a missing test set
    positive_class: str = ""  # the run's choice, for class-folder data sets
    data_dir: str = ""  # the data set predicted


def load_trained_model(run_dir: str | Path, checkpoint: str = "best") -> tuple[torch.nn.Module, dict]:
    """A run's network with the weights of one of its checkpoints ("initial", "best" or "last"), on
    the CPU, in eval mode, and the checkpoint's contents with its "path". Raises FileNotFoundError
    naming the file when the run has not been trained, and DamagedRunFolder naming the file and what
    to do when it cannot be loaded or, for "best", when the run's files do not agree that it is one
    whole finished run (RunFolder.check_whole): a damaged run is never scored."""
    folder = RunFolder(run_dir)
    checkpoint = checkpoint.removesuffix(".pt")
    if checkpoint == "best":
        folder.check_whole()
    state = folder.load_checkpoint(checkpoint)
    # The checkpoint holds every weight, so no ImageNet file is looked for here.
    config = dataclasses.replace(folder.run_config(), weights="none")
    model, _ = build_model(config)
    model.load_state_dict(state["model"])
    return model.eval(), state | {"path": str(folder.checkpoint_file(checkpoint))}


@torch.inference_mode()
def predict_test_tiles(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64,
                       which: str = "auto") -> TilePredictions:  # fmt: skip
    """Predict every test tile, in id order, from `run_dir`'s best checkpoint (ToTensor only), with
    the precision the run trained with. `data_dir`: the run's own (from its config.json) by default.
    A data set without a test set is scored on the run's own validation tiles, read from its
    split.csv (the scores lean optimistic: the best epoch was chosen on them; `scored_on` says so).
    `which="validation"` asks for those validation tiles even when there is a test set (for test
    tiles whose labels are unknown). Decoded tiles come from the tile cache when it has them.

    Returns TilePredictions: predictions (N,) int64 0/1 and scores (N,) float32 probability of class 1.
    Raises FileNotFoundError when the run has no best.pt, config.json or (without a test set) split.csv,
    and ValueError for `which` other than "auto" or "validation"."""
    if which not in ("auto", "validation"):
        raise ValueError(f"which={which!r}: predict 'auto' (the test tiles, else the validation split) or 'validation'")
    folder = RunFolder(run_dir)
    model, checkpoint = load_trained_model(folder.path)
    config = folder.run_config()
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(resolve(data_dir)))
    torch_device = resolve_device(device)
    settings = speed_settings(torch_device, config.precision)  # the run's own precision, and channels_last
    model, _ = prepare_model(model.to(torch_device), settings)

    index = read_run_layout(config)
    cache_dir = config.cache_dir or None
    stain = folder.stain_target()  # the run's own stain target (None without stain_normalize): test tiles normalised to it
    if index.test_paths and which == "auto":
        tiles, _, _ = decode_tiles(index.test_paths, config.tile_size, desc="decoding test tiles", cache_dir=cache_dir, multi_page=config.multi_page,
                                   non_square=config.non_square, stain=stain, device=torch_device)  # fmt: skip
        ids, labels, scored_on = index.test_ids, index.test_labels, "test"
    else:
        # Class-folder and CSV data sets carry no test set: the run's own validation tiles, as its
        # split.csv recorded them, are the only tiles it never trained on. Said wherever scores appear.
        by_name = {index.name_of(source): (source, label) for source, label in zip(index.train_paths, index.train_labels)}
        ids = folder.read_split().valid
        missing = [name for name in ids if name not in by_name]
        if missing:
            raise FileNotFoundError(f"{folder.split_file} lists validation tiles that {index.data_dir} no longer holds: "
                                    f"{', '.join(missing[:5])} ({len(missing)} in all); train the run again on this data set")  # fmt: skip
        tiles, _, _ = decode_tiles([by_name[name][0] for name in ids], config.tile_size, desc="decoding validation tiles", cache_dir=cache_dir,
                                  multi_page=config.multi_page, non_square=config.non_square, stain=stain, device=torch_device)  # fmt: skip
        labels = np.array([by_name[name][1] for name in ids], dtype=np.int64)
        why = f"the {index.layout} layout has no test set" if not index.test_paths else "the test tiles' labels are unknown"
        scored_on = (f"validation split of {folder.name} ({len(ids)} tiles): {why}. "
                     "Its best epoch was chosen on these tiles, so the scores lean optimistic")  # fmt: skip
    predictions, scores = [], []
    with host_memory(settings):
        for start in progress(range(0, len(tiles), batch_size), desc="predicting", unit="batch"):
            batch = prepare_input(tiles[start : start + batch_size].to(torch_device).float().div_(255), settings)
            with autocast(torch_device, settings):
                logits = model(batch).float()
            predictions.append(predicted_labels(logits).cpu())
            scores.append(torch.softmax(logits[:, :2], dim=1)[:, 1].cpu())
    return TilePredictions(
        ids=list(ids),
        predictions=torch.cat(predictions).numpy(),
        scores=torch.cat(scores).numpy(),
        labels=labels,
        checkpoint=checkpoint["path"],
        best_epoch=int(checkpoint["epoch"]),
        scored_on=scored_on,
        positive_class=config.positive_class,
        data_dir=config.data_dir,
    )


# Scores. Every accuracy is shown beside the majority-class rate of the same tiles: the accuracy a
# model reaches by predicting the more frequent class for every tile, which on an unbalanced set
# can look like learning (a 90/10 set gives 90 % for nothing).


def score_test_predictions(result: TilePredictions) -> dict | None:
    """score_predictions of `result` against its known labels, with n_test (its tile count) and
    scored_on; None when the labels are unknown (a test set without labels)."""
    if result.labels is None:
        return None
    return {"n_test": len(result.ids), "scored_on": result.scored_on} | score_predictions(result.labels, result.predictions, result.scores)


@dataclass
class RunEvaluation:
    """One run's best checkpoint on the held-out tiles."""

    run: str
    predictions: TilePredictions  # the test tiles (the submission's), or the validation split without a test set
    scored: TilePredictions  # what `metrics` scores: `predictions`, or the validation split when the test labels are unknown
    metrics: dict  # score_test_predictions(scored)


def evaluate_runs(runs_dir: str | Path, runs: list[str], data_dir: str | Path | None = None, device: str = "auto",
                  batch_size: int = 64) -> dict[str, RunEvaluation]:  # fmt: skip
    """Every run's best checkpoint (already on disk) predicts the test tiles (decoded once into the
    tile cache and read from it after), in `runs`' order. Where the test labels are unknown, each run
    is scored on its own validation split instead, and its `scored_on` says so.

    Raises FileNotFoundError naming a run that has not been trained."""
    evaluations = {}
    for run in runs:
        run_dir = resolve(runs_dir) / run
        predictions = predict_test_tiles(run_dir, data_dir, device=device, batch_size=batch_size)
        scored = predictions if predictions.labels is not None else predict_test_tiles(run_dir, data_dir, device, batch_size, which="validation")
        evaluations[run] = RunEvaluation(run, predictions, scored, score_test_predictions(scored))
    return evaluations


# The submission file.


def _write_lines(path: str | Path, lines: list[str]) -> Path:
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_whole(path, ("\n".join(lines) + "\n").encode(), "reports_dir")


def write_submission(path: str | Path, ids: list[int], predictions) -> Path:
    """The original's submission: a `# Id,Values` header, then `id,label` rows in id order; returns
    its path. Raises DiskFullError (lib/files.py) on a full disk, the previous file intact."""
    return _write_lines(path, [SUBMISSION_HEADER] + [f"{i},{int(p)}" for i, p in zip(ids, predictions)])


@dataclass(frozen=True)
class SubmissionForm:
    """How the submission is written: the data set's own competition's form, or the original's."""

    name: str  # "competition" (the data set's sample_submission.csv) or "course" (the original's)
    header: str  # the first line, as written
    values: str  # what each row's second column holds, in words
    ids: list[str] | None  # the sample's ids in its order; None: the test ids in id order
    why: str  # why this form, in a sentence for the report


def submission_form(data_dir: str | Path) -> SubmissionForm:
    """The submission form of the data set at `data_dir` (a folder, or a CSV file's folder). With a
    sample_submission.csv there (Kaggle's form, e.g. PatchCamelyon's), the competition's: its header
    line as it is, its ids in its order, and each value the probability of class 1 (such competitions
    score ranked probabilities by ROC-AUC, and hard labels throw that ranking away). Otherwise the
    original's course form: `# Id,Values`, then hard 0/1 labels in id order.

    Raises LayoutError when the sample is not a two-column header with id,value rows, or repeats an id."""
    folder = Path(data_dir)
    folder = folder.parent if folder.is_file() else folder
    sample = folder / SAMPLE_SUBMISSION
    if not sample.is_file():
        return SubmissionForm("course", SUBMISSION_HEADER, "the predicted label, 0 or 1", None,
                              f"the original's course form ({SUBMISSION_HEADER!r}, hard 0/1 labels in id order), "
                              f"as the data set carries no {SAMPLE_SUBMISSION} of its own")  # fmt: skip
    with open(sample, newline="", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    header = lines[0].strip() if lines else ""
    if len(next(csv.reader([header]), [])) != 2:
        raise LayoutError(f"{sample}: its first line should be a two-column header such as 'id,label'; got {header!r}")
    ids = [row[0].strip() for row in csv.reader(lines[1:]) if row and "".join(row).strip()]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if repeated:
        raise LayoutError(f"{sample}: ids listed more than once: {', '.join(repeated[:10])} ({len(repeated)} in all)")
    return SubmissionForm("competition", header, "the probability of class 1", ids,
                          f"the data set's own competition form, from its {SAMPLE_SUBMISSION}: header {header!r}, its "
                          f"{len(ids)} ids in its order, each value the probability of class 1 (the competition scores "
                          "ranked probabilities by ROC-AUC; the original's hard 0/1 labels would throw the ranking away)")  # fmt: skip


def write_submission_file(path: str | Path, result: TilePredictions) -> dict:
    """`result`'s test predictions written to `path` in submission_form(result.data_dir); returns
    the record evaluation.json keeps: path, form, header, values, why, rows, and left_out (test
    tiles the sample does not list, which are not written).

    Raises ValueError when `result` is not of test tiles, or the sample lists ids that no test tile
    has (the first ten named)."""

    if result.scored_on != "test":
        raise ValueError(f"no submission from predictions of the {result.scored_on}: a submission is of test tiles")
    form = submission_form(result.data_dir)
    left_out: list[str] = []
    if form.ids is None:
        written = write_submission(path, result.ids, result.predictions)
        rows = len(result.ids)
    else:
        by_id = {str(i): float(score) for i, score in zip(result.ids, result.scores)}
        missing = [i for i in form.ids if i not in by_id]
        if missing:
            raise ValueError(f"{SAMPLE_SUBMISSION} lists {len(missing)} id(s) with no test tile in {result.data_dir}: "
                             f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}")  # fmt: skip
        left_out = sorted(set(by_id) - set(form.ids))
        written = _write_lines(path, [form.header] + [f"{i},{by_id[i]:.6f}" for i in form.ids])
        rows = len(form.ids)
    return {"path": str(written), "form": form.name, "header": form.header, "values": form.values, "why": form.why,
            "rows": rows, "left_out": len(left_out)}  # fmt: skip


def first_five_line(predictions) -> str:
    """The line the original printed after predicting."""
    return f"Example prediction, 5 items from front : {[int(p) for p in predictions[:5]]}"


def save_evaluation(result: TilePredictions, metrics: dict | None, run: str, out_dir: str | Path,
                    runs: dict[str, RunEvaluation] | None = None, submission: dict | None = None) -> Path:  # fmt: skip
    """evaluation.json (what the report reads) and test_predictions.csv (the final run's `result`)
    beside the submission. evaluation.json holds the final run's record at its top level (`metrics`:
    its test scores, None without test labels), `runs`: each evaluated run's scores and what they
    were scored on, and `submission`: the record write_submission_file returned (None: none written).
    Returns evaluation.json's path. Raises DiskFullError (lib/files.py) on a full disk, naming the
    file; the previous one is intact."""
    out_dir = resolve(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["id,prediction,score_class1" + (",label" if result.labels is not None else "")]
    for k, i in enumerate(result.ids):
        row = f"{i},{int(result.predictions[k])},{result.scores[k]:.6f}"
        rows.append(row + (f",{int(result.labels[k])}" if result.labels is not None else ""))
    _write_lines(out_dir / "test_predictions.csv", rows)
    record = {
        "run": run,
        "run_dir": str(Path(result.checkpoint).parent),
        "data_dir": result.data_dir,
        "positive_class": result.positive_class,
        "checkpoint": result.checkpoint,
        "best_epoch": result.best_epoch,
        "n_test": len(result.ids),
        "scored_on": result.scored_on,
        "first_five": first_five_line(result.predictions),
        "metrics": metrics,
        "runs": {name: {"scored_on": e.scored.scored_on, "checkpoint": e.scored.checkpoint, "best_epoch": e.scored.best_epoch,
                        "metrics": e.metrics} for name, e in (runs or {}).items()},  # fmt: skip
        "submission": submission,
    }
    write_whole(out_dir / "evaluation.json", json.dumps(record, indent=2).encode(), "reports_dir")
    return out_dir / "evaluation.json"
