"""Splits of a tile set into training and validation tiles: the original's seeded permutation,
grouped (no patient, slide or source tile on both sides), or the data set's own; seeded and deterministic."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

@dataclass(frozen=True)
class Split:
    """Positions into a TileSet (index positions, int64), and how they were chosen (for the report)."""

    train: np.ndarray
    valid: np.ndarray
    description: str = ""

    def batch_notes(self, batch_size: int) -> list[str]:
        """What the run should say when a side holds less than one batch (it is then one smaller batch)."""
        return [f"the {what} split holds {len(rows)} tiles, fewer than batch_size={batch_size}: one batch of {len(rows)} per epoch"
                for rows, what in ((self.train, "training"), (self.valid, "validation")) if len(rows) < batch_size]  # fmt: skip


def seeded_split(n_tiles: int, valid_fraction: float, seed: int, subset: int = 0, kept: np.ndarray | None = None) -> Split:
    """The original's split: a seeded permutation, its first floor((1 - f) * n) train, the rest
    validate. With `subset`, that many tiles are drawn first (seeded) and split the same way (all of
    them when there are no more); `kept` (bool per tile) leaves out the drawn tiles that could not be read."""
    order = _seeded_order(n_tiles, seed, subset)
    if kept is not None:
        order = order[kept[order]]
    n_train = math.floor((1 - valid_fraction) * len(order))
    return Split(train=order[:n_train], valid=order[n_train:],
                 description=f"random (the original's): seeded permutation (seed {seed}), first floor({1 - valid_fraction:g}*n) train")  # fmt: skip


def _seeded_order(n_tiles: int, seed: int, subset: int) -> np.ndarray:
    """A seeded permutation of the tiles' positions, cut to its first `subset` when that is fewer."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_tiles, generator=generator).numpy()
    return order[:subset] if subset else order


def grouped_split(groups: np.ndarray, valid_fraction: float, seed: int, subset: int = 0, kept: np.ndarray | None = None) -> Split:
    """A leak-free split: whole groups (slide, patient, source tile) go to validation, in a seeded
    order, until it holds at least valid_fraction of the tiles; no group is on both sides."""
    chosen = np.sort(_seeded_order(len(groups), seed, subset))
    if kept is not None:
        chosen = chosen[kept[chosen]]
    names = np.unique(groups[chosen])
    if len(names) < 2:
        raise ValueError(f"a grouped split needs at least two groups; the tiles hold {len(names)}")
    generator = torch.Generator().manual_seed(seed)
    group_order = names[torch.randperm(len(names), generator=generator).numpy()]
    sizes = Counter(groups[chosen])
    target, valid_groups, taken = valid_fraction * len(chosen), set(), 0
    for name in group_order:
        if taken >= target or len(valid_groups) == len(names) - 1:
            break
        valid_groups.add(name)
        taken += sizes[name]
    in_valid = np.isin(groups[chosen], list(valid_groups))
    return Split(train=chosen[~in_valid], valid=chosen[in_valid],
                 description=f"grouped (leak-free): {len(names) - len(valid_groups)} groups train, {len(valid_groups)} "
                             f"validate, none on both sides (seed {seed})")  # fmt: skip


def given_split(given_valid: np.ndarray, seed: int, subset: int = 0, kept: np.ndarray | None = None) -> Split:
    """The data set's own split (PatchCamelyon's train and valid files), as given; a subset draws
    its tiles from both (seeded) and each keeps its side."""
    chosen = np.sort(_seeded_order(len(given_valid), seed, subset))
    if kept is not None:
        chosen = chosen[kept[chosen]]
    in_valid = given_valid[chosen]
    return Split(train=chosen[~in_valid], valid=chosen[in_valid], description="given: the data set's own train and validation tiles")


def _require_trainable(split: Split, labels: np.ndarray) -> None:
    """Training needs two tiles of each class to learn anything, validation one of each to measure it."""
    counts = {what: np.bincount(labels[rows], minlength=2) for what, rows in (("training", split.train), ("validation", split.valid))}
    if min(counts["training"]) < 2 or min(counts["validation"]) < 1:
        said = "; ".join(f"{what} {c.sum()} (class 0: {c[0]}, class 1: {c[1]})" for what, c in counts.items())
        raise ValueError(f"too few tiles to train: {said}. A run needs at least two tiles of each class to train on and one "
                         "of each to validate on: use more tiles (a larger subset, or 0 for all), or another valid_fraction")  # fmt: skip
