"""Batches for training and validation: the fast path cuts them from the decoded uint8 tiles and
augments them on the device (geometry, then HED colour); the original's path decodes and transforms files one by one in a
DataLoader. Both take each epoch's order from EpochOrder, which shares every batch among the ranks of a
run on several processes (lib/training/distributed.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lib.data.augment import augment_batch
from lib.data.decode import check_multi_page, check_non_square, open_tile
from lib.data.layouts import TileSource
from lib.data.stain import hed_augment

def original_augmentation(crop_size: int) -> v2.Compose:
    """The original's training transforms, on one uint8 tile at a time (each tile its own draw)."""
    return v2.Compose([
        v2.RandomRotation(45),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomCrop(crop_size),
    ])  # fmt: skip


class FileTileDataset(Dataset):
    """The original's input path: each item opened and decoded from its file every epoch, its
    transforms run on the PIL image, one image at a time, then ToTensor, then HED colour augmentation
    (hed_scale, hed_shift; lib/data/stain.py) on the float image, its own draw. For comparison, and for
    data sets too large to keep decoded."""

    def __init__(self, sources: list[TileSource], labels: torch.Tensor, size: int, transform=None, multi_page: str = "refuse",
                 non_square: str = "crop", hed_scale: float = 0.0, hed_shift: float = 0.0):  # fmt: skip
        check_multi_page(multi_page)
        check_non_square(non_square)
        self.multi_page, self.non_square = multi_page, non_square
        self.sources, self.labels, self.size, self.transform = sources, labels, size, transform
        self.hed_scale, self.hed_shift = hed_scale, hed_shift

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        image, _, _ = open_tile(self.sources[i], self.size, self.multi_page, self.non_square)
        if self.transform is not None:
            image = self.transform(image)
        tile = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        image = tile.float().div_(255)  # ToTensor
        return hed_augment(image[None], self.hed_scale, self.hed_shift)[0], self.labels[i]


class EpochOrder:
    """Which tiles each batch of an epoch holds, and this rank's share of them, as torch's
    DistributedSampler orders an epoch: the order is a permutation drawn from `seed + epoch`
    (set_epoch, called before each epoch), the same on every rank; it is cut into global batches of
    `batch_size` (batch_plan: the last partial batch dropped); rank r of `world` takes positions r,
    r + world, r + 2 world, ... of each batch. With batch_size a multiple of world this is exactly
    DistributedSampler's shard of the epoch cut into batches of batch_size / world; otherwise the
    shares differ by one tile and the loop weighs each rank's loss by its share (lib/training/loop.py),
    so every optimizer step is the global batch's mean gradient either way. One rank (world 1) takes
    every batch whole. Unshuffled (validation), the order is 0, 1, 2, ... every epoch.

    Iterating yields int64 tensors of positions (into the `n` rows the loader holds), one per batch.
    Raises ValueError when a global batch cannot give every rank a tile (fewer tiles than ranks)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, what: str, rank: int = 0, world: int = 1):
        self.batch_size = batch_plan(n, batch_size, what)  # the global batch
        if self.batch_size < world:
            raise ValueError(f"the {what} set's batches hold {self.batch_size} tile(s), fewer than the {world} processes that share each "
                             f"batch: every process needs at least one tile of each batch. Use fewer processes (nproc_per_node), a larger "
                             f"batch_size, or more tiles (subset, valid_fraction)")  # fmt: skip
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration gives (DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def order(self) -> torch.Tensor:
        """(len(self), batch_size) int64: every rank's global batches of this epoch."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        return order[: len(self) * self.batch_size].view(len(self), self.batch_size)

    def __iter__(self):
        return iter(self.order()[:, self.rank :: self.world])


def batch_plan(n_tiles: int, batch_size: int, what: str) -> int:
    """The batch size a side of the split really uses: `batch_size`, with the last partial batch
    dropped as the original did, when at least one full batch exists; else all its tiles in one
    smaller batch (said in the run's notes, Split.batch_notes). Raises ValueError for no tiles at all."""
    if n_tiles < 1:
        raise ValueError(f"the {what} set has no tiles; use more tiles (subset) or another valid_fraction")
    return min(batch_size, n_tiles)


