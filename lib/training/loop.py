"""The training loop: `train_one_epoch`, `evaluate`, and `fit`, which trains one run in labelled
stages (data, model, resume, loop, record) and writes its folder through lib/training/run_folder.py,
in one process or, with nproc_per_node > 1, on several under torchrun (lib/training/distributed.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shlex
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
import torch
import torch.nn.functional as F

from lib.config import PRETRAINED_FIELDS, RunConfig
from lib.data import (FileTileDataset, Split, StainTarget, TileBatches, TileIndex, TileSet, batch_plan, epoch_order, load_tile_set, make_loader,
                      make_split, normalize_tile_set, original_augmentation, read_run_layout, read_stain_reference, resolve_sizes,
                      run_stain_target)
from lib.metrics import class_counts, majority_rate
from lib.models import WeightsOutcome, build_model, predicted_labels
from lib.progress import progress
from lib.training import distributed
from lib.training.distributed import ONE_PROCESS, Ranks
from lib.training.environment import environment_record
from lib.training.run_folder import RunFolder, RunResult
from lib.training.speed import ORIGINAL, SpeedSettings, autocast, describe, host_memory, prepare_input, prepare_model, resolve_device, speed_settings


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_one_epoch(model, loader, optimizer, device, desc: str = "train", epoch: int = 0, settings: SpeedSettings = ORIGINAL,
                    check_lag: int | None = None, ranks: Ranks = ONE_PROCESS) -> dict:  # fmt: skip
    """One pass over the training loader. Returns the original's metrics: the loss summed over
    batches (each batch's mean loss), and the mean of batch accuracies, with "images" (trained, over
    all ranks) and "seconds". Under torchrun (`ranks`), the loader gives this rank's share of each
    global batch (EpochOrder): the loss each rank differentiates is its share's summed loss times
    world / global batch, so that DDP's mean over ranks is the global batch's mean gradient, and the
    per-batch sums are all-reduced once at the epoch's end, so the metrics are the global batches'."""
    model.train()
    order = epoch_order(loader)
    if order is not None:
        order.set_epoch(epoch)
    # Metrics stay on the device and are read once per epoch: reading a GPU value (.item()) waits
    # for every queued kernel, and with data already on the GPU that wait would idle it each batch
    # while the next step is launched. The finiteness check reads the loss of `check_lag` batches
    # ago (2 on CUDA), whose work is done by then; on the CPU nothing is queued, so it reads the
    # current one, before the optimizer step.
    lag = check_lag if check_lag is not None else (2 if device.type == "cuda" else 0)
    losses, correct, sizes = [], [], []
    start = time.perf_counter()
    for batch, (tiles, labels) in enumerate(progress(loader, desc=desc, unit="batch", leave=False)):
        tiles, labels = prepare_input(tiles.to(device, non_blocking=True), settings), labels.to(device, non_blocking=True)
        size = order.batch_size if order is not None else len(labels) * ranks.world  # the global batch
        with autocast(device, settings):
            logits = model(tiles)
        summed = F.cross_entropy(logits.float(), labels, reduction="sum")
        losses.append(summed.detach())
        correct.append((predicted_labels(logits) == labels).sum())
        sizes.append(size)
        if batch >= lag:
            _stop_unless_finite(losses, batch - lag, epoch)
        optimizer.zero_grad(set_to_none=True)
        (summed * (ranks.world / size)).backward()
        optimizer.step()
    for batch in range(max(0, len(losses) - lag), len(losses)):
        _stop_unless_finite(losses, batch, epoch)
    loss_sum, accuracy_sum = _sums(losses, correct, sizes, ranks)
    seconds = time.perf_counter() - start  # after reading the sums: the device has finished the epoch
    return {"loss": loss_sum, "accuracy": accuracy_sum / len(sizes), "images": sum(sizes), "seconds": seconds}


def _stop_unless_finite(losses: list[torch.Tensor], batch: int, epoch: int) -> None:
    if not torch.isfinite(losses[batch]):
        # Stop before more optimizer steps spread it through the weights (on the CPU, before any);
        # the checkpoints on disk are older and stay as they are.
        raise FloatingPointError(f"the training loss became {losses[batch].item()} at epoch {epoch}, batch {batch}; "
                                 "training stopped, and the last good checkpoint (last.pt, once an epoch has completed) is kept")  # fmt: skip


def _sums(losses: list[torch.Tensor], correct: list[torch.Tensor], sizes: list[int], ranks: Ranks) -> tuple[float, float]:
    """(the sum over batches of each batch's mean loss, the sum over batches of each batch's accuracy),
    in float64, from each batch's summed loss and count of right predictions on this rank, all-reduced
    over the ranks in one operation, and each global batch's size."""
    per_batch = distributed.sum_across(torch.stack([torch.stack(losses).double(), torch.stack(correct).double()]), ranks)
    per_batch = per_batch / torch.tensor(sizes, dtype=torch.float64, device=per_batch.device)
    return per_batch[0].sum().item(), per_batch[1].sum().item()


