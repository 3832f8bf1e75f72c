"""Test predictions from a run's best checkpoint, their scores, and the original's submission file."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lib.data import decode_tiles, read_run_layout
from lib.models import build_model, predicted_labels
from lib.paths import resolve
from lib.run_folder import RunFolder, save_atomically
from lib.speed import autocast, host_memory, prepare_input, prepare_model, resolve_device, speed_settings

SUBMISSION_HEADER = "# Id,Values"


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
    naming the file when the run has not been trained."""
    folder = RunFolder(run_dir)
    checkpoint = checkpoint.removesuffix(".pt")
    state = folder.load_checkpoint(checkpoint)
    # The checkpoint holds every weight, so no ImageNet file is looked for here.
    config = dataclasses.replace(folder.run_config(), weights="none")
    model, _ = build_model(config)
    model.load_state_dict(state["model"])
    return model.eval(), state | {"path": str(folder.checkpoint_file(checkpoint))}


@torch.inference_mode()
def predict_test_tiles(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64) -> TilePredictions:
    """Predict every test tile, in id order, from `run_dir`'s best checkpoint (ToTensor only), with
    the precision the run trained with. `data_dir`: the run's own (from its config.json) by default.
    A data set without a test set is scored on the run's own validation tiles, read from its
    split.csv (the scores lean optimistic: the best epoch was chosen on them; `scored_on` says so).

    Returns TilePredictions: predictions (N,) int64 0/1 and scores (N,) float32 probability of class 1.
    Raises FileNotFoundError when the run has no best.pt, config.json or (without a test set) split.csv."""
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
    if index.test_paths:
        tiles, _, _ = decode_tiles(index.test_paths, config.tile_size, desc="decoding test tiles", cache_dir=cache_dir, multi_page=config.multi_page)
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
                                  multi_page=config.multi_page)  # fmt: skip
        labels = np.array([by_name[name][1] for name in ids], dtype=np.int64)
        scored_on = (f"validation split of {folder.name} ({len(ids)} tiles): the {index.layout} layout has no test set. "
                     "Its best epoch was chosen on these tiles, so the scores lean optimistic")  # fmt: skip
    predictions, scores = [], []
    with host_memory(settings):
        for start in tqdm(range(0, len(tiles), batch_size), desc="predicting", unit="batch", file=sys.stderr):
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


def write_submission(path: str | Path, ids: list[int], predictions) -> Path:
    """The original's submission: a `# Id,Values` header, then `id,label` rows in id order."""
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [SUBMISSION_HEADER] + [f"{i},{int(p)}" for i, p in zip(ids, predictions)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def first_five_line(predictions) -> str:
    """The line the original printed after predicting."""
    return f"Example prediction, 5 items from front : {[int(p) for p in predictions[:5]]}"


def score_test_predictions(result: TilePredictions) -> dict | None:
    """Accuracy, ROC-AUC and the confusion matrix, when the test labels are known."""
    if result.labels is None:
        return None
    from sklearn.metrics import confusion_matrix, roc_auc_score

    labels = result.labels
    both_classes = len(np.unique(labels)) == 2
    return {
        "n_test": int(len(labels)),
        "accuracy": float((result.predictions == labels).mean()),
        "roc_auc": float(roc_auc_score(labels, result.scores)) if both_classes else None,
        "confusion_matrix": confusion_matrix(labels, result.predictions, labels=[0, 1]).tolist(),
    }


def save_evaluation(result: TilePredictions, metrics: dict | None, run: str, out_dir: str | Path) -> Path:
    """evaluation.json (what the report reads) and test_predictions.csv beside the submission."""
    out_dir = resolve(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["id,prediction,score_class1" + (",label" if result.labels is not None else "")]
    for k, i in enumerate(result.ids):
        row = f"{i},{int(result.predictions[k])},{result.scores[k]:.6f}"
        rows.append(row + (f",{int(result.labels[k])}" if result.labels is not None else ""))
    (out_dir / "test_predictions.csv").write_text("\n".join(rows) + "\n")
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
    }
    save_atomically(record, out_dir / "evaluation.json")
    return out_dir / "evaluation.json"