class TileBatches:
    """The fast input path: batches cut from decoded uint8 tiles with one index operation, moved to
    the device as uint8 (a quarter of float's bytes), augmented there per image (lib/data/augment.py).
    `tiles` is the whole (N, 3, H, W) tile set (over the memory-mapped cache) and `rows` the
    positions this loader uses, so a split costs no copy. Tiles go to the GPU when they fit;
    otherwise they stay where they are and each batch, once gathered, is pinned and streamed in.
    Like the original's loader: reshuffled each epoch (EpochOrder: seeded by seed + epoch, set_epoch
    before each), the last partial batch dropped (unless the rows hold less than one batch: then they
    are one smaller batch, see batch_plan). With `world` processes, this rank's share of each batch.
    `hed_scale`, `hed_shift`: HED colour augmentation after the geometry (lib/data/stain.py), for
    training batches only; 0 and 0 leave colours as they are."""

    def __init__(self, tiles: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                 device: torch.device, crop_size: int | None, what: str, rows: np.ndarray | torch.Tensor | None = None,
                 hed_scale: float = 0.0, hed_shift: float = 0.0, rank: int = 0, world: int = 1):  # fmt: skip
        rows = torch.arange(len(tiles)) if rows is None else torch.as_tensor(rows, dtype=torch.int64)
        self.order = EpochOrder(len(rows), batch_size, shuffle, seed, what, rank, world)
        self.batch_size = self.order.batch_size  # the global batch
        self.device, self.crop_size = device, crop_size
        self.hed_scale, self.hed_shift = hed_scale, hed_shift
        self.labels = labels[rows].to(device)
        self.tiles, self.rows, self.placement = _place(tiles, rows, device)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        order = self.order.order()[:, self.order.rank :: self.order.world]  # this rank's share of each batch
        # The epoch's order goes to the device in one copy: a copy per batch from ordinary host
        # memory would make the host wait for the GPU's queue to drain, every batch.
        order_on_device = order.to(self.device)
        picked = self.rows[order_on_device if self.rows.device == order_on_device.device else order]
        for batch in range(len(order)):
            tiles = self.tiles[picked[batch]]
            if streamed(tiles.device, self.device):
                # Streamed from host memory: the gathered batch is pinned so its copy runs beside
                # the GPU's work instead of waiting for it.
                tiles = tiles.pin_memory().to(self.device, non_blocking=True)
            if self.crop_size is not None:
                images = augment_batch(tiles, self.crop_size)
            else:
                images = tiles.float().div_(255)
            # Colour after geometry, on the float batch; its draws come from torch's global stream, as the geometry's.
            images = hed_augment(images, self.hed_scale, self.hed_shift)
            yield images, self.labels[order_on_device[batch]]


def streamed(tiles_device: torch.device, device: torch.device) -> bool:
    """Whether batches gathered on `tiles_device` must be copied to `device` (host tiles, GPU training).
    Compared by type, not with `!=`: torch.device("cuda") and a tensor's torch.device("cuda:0") are
    unequal, and that once sent tiles already on the GPU to pin_memory(), which refuses them."""
    return tiles_device.type == "cpu" and device.type != "cpu"


def _place(tiles: torch.Tensor, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Where the loader reads: (tiles, rows into them, in words). On a GPU with room to spare (half
    its free memory) the rows' tiles are copied there, in blocks so that no host copy of them all is
    made; otherwise they stay in host memory (each gathered batch is pinned on its way, see
    __iter__; pinning the whole set would not help, as gathering rows copies them into ordinary
    memory). On the CPU they stay where they are: over the memory-mapped cache, read as batches need them."""
    tile_bytes = tiles[0].numel()
    gib = len(rows) * tile_bytes / 2**30
    if device.type != "cuda":
        return tiles, rows, f"host memory ({gib:.2f} GiB of uint8 tiles, read from the cache as batches need them)"
    free, _ = torch.cuda.mem_get_info(device)
    if len(rows) * tile_bytes < free // 2:
        on_device = torch.empty((len(rows), *tiles.shape[1:]), dtype=torch.uint8, device=device)
        for start in range(0, len(rows), 4096):
            on_device[start : start + 4096] = tiles[rows[start : start + 4096]].to(device)
        return on_device, torch.arange(len(rows), device=device), f"GPU memory ({gib:.2f} GiB of uint8 tiles)"
    return tiles, rows, f"host memory, streamed per batch through pinned copies ({gib:.2f} GiB would not fit beside the model)"


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, what: str, workers: int = 0, rank: int = 0,
                world: int = 1) -> DataLoader:  # fmt: skip
    """A loader with the original's drop_last; less than one full batch is one smaller batch (batch_plan).
    Its batches come from an EpochOrder (`loader.batch_sampler`, set_epoch before each epoch): with
    `world` processes, this rank's share of each batch."""
    return DataLoader(dataset, batch_sampler=_IndexLists(EpochOrder(len(dataset), batch_size, shuffle, seed, what, rank, world)),
                      num_workers=workers)  # fmt: skip


class _IndexLists:
    """An EpochOrder as a DataLoader's batch_sampler, which indexes the dataset with Python ints."""

    def __init__(self, order: EpochOrder):
        self.order = order
        self.batch_size = order.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return (positions.tolist() for positions in self.order)


def epoch_order(loader) -> EpochOrder | None:
    """The EpochOrder a loader of ours draws its batches from (None for any other iterable)."""
    if isinstance(loader, TileBatches):
        return loader.order
    sampler = getattr(loader, "batch_sampler", None)
    return sampler.order if isinstance(sampler, _IndexLists) else None
