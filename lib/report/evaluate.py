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
from lib.stats import bootstrap_scores, calibration, compare_runs
from lib.data.layouts import LayoutError
from lib.files import write_whole
from lib.models import build_model, class1_probability, predicted_labels
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
    groups: np.ndarray | None = None  # (N,) str: each tile's group (patient, slide, source tile) where the data names them
    tta_predictions: np.ndarray | None = None  # (N,) int64 0/1 from the mean probability over the 8 flips and right-angle rotations
    tta_scores: np.ndarray | None = None  # (N,) float32: that mean probability of class 1


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


# The 8 symmetries of a square tile (the dihedral group D4): k quarter turns, mirrored or not. Tissue
# has no orientation, so each is a tile the network could have been shown (the training rotated and
# flipped); averaging their probabilities is test-time augmentation.
DIHEDRAL = tuple((k, mirrored) for mirrored in (False, True) for k in range(4))


def dihedral(batch: torch.Tensor, k: int, mirrored: bool) -> torch.Tensor:
    """(B, C, H, W) turned by k quarter turns (counter-clockwise) after a left-right mirror when
    `mirrored`; H must equal W for the turned batch to stack with the others."""
    batch = batch.flip(-1) if mirrored else batch
    return torch.rot90(batch, k, dims=(-2, -1)) if k else batch


@torch.inference_mode()
def predict_tiles(model: torch.nn.Module, tiles: torch.Tensor, device: torch.device, settings, batch_size: int = 64,
                  tta: bool = False, desc: str = "predicting") -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:  # fmt: skip
    """Predictions of `model` (in eval mode, on `device`, prepared with `settings`) for uint8 tiles
    (N, 3, H, W): (predictions (N,) int64 0/1, scores (N,) float32 probability of class 1 from the
    softmax over the two label outputs, and with `tta` the same two from the mean of those
    probabilities over the 8 flips and right-angle rotations of each tile (DIHEDRAL; class 1 where it
    exceeds 0.5, as the arg-max of two outputs gives class 0 on a tie), else None, None)."""
    predictions, scores, tta_scores = [], [], []
    with host_memory(settings):
        for start in progress(range(0, len(tiles), batch_size), desc=desc + (" (with the 8 flips and rotations)" if tta else ""), unit="batch"):
            batch = tiles[start : start + batch_size].to(device).float().div_(255)
            with autocast(device, settings):
                logits = model(prepare_input(batch, settings)).float()
            predictions.append(predicted_labels(logits).cpu())
            scores.append(class1_probability(logits).cpu())
            if tta:
                total = scores[-1].clone()
                for k, mirrored in DIHEDRAL[1:]:
                    with autocast(device, settings):
                        turned = model(prepare_input(dihedral(batch, k, mirrored).contiguous(), settings)).float()
                    total += class1_probability(turned).cpu()
                tta_scores.append(total / len(DIHEDRAL))
    plain = (torch.cat(predictions).numpy(), torch.cat(scores).numpy())
    if not tta:
        return *plain, None, None
    mean = torch.cat(tta_scores).numpy()
    return *plain, (mean > 0.5).astype(np.int64), mean


@dataclass(frozen=True)
class LabelledTiles:
    """Tiles to predict and score: ids (N,), where they are, their labels (N,) int64 0/1 or None,
    their groups (N,) str or None, and what they are, in words ("test", or the split that stood in)."""

    ids: list[str]
    sources: list
    labels: np.ndarray | None
    groups: np.ndarray | None
    scored_on: str


