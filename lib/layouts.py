"""Tile layouts: find which one a `data_dir` holds, read it into a TileIndex, and check it.

Five layouts, tried in this order (the first that fits wins, and the run records which):
  pcam-h5        camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5, PatchCamelyon's original release
  course         train/<id>.jpg (or train.zip) + train_label.csv, columns read by position
  pcam           train/<id>.tif + train_labels.csv (PatchCamelyon as on Kaggle), by position
  csv            a CSV with a header naming path,label[,group]; paths relative to the CSV
  class-folders  two folders of images, one per class (torchvision's ImageFolder)
Every problem found in the labels is reported at once, each kind with its first ten offenders and a
count, so one fix-and-rerun cycle is enough.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Files that operating systems drop into folders; never tiles, never an error.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
# Folder names that belong to a split, not a class: a course folder missing its label file must not
# be read as two classes called "test" and "train".
SPLIT_FOLDER_NAMES = {"train", "test", "valid", "validation", "val"}

LAYOUTS = {
    "pcam-h5": "camelyonpatch_level_2_split_train_x.h5 and _train_y.h5 (PatchCamelyon's original HDF5 release: x is "
               "(N, H, W, 3) uint8, y is (N, 1, 1, 1)); optionally _valid_ (its validation split, used as given), _test_ "
               "(test tiles; _test_y.h5 only scores them) and _meta.csv (a wsi column names each tile's slide)",
    "course": "train/<id>.jpg (or train.zip) with train_label.csv: a header row, then id,label rows read "
              "by position (id = file stem, label 0 or 1); optionally test/<id>.jpg (or test.zip)",
    "pcam": "train/<id>.tif with train_labels.csv (id,label), the PatchCamelyon/Kaggle form; optionally test/<id>.tif",
    "csv": "one CSV file whose header names path,label and optionally group (paths relative to the CSV's "
           "folder); give the file itself as data_dir when the folder holds several",
    "class-folders": "exactly two folders of images, one per class (torchvision's ImageFolder); "
                     "positive_class names the folder labelled 1, else the second in alphabetical order",
}  # fmt: skip

PCAM_H5 = "camelyonpatch_level_2_split_{part}_{xy}.h5"  # part: train, valid, test; xy: x (tiles) or y (labels)


@lru_cache(maxsize=16)
def _open_h5(file: str, pid: int):
    """One read-only handle per file and process (a forked loader worker must not share its parent's)."""
    import h5py  # only the pcam-h5 layout needs it

    return h5py.File(file, "r")


@dataclass(frozen=True, slots=True)
class H5Tile:
    """One tile of an HDF5 array of (N, H, W, 3) uint8 tiles, read lazily (nothing to decode).
    Prints as file[row]; .open("rb") gives it as an in-memory PNG, so per-file readers take it too."""

    file: Path
    row: int
    dataset: str = "x"

    @property
    def name(self) -> str:
        return f"{self.file.name}[{self.row}]"

    def __str__(self) -> str:
        return f"{self.file}[{self.row}]"

    def h5_dataset(self):
        """The h5py dataset holding this tile, (N, H, W, 3) uint8, from a handle kept open per process."""
        return _open_h5(str(self.file), os.getpid())[self.dataset]

    def read(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        return self.h5_dataset()[self.row]

    def open(self, mode: str = "rb") -> io.BytesIO:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.read(), "RGB").save(buffer, "PNG", compress_level=0)
        buffer.seek(0)
        return buffer


# A tile is a file on disk, a member of a zip archive or a row of an HDF5 array; all open with
# .open("rb") and print as a path.
TileSource = Path | zipfile.Path | H5Tile


class LayoutError(ValueError):
    """A data set that cannot be read as asked; the message names the files and what to change."""


@dataclass
class TileIndex:
    """Where a data set's tiles are, their labels, and how they were read."""

    data_dir: Path
    layout: str  # a key of LAYOUTS
    train_paths: list[TileSource]
    train_labels: np.ndarray  # int64, 0 or 1
    train_groups: np.ndarray | None  # str per tile (slide, patient, source tile), when the data has them
    test_ids: list[str]
    test_paths: list[TileSource]
    test_labels: np.ndarray | None  # only for scoring; training never reads it
    origin: str  # where the data came from, for the report
    label_rule: str  # how labels were read, in words, for the run's record
    ignored: list[str] = field(default_factory=list)  # system files passed over
    given_valid: np.ndarray | None = None  # bool per labelled tile, True = validation, when the data set fixes its own split

    def name_of(self, source: TileSource) -> str:
        """A labelled tile's id where the layout has no test set: its path below data_dir."""
        return str(source).removeprefix(str(self.data_dir) + "/")

    def describe(self) -> str:
        groups = f", {len(set(self.train_groups))} groups" if self.train_groups is not None else ""
        test = f", {len(self.test_paths)} test tiles" if self.test_paths else ", no test tiles"
        return f"{self.layout} layout at {self.data_dir}: {len(self.train_paths)} labelled tiles{groups}{test}; {self.label_rule}"


def _first(items, count: int = 10) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:count])
    return f"{shown}{', ...' if len(items) > count else ''} ({len(items)} in all)"