@torch.inference_mode()
def evaluate(model, loader, device, desc: str = "valid", settings: SpeedSettings = ORIGINAL, ranks: Ranks = ONE_PROCESS) -> dict:
    """Loss summed over batches (each batch's mean) and the mean batch accuracy, without augmentation
    or gradients. Under torchrun each rank scores its share of each batch and the sums are
    all-reduced: the figures of one process scoring every batch whole."""
    model.eval()
    order = epoch_order(loader)
    losses, correct, sizes = [], [], []
    for tiles, labels in progress(loader, desc=desc, unit="batch", leave=False):
        tiles, labels = prepare_input(tiles.to(device), settings), labels.to(device)
        with autocast(device, settings):
            logits = model(tiles).float()
        losses.append(F.cross_entropy(logits, labels, reduction="sum"))
        correct.append((predicted_labels(logits) == labels).sum())
        sizes.append(order.batch_size if order is not None else len(labels) * ranks.world)
    loss_sum, accuracy_sum = _sums(losses, correct, sizes, ranks)
    return {"loss": loss_sum, "accuracy": accuracy_sum / len(sizes)}


def _random_state(ranks: Ranks) -> dict:
    """Every random stream training draws from, as plain tensors and numbers (weights_only-safe): this
    process's, and under torchrun every rank's augmentation stream ("ranks", gathered: a collective,
    called by every rank). The tile order needs none: it is drawn from seed + epoch."""
    own = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    everyone = distributed.gathered(own, ranks) if ranks.distributed else []
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "ranks": everyone,
    }


def _restore_random_state(state: dict, ranks: Ranks) -> None:
    """This process's streams as `state` saved them; rank r > 0 takes its own from state["ranks"] (when
    the run resumes on as many processes as it was saved from; else it keeps its fresh stream, said)."""
    if ranks.main:
        torch.set_rng_state(state["torch"])
        random.setstate((3, tuple(state["python"]), None))
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        saved = len(state.get("ranks") or []) or 1
        if saved != ranks.world:
            print(f"resume: last.pt was saved by {saved} process(es), this run has {ranks.world}: the tile order is the same (seed + "
                  "epoch), but the other ranks' augmentation draws start from fresh streams")  # fmt: skip
        return
    mine = state.get("ranks") or []
    if len(mine) == ranks.world:
        torch.set_rng_state(mine[ranks.rank]["torch"])
        if mine[ranks.rank]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(mine[ranks.rank]["cuda"])


def log_line(epoch: int, epochs: int, row: dict) -> str:
    """The original's per-epoch line, character for character."""
    return (
        f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} || [{epoch}/{epochs}], "
        f"train_loss = {row['train_loss']:.4f}, train_accuracy = {row['train_accuracy']:.2f}, "
        f"valid_loss = {row['valid_loss']:.4f}, valid_accuracy = {row['valid_accuracy']:.2f}"
    )


# Config fields that may differ between an interrupted run and its resumption: how the run is reached,
# where it lives and runs (a runs folder moved elsewhere resumes), and how often it saves.
_RESUME_MAY_DIFFER = {"resume", "fresh", "profile_reason", "device", "runs_dir", "cache_dir", "checkpoint_every_s"}


@dataclass
class RunData:
    """The data stage's output: the tiles read, how they were split, and the two loaders."""

    index: TileIndex
    tile_set: TileSet
    split: Split
    train_loader: object  # TileBatches or a DataLoader: yields (float tiles (B, 3, H, W) in [0, 1], int64 labels (B,))
    valid_loader: object
    placement: str  # where the tiles wait and where they are augmented, in words
    notes: list[str]  # what the data stage did, for the run's output and record (sizes, subset, cache, decoding, batches)
    stain_target: StainTarget | None = None  # with stain_normalize: what the tiles were normalised to (runs/<run>/stain_target.json)