def second_test_tiles(config, data_dir: str | Path) -> LabelledTiles:
    """A second labelled test set (another laboratory's stain, another scanner, another hospital) at
    `data_dir`, in any supported layout, read with the run's own layout parameters (class_map,
    positive_class, group_level): its test tiles when it has labelled ones, else every labelled tile
    it holds (none of them was trained on: it is not the run's data set). Raises FileNotFoundError
    naming a missing folder, ValueError when it is the runs' own data set, LayoutError
    (lib/data/layouts.py) for a set the readers cannot read, one without labels, or one whose labels
    were guessed with a warning (class folders read alphabetically against their names)."""
    path = resolve(data_dir)
    if not path.exists():
        raise FileNotFoundError(f"second_test={data_dir}: no such file or folder (a second labelled test set in any supported layout; "
                                "'' for none)")  # fmt: skip
    if path == resolve(config.data_dir):
        raise ValueError(f"second_test={data_dir} is the runs' own data set: its tiles trained and validated them; a second test set "
                         "is another set of labelled tiles (another laboratory's, scanner's or hospital's)")  # fmt: skip
    index = read_run_layout(dataclasses.replace(config, data_dir=str(path)))
    if index.warnings:
        # Its labels must be certain: the runs' class_map and positive_class may not apply to its folders (a course-layout
        # run refuses them), and an alphabetical guess can invert every label of the set.
        raise LayoutError(f"second_test={data_dir}: its labels are not certain: {' '.join(index.warnings)} Give the second set its "
                          "labels explicitly: a CSV file with path,label columns (1 is cancer), as SECOND_TEST=that/file.csv")  # fmt: skip
    if index.test_paths and index.test_labels is not None:
        return LabelledTiles(list(index.test_ids), list(index.test_paths), np.asarray(index.test_labels, dtype=np.int64), None,
                             f"second test set ({path.name}, its {len(index.test_paths)} test tiles)")  # fmt: skip
    if not index.train_paths:
        raise LayoutError(f"second_test={data_dir}: the {index.layout} layout there holds no labelled tiles to score")
    groups = np.asarray(index.train_groups) if index.train_groups is not None else None
    return LabelledTiles([index.name_of(p) for p in index.train_paths], list(index.train_paths),
                         np.asarray(index.train_labels, dtype=np.int64), groups,
                         f"second test set ({path.name}, its {len(index.train_paths)} labelled tiles)")  # fmt: skip


def held_out_tiles(config, folder: RunFolder, which: str = "auto") -> LabelledTiles:
    """The tiles a run is scored on: the data set's test tiles, or, without a test set (or with
    `which="validation"`), the run's own validation tiles as its split.csv recorded them, with their
    groups where the data names them. Raises FileNotFoundError when split.csv lists tiles the data
    set no longer holds."""
    index = read_run_layout(config)
    if index.test_paths and which == "auto":
        return LabelledTiles(list(index.test_ids), list(index.test_paths), index.test_labels, None, "test")
    # Class-folder and CSV data sets carry no test set: the run's own validation tiles, as its
    # split.csv recorded them, are the only tiles it never trained on. Said wherever scores appear.
    groups_of = dict(zip(map(index.name_of, index.train_paths), index.train_groups)) if index.train_groups is not None else {}
    by_name = {index.name_of(source): (source, label) for source, label in zip(index.train_paths, index.train_labels)}
    ids = folder.read_split().valid
    missing = [name for name in ids if name not in by_name]
    if missing:
        raise FileNotFoundError(f"{folder.split_file} lists validation tiles that {index.data_dir} no longer holds: "
                                f"{', '.join(missing[:5])} ({len(missing)} in all); train the run again on this data set")  # fmt: skip
    why = f"the {index.layout} layout has no test set" if not index.test_paths else "the test tiles' labels are unknown"
    scored_on = (f"validation split of {folder.name} ({len(ids)} tiles): {why}. "
                 "Its best epoch was chosen on these tiles, so the scores lean optimistic")  # fmt: skip
    return LabelledTiles(list(ids), [by_name[name][0] for name in ids], np.array([by_name[name][1] for name in ids], dtype=np.int64),
                         np.array([groups_of[name] for name in ids]) if groups_of else None, scored_on)  # fmt: skip


