"""Test predictions from a run's best checkpoint, their scores, and the original's submission file."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lib.config import RunConfig
from lib.data import decode_tiles, load_tile_set, make_split, read_layout
from lib.models import build_model
from lib.paths import resolve
from lib.speed import autocast, host_memory, prepare_input, prepare_model, speed_settings
from lib.train import load_checkpoint, predicted_labels, resolve_device, save_atomically

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


def load_trained_model(run_dir: str | Path, checkpoint: str = "best.pt") -> tuple[torch.nn.Module, dict]:
    """A run's network with the weights of one of its checkpoints, on the CPU, in eval mode."""
    run_dir = resolve(run_dir)
    checkpoint_file = run_dir / checkpoint
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"{checkpoint_file} does not exist; train the run first (its notebook or `make run-all`)")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    saved = json.loads((run_dir / "config.json").read_text())
    # The checkpoint holds every weight, so no ImageNet file is looked for here.
    config = RunConfig(**{k: v for k, v in saved.items() if k in fields} | {"weights": "none"})
    model, _ = build_model(config)
    state = load_checkpoint(checkpoint_file)
    model.load_state_dict(state["model"])
    return model.eval(), state | {"path": str(checkpoint_file)}


@torch.inference_mode()
def predict_test_tiles(run_dir: str | Path, data_dir: str | Path, device: str = "auto", batch_size: int = 64) -> TilePredictions:
    """Predict every test tile, in id order, from `run_dir`'s best checkpoint (ToTensor only)."""
    model, checkpoint = load_trained_model(run_dir)
    config = json.loads((resolve(run_dir) / "config.json").read_text())
    torch_device = resolve_device(device)
    settings = speed_settings(torch_device, "auto")  # channels_last (and bf16 on CUDA), as training ran
    model, _ = prepare_model(model.to(torch_device), settings)

    index = read_layout(resolve(data_dir), config.get("positive_class", ""))
    if index.test_paths:
        tiles, _, _ = decode_tiles(index.test_paths, config.get("tile_size", 256), desc="decoding test tiles", cache_dir=config.get("cache_dir") or None)
        ids, labels, scored_on = index.test_ids, index.test_labels, "test"
    else:
        # Class-folder and CSV data sets carry no test set: the run's own validation tiles, rebuilt
        # from its saved config, are the only tiles it never trained on. Said wherever scores appear.
        tile_set = load_tile_set(index, config.get("tile_size", 256), skip_bad_images=config.get("skip_bad_images", False), cache_dir=config.get("cache_dir") or None,
                                 subset=config["subset"], seed=config["seed"])  # decodes only the run's own draw
        split = make_split(tile_set, config.get("split", "random"), config["valid_fraction"], config["seed"], config["subset"])
        tiles, labels = tile_set.tiles[split.valid], tile_set.labels[split.valid].numpy()
        ids = [index.name_of(tile_set.sources[i]) for i in split.valid]
        scored_on = (f"validation split of {Path(run_dir).name} ({len(ids)} tiles): the {index.layout} layout has no test set. "
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
        positive_class=config.get("positive_class", ""),
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


def save_evaluation(result: TilePredictions, metrics: dict | None, run: str, out_dir: str | Path, data_dir: str | Path) -> Path:
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
        "data_dir": str(resolve(data_dir)),
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