@dataclass
class Training:
    """The model stage's output: the network and what trains it."""

    model: torch.nn.Module  # the network whose state_dict is saved
    step_model: torch.nn.Module  # what the loop calls (the compiled model when compile=True)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    settings: SpeedSettings
    weights: WeightsOutcome
    valid_model: torch.nn.Module | None = None  # what validation calls (step_model when None)


@dataclass
class Start:
    """The resume stage's output: where the loop begins."""

    history: list[dict]
    epoch: int  # the first epoch to train
    best_accuracy: float  # the best validation accuracy so far (-1 before any epoch)


def load_run_data(config: RunConfig, index: TileIndex, device: torch.device, size_note: str = "", ranks: Ranks = ONE_PROCESS) -> RunData:
    """Stage 1, data: decode the run's tiles (its subset only, at the tile size `config` holds,
    resolved before: resolve_sizes, whose reason is `size_note`) once into the memory-mapped cache
    (or read them from it), split, normalise their stain when `config.stain_normalize` asks (to a
    target from stain_reference or fitted on training tiles only; once, cached apart), and build the
    loaders for `config.input_pipeline`, which read batches from the cache, no copy. Under torchrun
    rank 0 fills the cache first and the other ranks map it (distributed.in_turns), and each loader
    gives this rank's share of each batch; ValueError when a batch holds fewer tiles than ranks."""
    tensor_path = config.input_pipeline == "tensor"

    def tiles_and_split():
        tile_set = load_tile_set(index, config.tile_size, skip_bad_images=config.skip_bad_images, cache_dir=config.cache_dir or None,
                                 keep_tiles=tensor_path, subset=config.subset, seed=config.seed, multi_page=config.multi_page,
                                 non_square=config.non_square, size_note=size_note)  # fmt: skip
        split = make_split(tile_set, config.split, config.valid_fraction, config.seed, config.subset)
        stain_target = None
        if config.stain_normalize != "none":
            # Fitted after the split, on training tiles only: validation and test tiles never shape the target.
            stain_target = run_stain_target(config.stain_normalize, config.stain_reference, tile_set.tiles, split.train, config.seed)
            tile_set = normalize_tile_set(tile_set, stain_target, device)
        return tile_set, split, stain_target

    tile_set, split, stain_target = distributed.in_turns(ranks, tiles_and_split)
    shares = {"rank": ranks.rank, "world": ranks.world}
    data_notes = tile_set.notes + split.batch_notes(config.batch_size)
    for note in data_notes:
        print(f"data: {note}")
    crop = config.crop_size if config.augment else None
    hed = (f"; HED colour augmentation of training tiles (scale {config.hed_scale}, shift {config.hed_shift})"
           if config.hed_scale or config.hed_shift else "")  # fmt: skip
    if tensor_path:
        train_loader = TileBatches(tile_set.tiles, tile_set.labels, config.batch_size, shuffle=True, seed=config.seed, device=device,
                                   crop_size=crop, what="training", rows=split.train, hed_scale=config.hed_scale,
                                   hed_shift=config.hed_shift, **shares)  # fmt: skip
        valid_loader = TileBatches(tile_set.tiles, tile_set.labels, config.batch_size, shuffle=False, seed=config.seed,
                                   device=device, crop_size=None, what="validation", rows=split.valid, **shares)  # fmt: skip
        placement = f"tensor input path, tiles in {train_loader.placement}, augmented per batch on {device}{hed}"
    else:
        def files(rows, transform, hed=(0.0, 0.0)):
            return FileTileDataset([tile_set.sources[i] for i in rows], tile_set.labels[rows], config.tile_size, transform, config.multi_page,
                                   config.non_square, *hed)  # fmt: skip

        augment = original_augmentation(crop) if crop else None
        train_set = files(split.train, augment, (config.hed_scale, config.hed_shift))
        train_loader = make_loader(train_set, config.batch_size, True, config.seed, "training", config.loader_workers, **shares)
        valid_loader = make_loader(files(split.valid, None), config.batch_size, False, config.seed, "validation", config.loader_workers,
                                   **shares)  # fmt: skip
        placement = f"original input path: files decoded and PIL-transformed per image, {config.loader_workers} loader workers{hed}"
    print(f"split: {split.description}; {len(split.train)} training and {len(split.valid)} validation tiles "
          f"({'a subset of ' + str(config.subset) if 0 < config.subset < len(tile_set.labels) else 'all'} of {len(tile_set.labels)} labelled); device: {device}")
    if ranks.distributed:
        batch = batch_plan(len(split.train), config.batch_size, "training")
        each = f"{batch // ranks.world}" + (f" or {batch // ranks.world + 1}" if batch % ranks.world else "")
        print(f"processes: {ranks.world} under torchrun ({ranks.backend}, {ranks.local_world} per node); each global batch of {batch} "
              f"training tiles is shared among them, {each} tiles each; gradients all-reduced (DistributedDataParallel)")
    return RunData(index, tile_set, split, train_loader, valid_loader, placement, data_notes, stain_target)


