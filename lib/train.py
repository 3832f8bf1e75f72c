"""The training loop: `train_one_epoch`, `evaluate`, and `fit`, which writes a run's folder.

runs/<run>/ holds: config.json, history.json (one row per epoch, written as each ends),
initial.pt (weights before training, for the filter figures), best.pt (the best validation state,
model and optimizer, as the original kept), last.pt (everything needed to continue; written after
the first epoch, then at most every checkpoint_every_s seconds, and after the last), result.json
(the summary the report reads) and tensorboard/ (the original's scalar tags).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lib.config import RunConfig
from lib.data import FileTileDataset, TileBatches, crop_for, load_tile_set, make_loader, make_split, original_augmentation, read_layout
from lib.environment import environment_record
from lib.models import BaselineCNN, build_model
from lib.paths import resolve
from lib.speed import ORIGINAL, SpeedSettings, autocast, describe, host_memory, prepare_input, prepare_model, speed_settings


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class 0 or 1: the arg-max over the two label outputs. With the original's kept 1000-way head
    the other 998 outputs are never a valid answer, so they are not allowed to win."""
    return logits[:, :2].argmax(dim=1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but PyTorch sees no CUDA device here; use 'auto' or 'cpu'")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_atomically(obj, path: Path) -> None:
    """Write to a temporary file, then rename: an interruption leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(obj, (dict, list)) and path.suffix == ".json":
        tmp.write_text(json.dumps(obj, indent=2))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def train_one_epoch(model, loader, optimizer, device, desc: str = "train", epoch: int = 0, settings: SpeedSettings = ORIGINAL,
                    check_lag: int | None = None) -> dict:  # fmt: skip
    """One pass over the training loader. Returns the original's metrics: the loss summed over
    batches, and the mean of batch accuracies."""
    model.train()
    # Metrics stay on the device and are read once per epoch: reading a GPU value (.item()) waits
    # for every queued kernel, and with data already on the GPU that wait would idle it each batch
    # while the next step is launched. The finiteness check reads the loss of `check_lag` batches
    # ago (2 on CUDA), whose work is done by then; on the CPU nothing is queued, so it reads the
    # current one, before the optimizer step.
    lag = check_lag if check_lag is not None else (2 if device.type == "cuda" else 0)
    losses, accuracies, images = [], [], 0
    start = time.perf_counter()
    for batch, (tiles, labels) in enumerate(tqdm(loader, desc=desc, unit="batch", leave=False, file=sys.stderr)):
        tiles, labels = prepare_input(tiles.to(device, non_blocking=True), settings), labels.to(device, non_blocking=True)
        with autocast(device, settings):
            logits = model(tiles)
        loss = F.cross_entropy(logits.float(), labels)
        losses.append(loss.detach())
        accuracies.append((predicted_labels(logits) == labels).float().mean())
        if batch >= lag:
            _stop_unless_finite(losses, batch - lag, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(labels)
    for batch in range(max(0, len(losses) - lag), len(losses)):
        _stop_unless_finite(losses, batch, epoch)
    loss_sum, accuracy_sum = _sums(losses, accuracies)
    seconds = time.perf_counter() - start  # after reading the sums: the device has finished the epoch
    return {"loss": loss_sum, "accuracy": accuracy_sum / len(accuracies), "images": images, "seconds": seconds}


def _stop_unless_finite(losses: list[torch.Tensor], batch: int, epoch: int) -> None:
    if not torch.isfinite(losses[batch]):
        # Stop before more optimizer steps spread it through the weights (on the CPU, before any);
        # the checkpoints on disk are older and stay as they are.
        raise FloatingPointError(f"the training loss became {losses[batch].item()} at epoch {epoch}, batch {batch}; "
                                 "training stopped, and the last good checkpoint (last.pt, once an epoch has completed) is kept")  # fmt: skip


def _sums(losses: list[torch.Tensor], accuracies: list[torch.Tensor]) -> tuple[float, float]:
    """The per-batch values summed in float64, as Python's float sum of their .item()s would."""
    return torch.stack(losses).double().sum().item(), torch.stack(accuracies).double().sum().item()


@torch.inference_mode()
def evaluate(model, loader, device, desc: str = "valid", settings: SpeedSettings = ORIGINAL) -> dict:
    """Loss summed over batches and the mean batch accuracy, without augmentation or gradients."""
    model.eval()
    losses, accuracies = [], []
    for tiles, labels in tqdm(loader, desc=desc, unit="batch", leave=False, file=sys.stderr):
        tiles, labels = prepare_input(tiles.to(device), settings), labels.to(device)
        with autocast(device, settings):
            logits = model(tiles).float()
        losses.append(F.cross_entropy(logits, labels))
        accuracies.append((predicted_labels(logits) == labels).float().mean())
    loss_sum, accuracy_sum = _sums(losses, accuracies)
    return {"loss": loss_sum, "accuracy": accuracy_sum / len(accuracies)}


def _random_state(train_loader) -> dict:
    """Every random stream training draws from, as plain tensors and numbers (weights_only-safe)."""
    return {
        "torch": torch.get_rng_state(),
        "loader": train_loader.generator.get_state(),
        "python": list(random.getstate()[1]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_random_state(state: dict, train_loader) -> None:
    torch.set_rng_state(state["torch"])
    train_loader.generator.set_state(state["loader"])
    random.setstate((3, tuple(state["python"]), None))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Config fields that may differ between an interrupted run and its resumption.
_RESUME_MAY_DIFFER = {"resume", "profile_reason", "device", "cache_dir", "checkpoint_every_s"}


def _resume_state(config: RunConfig, run_dir: Path) -> dict | None:
    """last.pt when it can be continued: written with the same config and not yet complete."""
    last, saved_config = run_dir / "last.pt", run_dir / "config.json"
    if not last.is_file() or not saved_config.is_file():
        print(f"resume: no completed epoch in {run_dir} yet; starting from the beginning")
        return None
    saved = json.loads(saved_config.read_text())
    current = json.loads(config.to_json())
    changed = sorted(k for k in current if k not in _RESUME_MAY_DIFFER and saved.get(k) != current[k])
    if changed:
        raise ValueError(f"resume: {last} was written with other parameters ({', '.join(changed)}); "
                         "resume with the same ones, or start afresh with resume=False")  # fmt: skip
    state = load_checkpoint(last)
    if state["epoch"] + 1 >= config.epochs:
        raise ValueError(f"resume: {run_dir.name} already completed all {config.epochs} epochs; nothing to resume")
    return state


def log_line(epoch: int, epochs: int, row: dict) -> str:
    """The original's per-epoch line, character for character."""
    return (
        f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} || [{epoch}/{epochs}], "
        f"train_loss = {row['train_loss']:.4f}, train_accuracy = {row['train_accuracy']:.2f}, "
        f"valid_loss = {row['valid_loss']:.4f}, valid_accuracy = {row['valid_accuracy']:.2f}"
    )


@dataclass
class RunResult:
    config: dict
    history: list[dict]
    summary: dict

    @property
    def run_dir(self) -> Path:
        return Path(self.config["runs_dir"]) / self.config["run"]


def fit(config: RunConfig) -> RunResult:
    """Train one run end to end and write its folder under runs_dir."""
    from torch.utils.tensorboard import SummaryWriter

    print(config.profile_reason)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)

    # Data: read the layout, decode the run's tiles (its subset only) once into the memory-mapped
    # cache (or read them from it), split; the loaders read batches from the cache, no copy.
    index = read_layout(config.data_dir, config.positive_class)
    print(f"data: {index.origin}; {index.describe()}")
    tensor_path = config.input_pipeline == "tensor"
    tile_set = load_tile_set(index, config.tile_size, skip_bad_images=config.skip_bad_images, cache_dir=config.cache_dir or None,
                             keep_tiles=tensor_path, subset=config.subset, seed=config.seed,
                             model_input=BaselineCNN.input_size if config.model == "baseline" else None)  # fmt: skip
    # The sizes as used (0 means "from the data"), so that config.json, resume and evaluation see them.
    config = replace(config, tile_size=tile_set.size, crop_size=crop_for(tile_set.size, config.crop_size) if config.augment else config.crop_size)
    split = make_split(tile_set, config.split, config.valid_fraction, config.seed, config.subset)
    data_notes = tile_set.notes + split.batch_notes(config.batch_size)
    for note in data_notes:
        print(f"data: {note}")
    crop = config.crop_size if config.augment else None
    if tensor_path:
        train_loader = TileBatches(tile_set.tiles, tile_set.labels, config.batch_size, shuffle=True, seed=config.seed,
                                   device=device, crop_size=crop, what="training", rows=split.train)  # fmt: skip
        valid_loader = TileBatches(tile_set.tiles, tile_set.labels, config.batch_size, shuffle=False, seed=config.seed,
                                   device=device, crop_size=None, what="validation", rows=split.valid)  # fmt: skip
        placement = f"tensor input path, tiles in {train_loader.placement}, augmented per batch on {device}"
    else:
        def files(rows, transform):
            return FileTileDataset([tile_set.sources[i] for i in rows], tile_set.labels[rows], config.tile_size, transform)

        augment = original_augmentation(crop) if crop else None
        train_loader = make_loader(files(split.train, augment), config.batch_size, True, config.seed, "training", config.loader_workers)
        valid_loader = make_loader(files(split.valid, None), config.batch_size, False, config.seed, "validation", config.loader_workers)
        placement = f"original input path: files decoded and PIL-transformed per image, {config.loader_workers} loader workers"
    n_train, n_valid = len(split.train), len(split.valid)
    print(f"split: {split.description}; {n_train} training and {n_valid} validation tiles "
          f"({'subset of ' + str(config.subset) if config.subset else 'all'} of {len(tile_set.labels)} labelled); device: {device}")

    model, weights = build_model(config)
    if weights.notice:
        print(weights.notice)
    settings = speed_settings(device, config.precision, config.compile)
    model, step_model = prepare_model(model.to(device), settings)
    print(f"speed: {placement}; {describe(settings)}")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min") if config.scheduler == "plateau" else None

    history: list[dict] = []
    best_accuracy = -1.0
    start_epoch = 0
    resumed = _resume_state(config, run_dir) if config.resume else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resumed["scheduler"])
        history = json.loads((run_dir / "history.json").read_text())[: resumed["epoch"] + 1]
        best_accuracy = max(r["valid_accuracy"] for r in history)
        start_epoch = resumed["epoch"] + 1
        _restore_random_state(resumed["random"], train_loader)
        print(f"resuming {config.run} after its completed epoch {resumed['epoch']} (from {run_dir / 'last.pt'})")
    else:
        # A fresh start must not leave an earlier run's state behind: resuming later would
        # otherwise continue that run's last.pt under this run's config.
        for stale in ("last.pt", "best.pt", "history.json", "result.json"):
            (run_dir / stale).unlink(missing_ok=True)
        save_atomically({"model": model.state_dict()}, run_dir / "initial.pt")
    (run_dir / "config.json").write_text(config.to_json())

    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch)
    earlier = history[-1]["elapsed_s"] if history else 0.0
    start = time.perf_counter() - earlier
    last_saved = -float("inf")  # the first completed epoch is always saved
    epochs_bar = tqdm(range(start_epoch, config.epochs), desc=config.run, unit="epoch", file=sys.stderr,
                      initial=start_epoch, total=config.epochs)  # fmt: skip
    for epoch in epochs_bar:
        with host_memory(settings):
            trained = train_one_epoch(step_model, train_loader, optimizer, device, f"epoch {epoch} train", epoch, settings)
            validated = evaluate(step_model, valid_loader, device, f"epoch {epoch} valid", settings)
        if scheduler is not None:
            scheduler.step(validated["loss"])  # on the summed validation loss, as the original
        row = {
            "epoch": epoch,
            "train_loss": trained["loss"],
            "train_accuracy": trained["accuracy"],
            "valid_loss": validated["loss"],
            "valid_accuracy": validated["accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "train_images_per_s": trained["images"] / trained["seconds"],
            "elapsed_s": time.perf_counter() - start,
        }
        history.append(row)
        epochs_bar.write(log_line(epoch, config.epochs, row))
        for tag in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
            writer.add_scalar(tag, row[tag], epoch)
        writer.flush()
        if row["valid_accuracy"] > best_accuracy:
            best_accuracy = row["valid_accuracy"]
            save_atomically(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "valid_accuracy": best_accuracy},
                run_dir / "best.pt",
            )
        # Everything needed to continue after this epoch as if never stopped, random state included.
        # A ResNet50's is 300 MB: on a GPU, where an epoch takes a second, writing it every epoch
        # would cost more than training, so it is written at most every checkpoint_every_s (and
        # after the first and the last epoch); a resumed run repeats the epochs since.
        last_epoch = epoch == config.epochs - 1
        if last_epoch or time.perf_counter() - last_saved >= config.checkpoint_every_s:
            save_atomically(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler else None, "epoch": epoch,
                 "random": _random_state(train_loader)},
                run_dir / "last.pt",
            )  # fmt: skip
            last_saved = time.perf_counter()
        save_atomically(history, run_dir / "history.json")
    writer.close()
    elapsed = time.perf_counter() - start
    print(f"End of training, elapsed time : {int(elapsed // 60)} min {int(elapsed % 60)} sec.")

    best_row = max(history, key=lambda r: r["valid_accuracy"])
    summary = {
        "run": config.run,
        "title": config.title,
        "profile": config.profile,
        "profile_reason": config.profile_reason,
        "epochs": config.epochs,
        "final_valid_accuracy": history[-1]["valid_accuracy"],
        "best_valid_accuracy": best_row["valid_accuracy"],
        "best_epoch": best_row["epoch"],
        "final_valid_loss": history[-1]["valid_loss"],
        "elapsed_s": elapsed,
        "train_images_per_s": sum(r["train_images_per_s"] for r in history) / len(history),
        "n_train": n_train,
        "n_valid": n_valid,
        "input_path": placement,
        "speed_settings": describe(settings),
        "n_labelled": len(tile_set.labels),
        "split": split.description,
        "data_dir": str(index.data_dir),
        "data_origin": index.origin,
        "data_layout": index.layout,
        "label_rule": index.label_rule,
        "data_notes": data_notes,
        "decoding": asdict(tile_set.record) | {"bad": tile_set.record.bad[:100]},
        "weights": asdict(weights),
        "environment": environment_record(str(device)),
    }
    save_atomically(summary, run_dir / "result.json")
    return RunResult(config=json.loads(config.to_json()), history=history, summary=summary)


def load_result(run: str, runs_dir: str | Path) -> RunResult:
    """A finished run's saved results, with a clear error when it has not run."""
    run_dir = resolve(runs_dir) / run
    result_file = run_dir / "result.json"
    if not result_file.is_file():
        raise FileNotFoundError(f"run {run!r} has no results at {result_file}; execute its notebook (or `make run-all`) first")
    return RunResult(
        config=json.loads((run_dir / "config.json").read_text()),
        history=json.loads((run_dir / "history.json").read_text()),
        summary=json.loads(result_file.read_text()),
    )


def load_checkpoint(path: str | Path) -> dict:
    """Our checkpoints are plain dicts of tensors and numbers, so the safe loader takes them."""
    return torch.load(path, map_location="cpu", weights_only=True)