def _is_system_file(name: str) -> bool:
    return name.lower() in SYSTEM_FILES or name.startswith("._")


def _images_in(entries, ignored: list[str]) -> dict[str, TileSource]:
    """Image files among `entries` by stem; system files are noted and passed over, anything else
    that is not an image is left alone (a README beside the tiles is fine)."""
    images: dict[str, TileSource] = {}
    for entry in entries:
        if _is_system_file(entry.name):
            ignored.append(str(entry))
        elif entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.name.startswith("."):
            stem = entry.name.rsplit(".", 1)[0]
            if stem in images:
                raise LayoutError(f"two images share the id {stem!r}: {images[stem]} and {entry}")
            images[stem] = entry
    return images


def _images_in_folder_or_zip(data_dir: Path, name: str, ignored: list[str]) -> dict[str, TileSource] | None:
    """Images of `name/` or, when that folder is absent, of `name.zip` (at its top level or in one
    folder inside it), read in place without unzipping. None when neither exists."""
    folder, archive = data_dir / name, data_dir / f"{name}.zip"
    if folder.is_dir():
        return _images_in(folder.iterdir(), ignored)
    if not archive.is_file():
        return None
    try:
        root = zipfile.Path(zipfile.ZipFile(archive))
    except zipfile.BadZipFile as error:
        raise LayoutError(f"{archive} is not a readable zip file ({error})") from None
    images = _images_in(root.iterdir(), ignored)
    if not images:  # the usual form: the archive holds one folder, train/ or test/
        folders = [p for p in root.iterdir() if p.is_dir() and not _is_system_file(p.name.rstrip("/"))]
        if len(folders) == 1:
            images = _images_in(folders[0].iterdir(), ignored)
    return images


def _read_id_label_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, id, label text) after a header row, by position, as the original read them."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)  # the header: "id,label", "# Id,Values", whatever its names
        for line_number, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise LayoutError(f"{path}, line {line_number}: expected 'id,label', got {','.join(row)!r}")
            rows.append((line_number, row[0].strip(), row[1].strip()))
    return rows


def _check_labels(label_file: Path, rows: list[tuple[int, str, str]], images: dict[str, TileSource] | None, what: str) -> np.ndarray:
    """Labels as int64 after checking everything at once; one LayoutError lists every problem."""
    problems = []
    bad = [f"{tile_id} (line {n}: {label!r})" for n, tile_id, label in rows if label not in ("0", "1")]
    if bad:
        problems.append(f"labels other than 0 or 1: {_first(bad)}")
    counts = Counter(tile_id for _, tile_id, _ in rows)
    duplicates = [tile_id for tile_id, c in counts.items() if c > 1]
    if duplicates:
        problems.append(f"ids listed more than once: {_first(duplicates)}")
    if images is not None:
        no_image = [tile_id for tile_id in counts if tile_id not in images]
        if no_image:
            problems.append(f"ids with no image in {what}: {_first(no_image)}")
        no_label = sorted(set(images) - set(counts), key=_natural_key)
        if no_label:
            problems.append(f"images in {what} with no label: {_first(no_label)}")
    if not rows:
        problems.append("no labelled rows at all")
    elif not bad:
        classes = {label for _, _, label in rows}
        if len(classes) == 1:
            problems.append(f"one class only: every tile is labelled {classes.pop()}; training needs both 0 and 1")
    if problems:
        raise LayoutError(f"{label_file}: " + "; ".join(problems))
    return np.array([int(label) for _, _, label in rows], dtype=np.int64)