def predict_test_tiles(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64,
                       which: str = "auto", tiles: LabelledTiles | None = None, tta: bool = False) -> TilePredictions:  # fmt: skip
    """Predict every test tile, in id order, from `run_dir`'s best checkpoint (ToTensor only), with
    the precision the run trained with. `data_dir`: the run's own (from its config.json) by default.
    A data set without a test set is scored on the run's own validation tiles, read from its
    split.csv (the scores lean optimistic: the best epoch was chosen on them; `scored_on` says so).
    `which="validation"` asks for those validation tiles even when there is a test set (for test
    tiles whose labels are unknown). `tiles`: other tiles to predict instead (second_test_tiles).
    `tta`: also the mean probability over each tile's 8 flips and right-angle rotations
    (predict_tiles). Decoded tiles come from the tile cache when it has them.

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
    chosen = tiles or held_out_tiles(config, folder, which)
    what = "test tiles" if chosen.scored_on == "test" else "second test set" if tiles else "validation tiles"
    decoded, _, _ = decode_tiles(chosen.sources, config.tile_size, desc=f"decoding {what}", cache_dir=config.cache_dir or None,
                                 multi_page=config.multi_page, non_square=config.non_square, stain=folder.stain_target(), device=torch_device)  # fmt: skip
    predictions, scores, tta_predictions, tta_scores = predict_tiles(model, decoded, torch_device, settings, batch_size, tta,
                                                                     desc=f"predicting {what}")  # fmt: skip
    return TilePredictions(
        ids=list(chosen.ids),
        predictions=predictions,
        scores=scores,
        labels=chosen.labels,
        checkpoint=checkpoint["path"],
        best_epoch=int(checkpoint["epoch"]),
        scored_on=chosen.scored_on,
        positive_class=config.positive_class,
        data_dir=config.data_dir,
        groups=chosen.groups,
        tta_predictions=tta_predictions,
        tta_scores=tta_scores,
    )


# Scores. Every accuracy is shown beside the majority-class rate of the same tiles: the accuracy a
# model reaches by predicting the more frequent class for every tile, which on an unbalanced set
# can look like learning (a 90/10 set gives 90 % for nothing).


BOOTSTRAP_SEED = 0  # every interval's resamples start from this seed, so a rerun prints the same intervals


def score_labelled(labels, predictions, scores, groups=None) -> dict:
    """score_predictions (lib/metrics.py) of one set of predictions, with "intervals": each of
    accuracy, balanced accuracy and ROC-AUC with its 95 % percentile bootstrap interval over 2,000
    seeded resamples of the tiles, or of their groups where the tiles carry groups (lib/stats.py
    bootstrap_scores: its dict, "method" saying which)."""
    return score_predictions(labels, predictions, scores) | {
        "intervals": bootstrap_scores(labels, predictions, scores, groups=groups, seed=BOOTSTRAP_SEED)}


def score_test_predictions(result: TilePredictions) -> dict | None:
    """score_labelled of `result` against its known labels, with n_test (its tile count) and
    scored_on; None when the labels are unknown (a test set without labels)."""
    if result.labels is None:
        return None
    return {"n_test": len(result.ids), "scored_on": result.scored_on} | score_labelled(result.labels, result.predictions, result.scores,
                                                                                      result.groups)  # fmt: skip


def score_tta(result: TilePredictions) -> dict | None:
    """score_labelled of `result`'s test-time-augmented predictions (the mean over each tile's 8 flips
    and rotations); None without labels or without them."""
    if result.labels is None or result.tta_scores is None:
        return None
    return score_labelled(result.labels, result.tta_predictions, result.tta_scores, result.groups)


@dataclass
class RunEvaluation:
    """One run's best checkpoint on the held-out tiles, and on a second test set when there is one."""

    run: str
    predictions: TilePredictions  # the test tiles (the submission's), or the validation split without a test set
    scored: TilePredictions  # what `metrics` scores: `predictions`, or the validation split when the test labels are unknown
    metrics: dict  # score_test_predictions(scored)
    tta_metrics: dict | None = None  # score_tta(scored), when test-time augmentation was asked for this run
    second: TilePredictions | None = None  # the second test set's predictions (another laboratory's stain)
    second_metrics: dict | None = None
    second_tta_metrics: dict | None = None
    calibration: dict | None = None  # lib/stats.py calibration of `scored`'s probabilities
    model: str = ""  # the run's network ("baseline", "resnet50", ...), from its config.json


TTA_CHOICES = ("none", "final", "all")  # which runs are also scored with test-time augmentation


def resolve_second_test(second_test: str | Path | None, data_dir: str | Path) -> Path | None:
    """The second test set's folder: `second_test` as given (relative: from the project root); for
    "auto", the generated other-laboratory set when the runs trained on the generated default set
    (lib/data/synthetic.py default_other_lab) and none otherwise; None for "" or "none"."""
    from lib.data.synthetic import default_other_lab

    text = str(second_test if second_test is not None else "auto").strip()
    if text.lower() in ("", "none"):
        return None
    if text.lower() == "auto":
        return default_other_lab(data_dir)
    return resolve(text)