def build_training(config: RunConfig, device: torch.device, ranks: Ranks = ONE_PROCESS) -> Training:
    """Stage 2, model: the network (with its weights policy), its speed settings, Adam and, for
    `scheduler="plateau"`, ReduceLROnPlateau. Under torchrun the training step calls the network
    through DistributedDataParallel (every rank starts from rank 0's weights), and each rank other
    than 0 then draws its augmentation from a stream of its own."""
    model, weights = build_model(config)
    if weights.notice:
        print(weights.notice)
    settings = speed_settings(device, config.precision, config.compile)
    model, step_model = prepare_model(model.to(device), settings, wrap=lambda m: distributed.data_parallel(m, ranks, device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min") if config.scheduler == "plateau" else None
    seed = distributed.rank_seed(config.seed, ranks)
    if seed is not None:
        torch.manual_seed(seed)
    # Validation calls the network itself: DDP's forward would broadcast buffers and prepare a backward it never gets.
    valid_model = step_model if not ranks.distributed else (torch.compile(model) if settings.compile else model)
    return Training(model, step_model, optimizer, scheduler, settings, weights, valid_model)


def resume_or_start(config: RunConfig, folder: RunFolder, training: Training, data: RunData,
                    resumed: tuple[dict | None, str] | None = None, ranks: Ranks = ONE_PROCESS) -> Start:  # fmt: skip
    """Stage 3, resume: continue after the epoch last.pt holds when the folder holds an unfinished
    run with these parameters (by itself, or asked with `resume`); otherwise start from the beginning,
    clearing an earlier run's state, and record the initial weights and the split. Raises ValueError
    where continuing is asked for or progress would be lost (see _resume_state). `resumed`: what
    _resume_state returned, when fit asked it before loading the data."""
    resumed, why = resumed or _resume_state(config, folder)
    if resumed is None:
        # A fresh start must not leave an earlier run's state behind: resuming later would
        # otherwise continue that run's last.pt under this run's config.
        folder.start(fresh=True)
        folder.save_checkpoint("initial", {"model": training.model.state_dict()})
        name_of = data.index.name_of
        folder.write_split([name_of(data.tile_set.sources[i]) for i in data.split.train],
                           [name_of(data.tile_set.sources[i]) for i in data.split.valid])  # fmt: skip
        if data.stain_target is not None:
            folder.write_stain_target(data.stain_target)
        folder.write_config(config)
        return Start(history=[], epoch=0, best_accuracy=-1.0)
    training.model.load_state_dict(resumed["model"])
    training.optimizer.load_state_dict(resumed["optimizer"])
    if training.scheduler is not None:
        training.scheduler.load_state_dict(resumed["scheduler"])
    history = folder.read_history()[: resumed["epoch"] + 1]
    _restore_random_state(resumed["random"], ranks)
    if ranks.main:
        if data.stain_target is not None:  # fitted again as before (seeded): the same target
            folder.write_stain_target(data.stain_target)
        folder.write_config(config)
    print(f"resuming {config.run} after its completed epoch {resumed['epoch']} (from {folder.checkpoint_file('last')}){why}")
    return Start(history=history, epoch=resumed["epoch"] + 1, best_accuracy=max(r["valid_accuracy"] for r in history))


def _resume_state(config: RunConfig, folder: RunFolder) -> tuple[dict | None, str]:
    """(last.pt to continue from, or None to start from the beginning; why, for the resume line).

    A plain run never discards progress: a last.pt of an unfinished run (no result.json, fewer
    epochs than its config.json's) is continued when it was written with these parameters, and
    otherwise refused (ValueError naming the parameters, resume and fresh). `fresh` discards it on
    purpose; `resume` insists on continuing (ValueError when last.pt was written with other
    parameters or completed all epochs). A finished run, or none, starts from the beginning."""
    last = folder.checkpoint_file("last")
    if config.fresh:
        if last.is_file() or folder.has_result():
            print(f"fresh: discarding what {folder.path} holds and training {config.run} from the beginning")
        return None, ""
    if not last.is_file() or not folder.config_file.is_file():
        if config.resume:
            print(f"resume: no completed epoch in {folder.path} yet; starting from the beginning")
        return None, ""
    if not config.resume and folder.has_result():
        return None, ""  # a finished run: run again, it trains again, as a rerun notebook does
    saved = folder.read_config()
    changed = changed_parameters(saved, config)
    if not config.resume:
        done = int(folder.load_checkpoint("last", lazily=True)["epoch"]) + 1
        if done >= saved.get("epochs", 0):
            return None, ""  # every epoch done but its result gone: nothing to continue (resume says so)
        if changed:
            values = "; ".join(f"{k}: {saved.get(k)!r} there, {getattr(config, k)!r} now" for k in changed)
            given = " ".join(f"{k.upper()}={shlex.quote(str(saved.get(k)))}" for k in changed)
            raise ValueError(f"{last} holds {done} completed epoch(s) of {config.run}'s {saved.get('epochs')}, written with other "
                             f"parameters ({values}); a plain run does not discard them. To continue it, run with the parameters it "
                             f"was written with and resume: make run-all RESUME=true {given} (in its notebook: resume = True and "
                             "those values). To discard it and train from the beginning: make run-all FRESH=true "
                             f"RUNS={config.run} (fresh = True)")  # fmt: skip
        return folder.load_checkpoint("last"), f"; {folder.path} held an unfinished run with these parameters (fresh=True starts over)"
    if changed:
        values = "; ".join(f"{k}: {saved.get(k)!r} there, {getattr(config, k)!r} now" for k in changed)
        raise ValueError(f"resume: {last} was written with other parameters ({values}); resume with the same ones (make: "
                         "NAME=value in upper case), or discard it and start from the beginning with fresh=True (FRESH=true)")  # fmt: skip
    state = folder.load_checkpoint("last")
    if state["epoch"] + 1 >= config.epochs:
        raise ValueError(f"resume: {config.run} already completed all {config.epochs} epochs, but its result.json is gone from "
                         f"{folder.path} (its checkpoints and history are there); to train it again, set resume=False (RESUME=false)")  # fmt: skip
    return state, ""


def changed_parameters(saved: dict, config: RunConfig, also_ignore=frozenset()) -> list[str]:
    """The fields whose saved (config.json, as RunFolder.read_config reads it) and current values
    differ, those that may differ on resume aside."""
    return _changed_parameters(saved, dataclasses.asdict(config), also_ignore)


def _changed_parameters(saved: dict, current: dict, also_ignore=frozenset()) -> list[str]:
    """The fields whose saved (config.json) and current values differ, those that may differ on resume
    aside. A field the saved config lacks (a later workbook added it) counts as its default, which is
    what the run that saved it did (nproc_per_node: one process)."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
    return sorted(k for k in current if k not in _RESUME_MAY_DIFFER | set(also_ignore) and saved.get(k, defaults.get(k)) != current[k])


def _finished_result(config: RunConfig, folder: RunFolder) -> RunResult | None:
    """The run's saved result when it finished all its epochs with these parameters (those that
    may differ on resume aside), checked whole (RunFolder.check_whole: DamagedRunFolder names a file
    that disagrees): resuming it has nothing to do, so `make run-all RESUME=true` can re-execute a
    finished run's notebook without training it again. None otherwise."""
    if not folder.has_result() or not folder.config_file.is_file():
        return None
    # A weights file given to every run (`make run-all WEIGHTS=...`) leaves a network without pretrained weights as it was.
    unused = set(PRETRAINED_FIELDS) if config.model != "resnet50" else set()
    if changed_parameters(folder.read_config(), config, also_ignore=unused):
        return None  # other parameters: _resume_state names them
    result = folder.check_whole()
    return result if len(result.history) >= config.epochs else None


def train_epochs(config: RunConfig, folder: RunFolder, training: Training, data: RunData, start: Start,
                 ranks: Ranks = ONE_PROCESS) -> tuple[list[dict], float]:  # fmt: skip
    """Stage 4, the loop: epochs from `start.epoch`, each logged in the original's line and
    TensorBoard tags, history.json rewritten, best.pt on a better validation accuracy, last.pt as
    checkpoint_every_s says. Returns the history and the elapsed seconds (an interrupted run's included).
    Under torchrun every rank trains and validates its shares, and rank 0 alone logs and writes."""
    from torch.utils.tensorboard import SummaryWriter

    model, optimizer, scheduler, settings = training.model, training.optimizer, training.scheduler, training.settings
    device = next(model.parameters()).device
    history, best_accuracy = list(start.history), start.best_accuracy
    writer = SummaryWriter(str(folder.tensorboard_dir), purge_step=start.epoch) if ranks.main else None
    began = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    last_saved = -float("inf")  # the first completed epoch is always saved
    epochs_bar = progress(range(start.epoch, config.epochs), desc=config.run, unit="epoch", initial=start.epoch, total=config.epochs)
    for epoch in epochs_bar:
        with host_memory(settings):
            trained = train_one_epoch(training.step_model, data.train_loader, optimizer, device, f"epoch {epoch} train", epoch, settings,
                                      ranks=ranks)  # fmt: skip
            distributed.share_buffers(model, ranks)
            validated = evaluate(training.valid_model or training.step_model, data.valid_loader, device, f"epoch {epoch} valid", settings,
                                 ranks)  # fmt: skip
        if scheduler is not None:
            scheduler.step(validated["loss"])  # on the summed validation loss, as the original (all-reduced: the same on every rank)
        row = {
            "epoch": epoch,
            "train_loss": trained["loss"],
            "train_accuracy": trained["accuracy"],
            "valid_loss": validated["loss"],
            "valid_accuracy": validated["accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "train_images_per_s": trained["images"] / trained["seconds"],
            "elapsed_s": time.perf_counter() - began,
        }
        history.append(row)
        epochs_bar.write(log_line(epoch, config.epochs, row))
        # Under torchrun every rank's random state goes into last.pt: gathered every epoch (a collective,
        # so every rank takes part), written when rank 0's clock says.
        random_state = _random_state(ranks) if ranks.distributed else None
        if not ranks.main:
            continue
        for tag in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
            writer.add_scalar(tag, row[tag], epoch)
        writer.flush()
        if row["valid_accuracy"] > best_accuracy:
            best_accuracy = row["valid_accuracy"]
            folder.save_checkpoint("best", {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                                            "valid_accuracy": best_accuracy})  # fmt: skip
        # Everything needed to continue after this epoch as if never stopped, random state included.
        # A ResNet50's is 300 MB: on a GPU, where an epoch takes a second, writing it every epoch
        # would cost more than training, so it is written at most every checkpoint_every_s (and
        # after the first and the last epoch); a resumed run repeats the epochs since.
        if epoch == config.epochs - 1 or time.perf_counter() - last_saved >= config.checkpoint_every_s:
            folder.save_checkpoint("last", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None, "epoch": epoch,
                "random": random_state or _random_state(ranks),
            })  # fmt: skip
            last_saved = time.perf_counter()
        folder.write_history(history)
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - began
    print(f"End of training, elapsed time : {int(elapsed // 60)} min {int(elapsed % 60)} sec.")
    return history, elapsed


def validated_rows(valid: np.ndarray, batch_size: int) -> np.ndarray:
    """The validation tiles (positions) an epoch scores: unshuffled, with drop_last as the original,
    the first floor(n / b) batches, b the batch size the loader really uses (batch_plan: all of them
    in one smaller batch when they are fewer than batch_size). The mean of their batch accuracies is
    their accuracy."""
    b = batch_plan(len(valid), batch_size, "validation")
    return valid[: len(valid) // b * b]


def class_balance(data: RunData, batch_size: int) -> dict:
    """Class counts and majority-class rates of the training tiles and of the validation tiles
    scored: the accuracy that predicting one class for every tile reaches, beside which every
    accuracy of the run is to be read."""
    labels = data.tile_set.labels
    valid = labels[validated_rows(data.split.valid, batch_size)]
    return {
        "train_class_counts": class_counts(labels[data.split.train]),
        "train_majority_rate": majority_rate(labels[data.split.train]),
        "valid_class_counts": class_counts(valid),
        "valid_majority_rate": majority_rate(valid),
        "n_valid_scored": len(valid),
    }


def class_balance_line(balance: dict) -> str:
    (t0, t1), (v0, v1) = balance["train_class_counts"], balance["valid_class_counts"]
    return (f"classes: training {t0} tiles of class 0, {t1} of class 1 (majority-class rate {balance['train_majority_rate']:.4f}); "
            f"the {balance['n_valid_scored']} validation tiles each epoch scores (drop_last) {v0} and {v1} (majority-class rate "
            f"{balance['valid_majority_rate']:.4f}). Predicting one class for every tile reaches these accuracies.")  # fmt: skip


def record_result(config: RunConfig, folder: RunFolder, data: RunData, training: Training, history: list[dict], elapsed: float,
                  ranks: Ranks = ONE_PROCESS) -> RunResult:  # fmt: skip
    """Stage 5, record: the run's summary in result.json, what the report reads (written by rank 0)."""
    best_row = max(history, key=lambda r: r["valid_accuracy"])
    record = data.tile_set.record
    balance = class_balance(data, config.batch_size)
    print(f"valid_accuracy (the mean of batch accuracies, as the original): best {best_row['valid_accuracy']:.4f} (epoch "
          f"{best_row['epoch']}), final {history[-1]['valid_accuracy']:.4f}, beside a majority-class rate of "
          f"{balance['valid_majority_rate']:.4f} on the same {balance['n_valid_scored']} tiles")  # fmt: skip
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
        "n_train": len(data.split.train),
        "n_valid": len(data.split.valid),
        **balance,
        "input_path": data.placement,
        "precision": training.settings.precision,
        "speed_settings": describe(training.settings),
        "n_labelled": len(data.tile_set.labels),
        "split": data.split.description,
        "data_dir": str(data.index.data_dir),
        "data_origin": data.index.origin,
        "data_layout": data.index.layout,
        "label_rule": data.index.label_rule,
        "data_notes": data.notes,
        "stain": ({"normalize": config.stain_normalize, "target": data.stain_target.describe(), "digest": data.stain_target.digest(),
                   "kept_as_decoded": data.tile_set.stain_kept} if data.stain_target is not None else None),  # fmt: skip
        "decoding": asdict(record) | {"bad": record.bad[:100]},
        "weights": asdict(training.weights),
        "processes": ranks.describe(),
        "environment": environment_record(str(next(training.model.parameters()).device)),
    }
    if ranks.main:
        folder.write_result(summary)
    return RunResult(config=dataclasses.asdict(config), history=history, summary=summary)


def fit(config: RunConfig) -> RunResult:
    """Train one run end to end and write its folder, runs_dir/<run>/ (see lib/training/run_folder.py):
    in this process, or with nproc_per_node > 1 on that many processes under torchrun (started here
    and relayed, lib/training/distributed.py; inside torchrun's processes, as one of them).
    Raises LayoutError/BadImagesError (data), FileNotFoundError/ValueError (weights, resume; a plain run
    over an unfinished one with other parameters; processes the machine cannot give), DamagedRunFolder
    (a file of the run folder that cannot be read), FolderInUse (another process writes the run or its
    runs_dir), FloatingPointError (a non-finite loss) and DistributedRunFailed (a process under torchrun
    failed or was killed), each naming the file, parameter, process, rank or epoch and batch."""
    if distributed.under_torchrun():
        ranks, device = distributed.join(config)
        try:
            return _fit_here(config, ranks, device)
        finally:
            distributed.leave(ranks)
    if config.nproc_per_node > 1:
        return _fit_under_torchrun(config)
    return _fit_here(config, ONE_PROCESS, resolve_device(config.device))


def _sizes_and_finished(config: RunConfig, folder: RunFolder) -> tuple[TileIndex, RunConfig, str, RunResult | None]:
    """Stage 0, sizes: the tile and crop sizes resolved once, before anything is read or written, so
    that every stage, config.json, resume and the evaluation see the one config the run trains with;
    and, asked to resume, the run's saved result when it already finished with these parameters."""
    if config.stain_reference:
        read_stain_reference(config.stain_reference)  # a missing or unreadable reference, named before anything is read
    index = read_run_layout(config)
    print(f"data: {index.origin}; {index.describe()}")
    config, size_note = resolve_sizes(config, index)
    finished = _finished_result(config, folder) if config.resume else None
    if finished is not None:
        print(f"resume: {config.run} already completed all {config.epochs} epochs with these parameters; "
              f"its results in {folder.path} are kept")  # fmt: skip
    return index, config, size_note, finished


def _fit_here(config: RunConfig, ranks: Ranks, device: torch.device) -> RunResult:
    """The run trained by this process: the whole of it, or under torchrun its rank's share."""
    print(config.profile_reason)
    seed_everything(config.seed)
    folder = RunFolder(config.run_dir)
    # One writer per run folder, from before anything is read to its result: a second fit of this run,
    # or a pipeline on this runs_dir, is refused at once by name (lib/writer_lock.py). Under torchrun,
    # rank 0 is the writer.
    with folder.writer() if ranks.main else contextlib.nullcontext():
        # In turns: sizing reads the tiles' headers into the tile cache, which one process writes at a time.
        index, config, size_note, finished = distributed.in_turns(ranks, lambda: _sizes_and_finished(config, folder))
        if finished is not None:
            return finished
        resumed = _resume_state(config, folder)  # before the data is read: a refusal costs nothing
        distributed.barrier(ranks)  # every rank has read the folder before rank 0 changes it
        data = load_run_data(config, index, device, size_note, ranks)
        print(class_balance_line(class_balance(data, config.batch_size)))
        training = build_training(config, device, ranks)
        print(f"speed: {data.placement}; {describe(training.settings)}")
        start = resume_or_start(config, folder, training, data, resumed, ranks)
        history, elapsed = train_epochs(config, folder, training, data, start, ranks)
        return record_result(config, folder, data, training, history, elapsed, ranks)


def _fit_under_torchrun(config: RunConfig, entry: tuple[str, ...] = ("-m", distributed.ENTRY_MODULE)) -> RunResult:
    """nproc_per_node processes on this node: the config written to runs/<run>/launch.json (under the
    run's lock, so a run another process trains is refused first), torchrun started on the entry point
    (`entry`, the module lib.training; tests give a script), its output relayed here, and the finished
    run folder read as a one-process run's. A finished run asked to resume is read without starting
    torchrun. Raises DistributedRunFailed naming the rank that failed and the command that resumes."""
    folder = RunFolder(config.run_dir)
    if config.resume:  # a finished run is read here, without starting torchrun (the pipeline redraws runs this way)
        _, _, _, finished = _sizes_and_finished(config, folder)
        if finished is not None:
            return finished
    distributed.check_processes(config)
    with folder.writer():
        distributed.write_launch_file(config, folder.path)
    n = config.nproc_per_node
    command = distributed.torchrun_command(n, [*entry, str(folder.path)])
    backend = "nccl, one GPU each" if distributed._wants_cuda(config.device) else "gloo, sharing the CPU's cores"
    print(f"{config.run}: {n} processes ({backend}): {distributed.shown_command(command)}", flush=True)
    start = len(folder.read_history()) if config.resume and folder.history_file.is_file() else 0
    status, lines = distributed.run_torchrun(command, distributed.process_environment(n, config.device), config.run, config.epochs, start)
    if status != 0:
        raise distributed.DistributedRunFailed(_torchrun_failure(config, folder, status, lines))
    return folder.check_whole()


def _torchrun_failure(config: RunConfig, folder: RunFolder, status: int, lines: list[str]) -> str:
    """One message for a run that torchrun ended with `status`: the rank that failed first and what it
    said, what the run folder keeps, and the commands that resume it."""
    rank, said = distributed.failed_rank(lines)
    n = config.nproc_per_node
    who = f"rank {rank} of {n} failed first ({said})" if rank is not None else f"torchrun exited with status {status}"
    last = folder.checkpoint_file("last")
    if last.is_file() and not folder.has_result():
        try:
            done = int(folder.load_checkpoint("last", lazily=True)["epoch"]) + 1
        except Exception:  # a damaged last.pt: resuming names it
            done = None
        resume = (f"torchrun --standalone --nproc-per-node {n} -m {distributed.ENTRY_MODULE} {shlex.quote(str(folder.path))} resume=true")
        kept = (f"{last} holds {done if done is not None else 'some'} completed epoch(s) of {config.epochs}, whole (rank 0 writes each "
                f"checkpoint to a temporary name, then renames it). To continue from it: resume = True in the run's notebook (make "
                f"run-all RESUME=true with the same parameters), or without a notebook: {resume}")  # fmt: skip
    else:
        kept = "No epoch was completed, so there is nothing to resume: run it again once the cause is mended"
    return f"{config.run} on {n} processes under torchrun: {who}; torchrun stopped the other processes. {kept}"