def _natural_key(tile_id: str):
    """1, 2, 10 in number order; other ids in text order after them."""
    return (0, int(tile_id), "") if tile_id.isdigit() else (1, 0, tile_id)


def _test_part(data_dir: Path, ignored: list[str]) -> tuple[list[str], list[TileSource], np.ndarray | None]:
    """test/ (or test.zip) tiles in id order, and their labels when test_label.csv has all of them."""
    images = _images_in_folder_or_zip(data_dir, "test", ignored) or {}
    ids = sorted(images, key=_natural_key)
    labels = None
    label_file = data_dir / "test_label.csv"
    if ids and label_file.is_file():
        known = {tile_id: label for _, tile_id, label in _read_id_label_rows(label_file)}
        if all(i in known for i in ids):
            labels = _check_labels(label_file, [(0, i, known[i]) for i in ids], None, "test")
    return ids, [images[i] for i in ids], labels


def _origin(data_dir: Path) -> str:
    return "generated (lib/synthetic.py)" if (data_dir / "DATASET.json").exists() else f"user data at {data_dir}"


def _read_position_layout(data_dir: Path, layout: str, label_name: str) -> TileIndex:
    ignored: list[str] = []
    images = _images_in_folder_or_zip(data_dir, "train", ignored)
    label_file = data_dir / label_name
    where = "train/" if (data_dir / "train").is_dir() else "train.zip"
    rows = _read_id_label_rows(label_file)
    labels = _check_labels(label_file, rows, images, where)
    test_ids, test_paths, test_labels = _test_part(data_dir, ignored)
    return TileIndex(
        data_dir=data_dir, layout=layout, train_paths=[images[tile_id] for _, tile_id, _ in rows],
        train_labels=labels, train_groups=None, test_ids=test_ids, test_paths=test_paths,
        test_labels=test_labels, origin=_origin(data_dir),
        label_rule=f"labels from {label_name} by position (first column the file stem, second 0/1)", ignored=ignored,
    )  # fmt: skip


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [name.strip().lower() for name in next(csv.reader(f), [])]