def evaluate_runs(runs_dir: str | Path, runs: list[str], data_dir: str | Path | None = None, device: str = "auto",
                  batch_size: int = 64, second_test: str | Path | None = "auto", tta: str = "final",
                  final_run: str | None = None) -> dict[str, RunEvaluation]:  # fmt: skip
    """Every run's best checkpoint (already on disk) predicts the test tiles (decoded once into the
    tile cache and read from it after), in `runs`' order, and the second test set's tiles
    (resolve_second_test: another laboratory's stain by default on the generated data). Where the
    test labels are unknown, each run is scored on its own validation split instead, and its
    `scored_on` says so. `tta`: "none", "final" (`final_run` alone) or "all" runs are also scored on
    the mean probability over each tile's 8 flips and right-angle rotations.

    Raises FileNotFoundError naming a run that has not been trained or a second test set that is
    not there, and ValueError for a `tta` other than TTA_CHOICES."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta={tta!r} is not one of {', '.join(TTA_CHOICES)} (which runs are also scored on the mean over each "
                         "tile's 8 flips and right-angle rotations)")  # fmt: skip
    evaluations = {}
    second_tiles = None
    for run in runs:
        run_dir = resolve(runs_dir) / run
        with_tta = tta == "all" or (tta == "final" and run == final_run)
        predictions = predict_test_tiles(run_dir, data_dir, device=device, batch_size=batch_size, tta=with_tta)
        scored = predictions if predictions.labels is not None else predict_test_tiles(run_dir, data_dir, device, batch_size,
                                                                                       which="validation", tta=with_tta)  # fmt: skip
        evaluation = RunEvaluation(run, predictions, scored, score_test_predictions(scored), score_tta(scored))
        if scored.labels is not None:
            evaluation.calibration = calibration(scored.labels, scored.scores)
        config = RunFolder(run_dir).run_config()
        evaluation.model = config.model
        if second_tiles is None:
            where = resolve_second_test(second_test, data_dir or config.data_dir)
            second_tiles = second_test_tiles(config, where) if where is not None else False
        if second_tiles:
            second = predict_test_tiles(run_dir, data_dir, device, batch_size, tiles=second_tiles, tta=with_tta)
            evaluation.second, evaluation.second_metrics = second, score_test_predictions(second)
            evaluation.second_tta_metrics = score_tta(second)
        evaluations[run] = evaluation
    return evaluations


def compared_pairs(runs: list[str], models: dict[str, str]) -> list[tuple[str, str]]:
    """(earlier run, later run) pairs to compare, in `runs`' order: each run after the baseline
    against the one before it and against the baseline (the first run whose model is "baseline"),
    each pair once."""
    baseline = next((run for run in runs if models.get(run) == "baseline"), None)
    pairs = []
    for before, run in zip(runs, runs[1:]):
        for earlier in (before, baseline):
            if earlier is not None and earlier != run and (earlier, run) not in pairs:
                pairs.append((earlier, run))
    return pairs


def compare_evaluations(evaluations: dict[str, RunEvaluation], pairs: list[tuple[str, str]]) -> list[dict]:
    """Each pair (a, b) of runs compared on the same tiles, b minus a: McNemar's exact test and a
    paired interval for the accuracy difference, a paired interval for the ROC-AUC difference
    (lib/stats.py compare_runs), on the held-out tiles ("test") and on the second test set
    ("second"), wherever both runs were scored on the same labelled tiles; and each run scored with
    test-time augmentation against its plain prediction ("b" is the run's name and TTA_SUFFIX).
    Returns a list of {"a", "b", "on", "n", "accuracy": {...}, "roc_auc": {...}}."""
    found = []
    for a, b in pairs:
        for on, first, second in (("test", evaluations[a].scored, evaluations[b].scored),
                                  ("second", evaluations[a].second, evaluations[b].second)):  # fmt: skip
            if first is None or second is None or first.labels is None or list(first.ids) != list(second.ids):
                continue
            compared = compare_runs(first.labels, (first.predictions, first.scores), (second.predictions, second.scores),
                                    groups=first.groups, seed=BOOTSTRAP_SEED)  # fmt: skip
            found.append({"a": a, "b": b, "on": on, "n": len(first.ids)} | compared)
    for run, e in evaluations.items():  # test-time augmentation against the plain prediction, on the same tiles
        for on, result in (("test", e.scored), ("second", e.second)):
            if result is None or result.labels is None or result.tta_scores is None:
                continue
            compared = compare_runs(result.labels, (result.predictions, result.scores), (result.tta_predictions, result.tta_scores),
                                    groups=result.groups, seed=BOOTSTRAP_SEED)  # fmt: skip
            found.append({"a": run, "b": f"{run} {TTA_SUFFIX}", "on": on, "n": len(result.ids)} | compared)
    return found


TTA_SUFFIX = "with test-time augmentation"  # how a run's test-time-augmented predictions are named beside its plain ones


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


def _run_record(e: RunEvaluation) -> dict:
    second = None
    if e.second is not None:
        second = {"scored_on": e.second.scored_on, "n": len(e.second.ids), "metrics": e.second_metrics, "tta": e.second_tta_metrics}
    return {"scored_on": e.scored.scored_on, "checkpoint": e.scored.checkpoint, "best_epoch": e.scored.best_epoch, "metrics": e.metrics,
            "tta": e.tta_metrics, "calibration": e.calibration, "second": second}  # fmt: skip


def _predictions_rows(runs: dict[str, RunEvaluation]) -> list[str]:
    """Every run's prediction of every scored tile, one row each (run, set, id, label, prediction,
    score_class1, tta_score_class1): what a reviewer needs to recompute any score or comparison."""
    rows = ["run,set,id,label,prediction,score_class1,tta_score_class1"]
    for name, e in runs.items():
        for what, result in (("held_out", e.scored), ("second", e.second)):
            if result is None:
                continue
            for k, i in enumerate(result.ids):
                label = "" if result.labels is None else int(result.labels[k])
                tta = "" if result.tta_scores is None else f"{result.tta_scores[k]:.6f}"
                rows.append(f"{name},{what},{_csv_field(i)},{label},{int(result.predictions[k])},{result.scores[k]:.6f},{tta}")
    return rows


def _csv_field(value) -> str:
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def save_evaluation(result: TilePredictions, metrics: dict | None, run: str, out_dir: str | Path,
                    runs: dict[str, RunEvaluation] | None = None, submission: dict | None = None,
                    comparisons: list[dict] | None = None) -> Path:  # fmt: skip
    """evaluation.json (what the report reads), test_predictions.csv (the final run's `result`) and
    predictions.csv (every run's predictions of every scored tile) beside the submission.
    evaluation.json holds the final run's record at its top level (`metrics`: its test scores with
    their intervals, None without test labels), `runs`: each evaluated run's scores with intervals,
    test-time-augmented scores ("tta", None when not asked), calibration, what they were scored on,
    and its scores on the second test set ("second", None without one), `second_test`: that set
    described, `comparisons`: compare_evaluations' list, and `submission`: the record
    write_submission_file returned (None: none written). Returns evaluation.json's path. Raises
    DiskFullError (lib/files.py) on a full disk, naming the file; the previous one is intact."""
    out_dir = resolve(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["id,prediction,score_class1" + (",label" if result.labels is not None else "")]
    for k, i in enumerate(result.ids):
        row = f"{i},{int(result.predictions[k])},{result.scores[k]:.6f}"
        rows.append(row + (f",{int(result.labels[k])}" if result.labels is not None else ""))
    _write_lines(out_dir / "test_predictions.csv", rows)
    runs = runs or {}
    _write_lines(out_dir / "predictions.csv", _predictions_rows(runs))
    second = next((e.second for e in runs.values() if e.second is not None), None)
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
        "runs": {name: _run_record(e) for name, e in runs.items()},
        "second_test": None if second is None else {"scored_on": second.scored_on, "n": len(second.ids),
                                                    "class_counts": None if second.labels is None else np.bincount(second.labels, minlength=2).tolist()},
        "comparisons": comparisons or [],
        "submission": submission,
    }  # fmt: skip
    write_whole(out_dir / "evaluation.json", json.dumps(record, indent=2).encode(), "reports_dir")
    return out_dir / "evaluation.json"