def _read_csv_layout(csv_file: Path) -> TileIndex:
    base = csv_file.parent
    missing_columns = {"path", "label"} - set(_csv_header(csv_file))
    if missing_columns:
        raise LayoutError(f"{csv_file}: its header names no {' or '.join(sorted(missing_columns))} column; "
                          f"the csv layout needs {LAYOUTS['csv']}")  # fmt: skip
    with open(csv_file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        records = [(n, {k: (v or "").strip() for k, v in row.items() if k}) for n, row in enumerate(reader, start=2)]
    records = [(n, r) for n, r in records if any(r.values())]
    rows = [(n, r["path"], r["label"]) for n, r in records]
    images = {r["path"]: base / r["path"] for _, r in records if (base / r["path"]).is_file()}
    labels = _check_labels(csv_file, rows, images, f"{base} (paths relative to the CSV)")
    has_groups = "group" in (reader.fieldnames or [])
    if has_groups:
        missing = [f"line {n}" for n, r in records if not r["group"]]
        if missing:
            raise LayoutError(f"{csv_file}: the group column is empty on {_first(missing)}; fill it in or drop the column")
    return TileIndex(
        data_dir=base, layout="csv", train_paths=[base / path for _, path, _ in rows], train_labels=labels,
        train_groups=np.array([r["group"] for _, r in records]) if has_groups else None,
        test_ids=[], test_paths=[], test_labels=None, origin=_origin(base),
        label_rule=f"labels{' and groups' if has_groups else ''} from {csv_file.name} by column name",
    )  # fmt: skip


def _class_folders(data_dir: Path) -> list[Path]:
    return sorted(
        p for p in data_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in SPLIT_FOLDER_NAMES
        and any(f.name.lower().endswith(IMAGE_SUFFIXES) for f in p.iterdir())
    )  # fmt: skip


def _read_class_folders(data_dir: Path, folders: list[Path], positive_class: str) -> TileIndex:
    names = [f.name for f in folders]
    if len(folders) != 2:
        raise LayoutError(f"{data_dir}: class folders must be exactly two (one per class); found {len(folders)}: {', '.join(names)}")
    if positive_class:
        if positive_class not in names:
            raise LayoutError(f"positive_class={positive_class!r} is not one of the class folders in {data_dir}: {', '.join(names)}")
        rule = f"class folders: {positive_class} is 1 (positive_class), the other 0"
    else:
        positive_class = names[1]
        rule = (f"class folders: {names[1]} is 1 and {names[0]} is 0 by alphabetical order (torchvision's "
                "ImageFolder rule); set positive_class to choose")  # fmt: skip
    ignored: list[str] = []
    paths, labels = [], []
    for folder in folders:
        images = _images_in(folder.iterdir(), ignored)
        for stem in sorted(images, key=_natural_key):
            paths.append(images[stem])
            labels.append(1 if folder.name == positive_class else 0)
    return TileIndex(
        data_dir=data_dir, layout="class-folders", train_paths=paths, train_labels=np.array(labels, dtype=np.int64),
        train_groups=None, test_ids=[], test_paths=[], test_labels=None, origin=_origin(data_dir), label_rule=rule,
        ignored=ignored,
    )  # fmt: skip


def _h5_labels(y_file: Path, n_tiles: int) -> np.ndarray:
    """A y file's (N, 1, 1, 1) labels as (N,) int64, checked: every one 0 or 1, one per tile."""
    labels = np.asarray(_open_h5(str(y_file), os.getpid())["y"][:]).reshape(-1).astype(np.int64)
    if len(labels) != n_tiles:
        raise LayoutError(f"{y_file}: {len(labels)} labels for {n_tiles} tiles in its x file")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise LayoutError(f"{y_file}: labels other than 0 or 1 at rows {_first(bad)}")
    return labels


def _h5_tiles(x_file: Path) -> list[H5Tile]:
    """A source per row of an x file, after checking its shape; no pixel is read here."""
    shape = _open_h5(str(x_file), os.getpid())["x"].shape
    if len(shape) != 4 or shape[3] != 3:
        raise LayoutError(f"{x_file}: its x array is {shape}; the pcam-h5 layout needs (N, H, W, 3) uint8 tiles")
    return [H5Tile(x_file, row) for row in range(shape[0])]


def _read_pcam_h5(data_dir: Path) -> TileIndex:
    """PatchCamelyon's HDF5 release, read lazily: train (and valid, kept as its own validation split)
    are the labelled tiles, test the test tiles; test labels only ever score predictions."""
    name = {(part, xy): data_dir / PCAM_H5.format(part=part, xy=xy) for part in ("train", "valid", "test") for xy in ("x", "y")}
    if not name["train", "y"].is_file():
        raise LayoutError(f"{data_dir}: {name['train', 'x'].name} is there but not {name['train', 'y'].name}, its labels")
    parts = ["train"] + (["valid"] if name["valid", "x"].is_file() and name["valid", "y"].is_file() else [])
    paths, labels, valid = [], [], []
    for part in parts:
        tiles = _h5_tiles(name[part, "x"])
        paths += tiles
        labels.append(_h5_labels(name[part, "y"], len(tiles)))
        valid.append(np.full(len(tiles), part == "valid"))
    train_labels = np.concatenate(labels)
    if len(np.unique(train_labels)) < 2:
        raise LayoutError(f"{data_dir}: one class only: every labelled tile is {train_labels[0]}; training needs both 0 and 1")
    groups = []
    for part in parts:  # the slide of each tile, when every meta file names it
        meta = data_dir / f"camelyonpatch_level_2_split_{part}_meta.csv"
        if meta.is_file() and "wsi" in _csv_header(meta):
            with open(meta, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                reader.fieldnames = [n.strip().lower() for n in reader.fieldnames or []]
                groups += [row["wsi"] for row in reader]
    train_groups = np.array(groups) if len(groups) == len(paths) else None
    test_paths = _h5_tiles(name["test", "x"]) if name["test", "x"].is_file() else []
    test_labels = _h5_labels(name["test", "y"], len(test_paths)) if test_paths and name["test", "y"].is_file() else None
    split = "train and valid files" if "valid" in parts else "train file"
    return TileIndex(
        data_dir=data_dir, layout="pcam-h5", train_paths=paths, train_labels=train_labels, train_groups=train_groups,
        test_ids=[str(tile.row) for tile in test_paths], test_paths=test_paths, test_labels=test_labels, origin=_origin(data_dir),
        label_rule=f"labels from the {split}' y arrays by row" + (", slides from the meta CSVs' wsi column" if train_groups is not None else ""),
        given_valid=np.concatenate(valid) if "valid" in parts else None,
    )  # fmt: skip


def _not_found(data_dir: Path, why: str) -> LayoutError:
    looked_for = "\n".join(f"  - {name}: {need}" for name, need in LAYOUTS.items())
    return LayoutError(f"{data_dir}: {why}. The layouts read here:\n{looked_for}")


def read_layout(data_dir: str | Path, positive_class: str = "") -> TileIndex:
    """The labelled (and test) tiles of `data_dir`, whichever supported layout it is in."""
    data_dir = Path(data_dir)
    if data_dir.is_file() and data_dir.suffix.lower() == ".csv":
        index = _read_csv_layout(data_dir)
    elif not data_dir.is_dir():
        raise _not_found(data_dir, "does not exist") if not data_dir.exists() else _not_found(data_dir, "is not a folder or a .csv file")
    else:
        entries = [p for p in data_dir.iterdir() if not _is_system_file(p.name)]
        if not entries:
            raise _not_found(data_dir, "is empty")
        has_train = (data_dir / "train").is_dir() or (data_dir / "train.zip").is_file()
        csv_files = sorted(p for p in entries if p.suffix.lower() == ".csv" and {"path", "label"} <= set(_csv_header(p)))
        if (data_dir / PCAM_H5.format(part="train", xy="x")).is_file():
            index = _read_pcam_h5(data_dir)
        elif has_train and (data_dir / "train_label.csv").is_file():
            index = _read_position_layout(data_dir, "course", "train_label.csv")
        elif has_train and (data_dir / "train_labels.csv").is_file():
            index = _read_position_layout(data_dir, "pcam", "train_labels.csv")
        elif len(csv_files) == 1:
            index = _read_csv_layout(csv_files[0])
        elif len(csv_files) > 1:
            raise LayoutError(f"{data_dir} holds several path,label CSV files ({', '.join(p.name for p in csv_files)}); "
                              "give the one to use as data_dir")  # fmt: skip
        elif folders := _class_folders(data_dir):
            index = _read_class_folders(data_dir, folders, positive_class)
        else:
            found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in entries)[:20])
            hint = " (train/ is there but no train_label.csv or train_labels.csv)" if has_train else ""
            raise _not_found(data_dir, f"matches no layout{hint}; it holds: {found}")
    if positive_class and index.layout != "class-folders":
        raise LayoutError(f"positive_class={positive_class!r} applies to class folders only; {data_dir} is in the "
                          f"{index.layout} layout, whose labels come from its label file")  # fmt: skip
    return index
