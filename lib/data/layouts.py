"""Tile layouts: find which one a `data_dir` holds, read it into a TileIndex, and check it.

Five layouts, tried in this order (the first that fits wins, and the run records which):
  pcam-h5        camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5, PatchCamelyon's original release
  course         train/<id>.jpg (or train.zip) + train_label.csv, columns read by position
  pcam           train/<id>.tif + train_labels.csv (PatchCamelyon as on Kaggle), by position
  csv            a CSV with a header naming path,label[,group]; paths relative to the CSV
  class-folders  two folders of images, one per class (torchvision's ImageFolder), the images at any
                 depth below them; or any folders of the tree mapped to 0 and 1 by class_map; a folder
                 level may name the group (group_level), above the class folders too (<patient>/0/, <patient>/1/)
Every problem found in the labels is reported at once, each kind with its first ten offenders and a
count, so one fix-and-rerun cycle is enough. Label files are read in the encodings and delimiters
spreadsheets write; a folder that matches no layout is answered with where its images are and the
nearest layout that would read them.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
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
              "by position (id = file stem, label 0 or 1); optionally test/<id>.jpg (or test.zip). Or test/ with "
              "test_label.csv alone, no train/: a labelled test set to score a trained run on, nothing to train on",
    "pcam": "train/<id>.tif with train_labels.csv (id,label), the PatchCamelyon/Kaggle form; optionally test/<id>.tif",
    "csv": "one CSV file whose header names path,label and optionally group (paths relative to the CSV's "
           "folder); give the file itself as data_dir when the folder holds several",
    "class-folders": "two folders of images, one per class (torchvision's ImageFolder), the images at any depth below "
                     "them; positive_class names the folder labelled 1, else the second in alphabetical order. More "
                     "classes, or classes deeper in the tree: class_map='colon_aca=1,colon_n=0,...'; a folder level "
                     "naming the patient or slide: group_level=N (a grouped, leak-free split)",
}  # fmt: skip

# Label files as spreadsheets save them: the encodings told by their byte-order mark (UTF-32's
# little-endian mark begins with UTF-16's, so it is tried first), and the delimiters in use.
BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "utf-16": "UTF-16", "utf-16-le": "UTF-16", "utf-16-be": "UTF-16", "utf-32": "UTF-32"}
EXPECTED_TEXT = ("expected a text file in UTF-8 (with or without a byte-order mark) or UTF-16, its columns separated by commas, "
                 "semicolons or tabs: in a spreadsheet, save as 'CSV UTF-8' or 'Unicode Text'")  # fmt: skip


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
    warnings: list[str] = field(default_factory=list)  # what the user must hear (printed with WARNING:), also in label_rule
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
        source = Path(entry.path) if isinstance(entry, os.DirEntry) else entry  # a scandir entry knows is_file() without a stat
        if _is_system_file(entry.name):
            ignored.append(str(source))
        elif entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.name.startswith("."):
            stem = entry.name.rsplit(".", 1)[0]
            if stem in images:
                raise LayoutError(f"two images share the id {stem!r}: {images[stem]} and {source}")
            images[stem] = source
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


def _decode_text(path: Path, strict: bool = True) -> tuple[str, str]:
    """A label file's text and its encoding: the one its byte-order mark names (UTF-8, UTF-16 or
    UTF-32, as spreadsheets save "CSV UTF-8" and "Unicode Text"), UTF-16 when every other byte is
    zero without a mark, else UTF-8. Raises LayoutError naming the file and the line of the first
    byte that is not text in that encoding (strict), or replaces such bytes (not strict: detection
    only reads the header)."""
    data = path.read_bytes()
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        raise LayoutError(f"{path} is a spreadsheet workbook (.xlsx or .xls), not CSV text; {EXPECTED_TEXT}")
    encoding = next((name for mark, name in BYTE_ORDER_MARKS if data.startswith(mark)), None)
    if encoding is None and b"\0" in data[:4096]:  # UTF-16 without a mark: ASCII text leaves every other byte zero
        head = data[:4096]
        encoding = "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
    encoding = encoding or "utf-8"
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as error:
        if not strict:
            return data.decode(encoding, errors="replace"), encoding
        line = data[: error.start].decode(encoding, errors="replace").count("\n") + 1
        hint = " (Excel's plain 'CSV' saves the computer's own code page, such as Windows-1252)" if encoding == "utf-8" else ""
        raise LayoutError(f"{path}, line {line}: byte 0x{data[error.start]:02x} is not {ENCODING_NAMES[encoding]} text{hint}; {EXPECTED_TEXT}") from None


def _delimiter(text: str) -> str:
    """The delimiter of a label file: the only one of DELIMITERS its header line holds; when it
    holds none or several, csv.Sniffer's reading of the first lines; comma when that fails too."""
    lines = [line for line in text.splitlines() if line.strip()][:50]
    in_header = [d for d in DELIMITERS if lines and d in lines[0]]
    if len(in_header) == 1:
        return in_header[0]
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        return ","


def _read_rows(path: Path, strict: bool = True) -> tuple[list[tuple[int, list[str]]], str]:
    """The non-blank rows of a CSV file in any encoding and delimiter spreadsheets write, each with
    its line number, fields stripped; and how it was read ("UTF-16, tab-separated"), for the record."""
    text, encoding = _decode_text(path, strict)
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if row and "".join(row).strip():
                rows.append((reader.line_num, [field.strip() for field in row]))
    except csv.Error as error:
        raise LayoutError(f"{path}, line {reader.line_num}: {error}; {EXPECTED_TEXT}") from None
    return rows, f"{ENCODING_NAMES[encoding]}, {DELIMITERS[delimiter]}-separated"


def _read_id_label_rows(path: Path) -> tuple[list[tuple[int, str, str]], str]:
    """(line number, id, label text) after a header row, by position, as the original read them;
    and how the file was read (encoding, delimiter)."""
    rows, how = _read_rows(path)
    result = []
    for line_number, row in rows[1:]:  # the header: "id,label", "# Id,Values", whatever its names
        if len(row) < 2:
            raise LayoutError(f"{path}, line {line_number}: expected two columns, id and label, got {row[0]!r} (the file reads as "
                              f"{how}); {EXPECTED_TEXT}")  # fmt: skip
        result.append((line_number, row[0], row[1]))
    return result, how


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
        known = {tile_id: label for _, tile_id, label in _read_id_label_rows(label_file)[0]}
        if all(i in known for i in ids):
            labels = _check_labels(label_file, [(0, i, known[i]) for i in ids], None, "test")
    return ids, [images[i] for i in ids], labels


def _origin(data_dir: Path) -> str:
    return "generated (lib/data/synthetic.py)" if (data_dir / "DATASET.json").exists() else f"user data at {data_dir}"


def _read_position_layout(data_dir: Path, layout: str, label_name: str) -> TileIndex:
    ignored: list[str] = []
    images = _images_in_folder_or_zip(data_dir, "train", ignored)
    label_file = data_dir / label_name
    where = "train/" if (data_dir / "train").is_dir() else "train.zip"
    rows, how = _read_id_label_rows(label_file)
    labels = _check_labels(label_file, rows, images, where)
    test_ids, test_paths, test_labels = _test_part(data_dir, ignored)
    return TileIndex(
        data_dir=data_dir, layout=layout, train_paths=[images[tile_id] for _, tile_id, _ in rows],
        train_labels=labels, train_groups=None, test_ids=test_ids, test_paths=test_paths,
        test_labels=test_labels, origin=_origin(data_dir),
        label_rule=f"labels from {label_name} by position (first column the file stem, second 0/1; {how})", ignored=ignored,
    )  # fmt: skip


def _read_test_only(data_dir: Path) -> TileIndex:
    """The course layout's test part alone (test/ or test.zip with test_label.csv, no train/): a
    labelled test set, such as the default set's second test set of another laboratory's staining.
    No labelled tiles to train on; every test tile must be labelled, or there is nothing to score."""
    ignored: list[str] = []
    images = _images_in_folder_or_zip(data_dir, "test", ignored) or {}
    label_file = data_dir / "test_label.csv"
    where = "test/" if (data_dir / "test").is_dir() else "test.zip"
    rows, how = _read_id_label_rows(label_file)
    labels = dict(zip((tile_id for _, tile_id, _ in rows), _check_labels(label_file, rows, images, where)))
    ids = sorted(images, key=_natural_key)
    return TileIndex(
        data_dir=data_dir, layout="course", train_paths=[], train_labels=np.zeros(0, dtype=np.int64), train_groups=None,
        test_ids=ids, test_paths=[images[i] for i in ids], test_labels=np.array([labels[i] for i in ids], dtype=np.int64),
        origin=_origin(data_dir), ignored=ignored,
        label_rule=f"a test set only (no train/): test labels from test_label.csv by position (first column the file stem, "
                   f"second 0/1; {how}); nothing to train on",
    )  # fmt: skip


def _is_test_only(data_dir: Path, folders: list[Path]) -> bool:
    """Whether `data_dir` holds the course layout's test part and nothing else that could be tiles:
    test_label.csv, test/ (or test.zip), no train/, no other folders and no images beside them."""
    has_test = (data_dir / "test").is_dir() or (data_dir / "test.zip").is_file()
    return has_test and (data_dir / "test_label.csv").is_file() and not folders and not _holds_images(data_dir)


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV's first row, lower case; for detection, so bytes that are not text
    are replaced here and reported when the file is read."""
    rows, _ = _read_rows(path, strict=False)
    return [name.lower() for name in rows[0][1]] if rows else []


def _read_csv_layout(csv_file: Path) -> TileIndex:
    base = csv_file.parent
    table, how = _read_rows(csv_file)
    header = [name.lower() for name in table[0][1]] if table else []
    missing_columns = {"path", "label"} - set(header)
    if missing_columns:
        raise LayoutError(f"{csv_file}, line 1: its header names no {' or '.join(sorted(missing_columns))} column (it reads as {how}: "
                          f"{', '.join(header) or 'nothing'}); the csv layout needs {LAYOUTS['csv']}")  # fmt: skip
    columns = {name: k for k, name in enumerate(header) if name}
    records = [(n, {name: row[k] if k < len(row) else "" for name, k in columns.items()}) for n, row in table[1:]]
    rows = [(n, r["path"], r["label"]) for n, r in records]
    images = {r["path"]: base / r["path"] for _, r in records if (base / r["path"]).is_file()}
    labels = _check_labels(csv_file, rows, images, f"{base} (paths relative to the CSV)")
    has_groups = "group" in columns
    if has_groups:
        missing = [f"line {n}" for n, r in records if not r["group"]]
        if missing:
            raise LayoutError(f"{csv_file}: the group column is empty on {_first(missing)}; fill it in or drop the column")
    return TileIndex(
        data_dir=base, layout="csv", train_paths=[base / path for _, path, _ in rows], train_labels=labels,
        train_groups=np.array([r["group"] for _, r in records]) if has_groups else None,
        test_ids=[], test_paths=[], test_labels=None, origin=_origin(base),
        label_rule=f"labels{' and groups' if has_groups else ''} from {csv_file.name} by column name ({how})",
    )  # fmt: skip


# Words in folder names (split at anything not a letter or digit) that mean a tumour or normal tissue:
# for the warning when a tumour's name becomes class 0 by alphabetical order, for telling two class
# folders from two folders of classes, and for the class_map a refusal suggests. "1" and "0" count
# as whole names only (patient_1 is not a class).
TUMOUR_WORDS = {"aca", "scc", "malignant", "malignancy", "tumor", "tumour", "cancer", "cancerous", "carcinoma", "adenocarcinoma",
                "metastasis", "metastases", "metastatic", "positive"}  # fmt: skip
NORMAL_WORDS = {"n", "normal", "benign", "healthy", "negative", "nontumor", "nontumour", "noncancer", "noncancerous"}


def class_meaning(name: str) -> str:
    """What a folder name says of its tiles: "tumour" (colon_aca, malignant, 1), "normal" (lung_n,
    benign, non-tumour, 0) or "" (SOB, 40X, patient_1)."""
    lowered = name.lower()
    if lowered in ("0", "1"):
        return "normal" if lowered == "0" else "tumour"
    words = [w for w in re.split(r"[^a-z0-9]+", lowered) if w]
    negated = any(w in ("non", "no", "not") and nxt in TUMOUR_WORDS for w, nxt in zip(words, words[1:]))
    if negated or NORMAL_WORDS & set(words):
        return "normal"
    return "tumour" if TUMOUR_WORDS & set(words) else ""


def _walk_images(folder: Path, ignored: list[str], parts: tuple[str, ...], seen: set[str] | None = None) -> list[tuple[tuple[str, ...], Path]]:
    """Every image below `folder` at any depth, each with the folder names from data_dir to it
    (`parts` names `folder`): a folder's own images in id order, then its sub-folders' in name
    order. Hidden and system folders are passed over; a folder linked twice is read once."""
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return []
    seen.add(real)
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    images = _images_in(entries, ignored)
    found = [(parts, images[stem]) for stem in sorted(images, key=_natural_key)]
    for entry in sorted((e for e in entries if e.is_dir() and not e.name.startswith(".") and not _is_system_file(e.name)),
                        key=lambda e: _natural_key(e.name)):  # fmt: skip
        found += _walk_images(Path(entry.path), ignored, (*parts, entry.name), seen)
    return found


def _top_folders(data_dir: Path) -> list[Path]:
    """The folders of data_dir that can be classes: not hidden, not a system folder, not a split's (train/, test/)."""
    return sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and not _is_system_file(p.name)
                  and p.name.lower() not in SPLIT_FOLDER_NAMES)  # fmt: skip


def _where(found: list[tuple[tuple[str, ...], Path]], count: int = 8) -> str:
    """Where images were found: the folders holding them, with how many each, the first `count`."""
    folders = Counter("/".join(parts) + "/" if parts else "(the folder itself)" for parts, _ in found)
    shown = ", ".join(f"{name} ({n})" for name, n in list(folders.items())[:count])
    return f"{shown}{', ...' if len(folders) > count else ''} ({len(found)} images in {len(folders)} folders)"


def _suggested_map(names) -> str:
    """A class_map for `names`, 1 where the name means a tumour, 0 where it means normal tissue, ? where it says neither."""
    value = {"tumour": "1", "normal": "0", "": "?"}
    return ",".join(f"{name}={value[class_meaning(name)]}" for name in names)


def _parse_class_map(class_map: str) -> dict[str, int]:
    """A class_map such as "colon_aca=1,colon_n=0" (commas or semicolons; a name may be a path below
    data_dir, lung/n) as {folder: label}. Raises LayoutError for anything else, or a map without both labels."""
    how = ("expected folder names mapped to 1 (cancer) or 0 (normal), separated by commas, e.g. "
           "class_map='colon_aca=1,colon_n=0'")  # fmt: skip
    mapping: dict[str, int] = {}
    for pair in (p.strip() for p in re.split(r"[,;]", class_map) if p.strip()):
        name, equals, value = (part.strip() for part in pair.partition("="))
        name = name.strip("/")
        if not equals or not name or value not in ("0", "1"):
            raise LayoutError(f"class_map={class_map!r}: {pair!r} is not name=0 or name=1; {how}")
        if name in mapping:
            raise LayoutError(f"class_map={class_map!r} names {name!r} twice; {how}")
        mapping[name] = int(value)
    if set(mapping.values()) != {0, 1}:
        raise LayoutError(f"class_map={class_map!r} must map at least one folder to 1 and one to 0; {how}")
    return mapping


def _numbered(parts: tuple[str, ...], class_depth: int, source: Path) -> str:
    """An image's path with the levels below its class folder numbered as group_level counts them."""
    below = [f"[{k}] {name}" for k, name in enumerate(parts[class_depth + 1 :], start=1)]
    return "/".join([*parts[: class_depth + 1], *below, source.name])


def _groups_at(group_level: int, found, class_depths: list[int]) -> np.ndarray:
    """The name of the folder `group_level` levels below each image's class folder, or, negative,
    up from the image (-1 its own folder), past the class folder too: -2 is the patient of IDC's
    <patient>/0/<image>. Raises LayoutError, with an example, where an image has no such level or
    the level is its class folder (grouping by class would put each class on one side of the split)."""
    groups, short, on_class = [], [], []
    for (parts, source), depth in zip(found, class_depths):
        if group_level > 0:
            below = parts[depth + 1 :]
            if group_level > len(below):
                short.append(_numbered(parts, depth, source))
                continue
            groups.append(below[group_level - 1])
        elif -group_level > len(parts):
            short.append(_numbered(parts, depth, source))
        elif len(parts) + group_level == depth:
            on_class.append(f"{parts[depth]} in {'/'.join((*parts, source.name))}")
        else:
            groups.append(parts[group_level])
    if on_class:
        raise LayoutError(f"group_level={group_level} names the class folder itself ({_first(on_class, 3)}), and a class is not a "
                          "group: the split would put each class on one side. Count -1, -2, ... up from the image to the folder of "
                          "the patient or slide")  # fmt: skip
    if short:
        raise LayoutError(f"group_level={group_level} names a folder level that some images lack (levels below the class folder "
                          f"are numbered 1, 2, ... from the top, -1, -2, ... from the image): {_first(short, 3)}")  # fmt: skip
    return np.array(groups)


def _classes_below_groups(found) -> tuple[int, list[str]] | None:
    """Where class folders repeat below folders that group them (IDC's <patient>/0/ and <patient>/1/,
    or <patient>/<magnification>/<class>/): the depth of the class folders and their names, when one
    level below the top holds, above every image, names that all say cancer or normal (both kinds),
    each under at least two parent folders. None otherwise: no guess where a name says neither."""
    for depth in range(1, max(len(parts) for parts, _ in found)):
        if any(len(parts) <= depth for parts, _ in found):
            return None  # an image above this level: no deeper level holds every image's class
        names = {parts[depth] for parts, _ in found}
        if {class_meaning(name) for name in names} != {"tumour", "normal"}:
            continue
        parents = {name: {parts[:depth] for parts, _ in found if parts[depth] == name} for name in names}
        if all(len(held_by) >= 2 for held_by in parents.values()):
            return depth, sorted(names, key=_natural_key)
    return None


def _group_level_above(found, class_depth: int) -> tuple[int | None, int]:
    """The folder level above class folders at `class_depth` that names the patient or slide: the
    one with the most distinct names (a patient's, not a magnification's), as its depth, and as the
    group_level that counts up to it from every image; None for that where images sit at different
    depths (no one negative level reaches it from all of them)."""
    level = max(range(class_depth), key=lambda k: (len({parts[k] for parts, _ in found}), k))
    lengths = {len(parts) for parts, _ in found}
    return (level - lengths.pop() if len(lengths) == 1 else None), level


def _read_it_grouped(found, class_depth: int, names: list[str], class_map: str) -> str:
    """What to paste to read class folders below group folders leak-free, in words: the class_map
    (given, or from the names) and the group_level that names each image's patient or slide."""
    group_level, level = _group_level_above(found, class_depth)
    parents = sorted({parts[level] for parts, _ in found}, key=_natural_key)
    parts, source = found[0]
    example = "/".join((*parts, source.name))
    held = f"{_first(parents, 3)} each hold {' and '.join(name + '/' for name in names)}, as in {example}"
    if group_level is None:
        return (f"{held}; the images sit at different depths, so no one group_level counts up to the patient or slide folder "
                f"({parts[level]} there) from every image: read the set with class_map='{class_map}' and give the groups in a "
                "CSV's group column (the csv layout)")  # fmt: skip
    return (f"{held}. Read them leak-free with class_map='{class_map}', group_level={group_level} in a notebook, or "
            f"CLASS_MAP={class_map} GROUP_LEVEL={group_level} for make: group_level={group_level} makes each image's group its folder "
            f"at level {group_level}, counted up from the image (-1 its own folder; {parts[level]} for {source.name}), so the split "
            "keeps each patient or slide on one side")  # fmt: skip


def _read_class_folders(data_dir: Path, positive_class: str, class_map: str, group_level: int) -> TileIndex | None:
    """Class folders with their images at any depth: two folders (positive_class or the alphabetical
    rule says which is 1), or any folders at any level that class_map maps to 0 and 1. None when no
    folder of data_dir holds an image. Raises LayoutError for more or fewer than two classes without
    a map, for two folders that each hold folders naming classes, and for a map that fits nothing."""
    ignored: list[str] = []
    found = [item for folder in _top_folders(data_dir) for item in _walk_images(folder, ignored, (folder.name,))]
    if not found:
        return None
    warnings, notes = [], []
    if class_map:
        if positive_class:
            raise LayoutError(f"give positive_class or class_map, not both (positive_class={positive_class!r}, class_map={class_map!r})")
        mapping = _parse_class_map(class_map)
        matched, labels, class_depths, kept, left_out, hits = set(), [], [], [], Counter(), {}
        for parts, source in found:
            if parts not in hits:  # the deepest folder above the image that the map names, and its depth
                hits[parts] = next(((name, depth) for depth in range(len(parts) - 1, -1, -1) for name in mapping
                                    if "/".join(parts[: depth + 1]) == name or "/".join(parts[: depth + 1]).endswith("/" + name)), None)  # fmt: skip
            hit = hits[parts]
            if hit is None:
                left_out["/".join(parts)] += 1
                continue
            matched.add(hit[0])
            labels.append(mapping[hit[0]])
            class_depths.append(hit[1])
            kept.append((parts, source))
        unmatched = [name for name in mapping if name not in matched]
        if unmatched:
            raise LayoutError(f"class_map names folders that hold no images under {data_dir}: {', '.join(unmatched)}; "
                              f"images were found in {_where(found)}")  # fmt: skip
        if len(set(labels)) < 2:  # every folder of one label was matched by a deeper name of the other
            raise LayoutError(f"class_map={class_map!r} leaves every image of {data_dir} labelled {labels[0]}; training needs both 0 and 1")
        found = kept
        ones, zeros = (sorted(name for name, label in mapping.items() if label == value) for value in (1, 0))
        rule = f"class folders by class_map: {', '.join(ones)} are 1, {', '.join(zeros)} are 0 (the deepest named folder above an image decides)"
        if left_out:
            notes.append(f"{sum(left_out.values())} images in folders class_map does not name were left out: "
                         f"{', '.join(list(left_out)[:5])}{', ...' if len(left_out) > 5 else ''} ({len(left_out)} folders)")  # fmt: skip
    else:
        names = sorted({parts[0] for parts, _ in found})
        two_classes = len(names) == 2 and {class_meaning(name) for name in names} == {"tumour", "normal"}
        below_groups = None if two_classes else _classes_below_groups(found)
        if below_groups:  # IDC's <patient>/0/, <patient>/1/: the classes are one level down, the top folders are patients
            depth, classes = below_groups
            suggested = _suggested_map(classes)
            raise LayoutError(f"{data_dir}: its class folders ({', '.join(classes)}) sit below folders that look like patients or "
                              f"slides: {_read_it_grouped(found, depth, classes, suggested)}. The labels in that class_map (1 = cancer, "
                              "0 = normal) are read from the folder names: check them")  # fmt: skip
        if len(names) != 2:
            raise LayoutError(f"{data_dir}: class folders must be exactly two (one per class) unless class_map maps them to 1 and 0; "
                              f"found {len(names)}: {', '.join(names)}. Map them, e.g. class_map='{_suggested_map(names)}' "
                              "(1 = cancer, 0 = normal: guessed from the names, check each; a folder the map leaves out is left out of the run)")  # fmt: skip
        nested = {name: sorted({p for parts, _ in found if parts[0] == name for p in parts[1:] if class_meaning(p)}, key=_natural_key) for name in names}
        mixed = [name for name in names if {class_meaning(p) for p in nested[name]} >= {"tumour", "normal"}]
        if mixed:
            inner = [p for name in names for p in nested[name]]
            raise LayoutError(f"{data_dir}: its two folders {names[0]}/ and {names[1]}/ look like groups of classes, not two classes: "
                              + "; ".join(f"{name}/ holds {', '.join(nested[name])}" for name in mixed)
                              + f". Say which folders are cancer (1) and which normal (0) with class_map, e.g. class_map='{_suggested_map(inner)}' "
                              f"(guessed from the names, check each; a folder left out of the map is left out of the run), or point data_dir "
                              f"at {' or '.join(str(data_dir / name) for name in mixed)}. If {names[0]} and {names[1]} are the classes after all, "
                              f"class_map='{names[0]}=?,{names[1]}=?' with 1 and 0 in place of the ?s")  # fmt: skip
        if positive_class:
            if positive_class not in names:
                raise LayoutError(f"positive_class={positive_class!r} is not one of the class folders in {data_dir}: {', '.join(names)}")
            rule = f"class folders: {positive_class} is 1 (positive_class), the other 0"
        else:
            positive_class = names[1]
            rule = (f"class folders: {names[1]} is 1 and {names[0]} is 0 by alphabetical order (torchvision's "
                    "ImageFolder rule); set positive_class to choose")  # fmt: skip
            if class_meaning(names[0]) == "tumour" or class_meaning(names[1]) == "normal":
                warnings.append(f"{names[0]} became class 0 (normal) and {names[1]} class 1 (cancer) by alphabetical order, but the "
                                f"names say otherwise; if {names[0]} is the cancer class, set positive_class={names[0]!r}")  # fmt: skip
        labels = [1 if parts[0] == positive_class else 0 for parts, _ in found]
        class_depths = [0] * len(found)
    loose = [p.name for p in data_dir.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES) and not _is_system_file(p.name) and p.is_file()]
    if loose:
        notes.append(f"{len(loose)} images directly in {data_dir} are in no class folder and were left out: {_first(sorted(loose), 3)}")
    deepest = max(len(parts) - 1 - depth for (parts, _), depth in zip(found, class_depths))
    groups = None
    if group_level:
        groups = _groups_at(group_level, found, class_depths)
        where = f"{group_level} below the class folder" if group_level > 0 else f"{-group_level} up from the image"
        notes.append(f"groups from folder level {where} (group_level={group_level}): {len(set(groups))} groups, each by its folder's name")
    elif class_map and (repeated := _mapped_below_groups(found, class_depths)):
        warnings.append(f"the class folders repeat below other folders: {_read_it_grouped(found, class_depths[0], repeated, class_map)}; "
                        "without a group level the split is random, puts views of one patient on both sides, and validation "
                        "scores then flatter the model")  # fmt: skip
    elif deepest:
        (parts, source), depth = max(zip(found, class_depths), key=lambda item: len(item[0][0]) - item[1])
        levels = f"{deepest} folder{'s' if deepest > 1 else ''}"
        notes.append(f"images up to {levels} below their class folders")
        warnings.append(f"the images sit up to {levels} below their class folders, as in {_numbered(parts, depth, source)}; "
                        "if one of those levels names the patient or slide, set group_level to its number (or -1 for an "
                        "image's own folder, -2 above it) so that the split keeps each patient on one side; a random split "
                        "puts views of one patient on both sides and validation scores then flatter the model")  # fmt: skip
    rule = "; ".join([rule, *notes, *(f"WARNING: {w}" for w in warnings)])
    return TileIndex(
        data_dir=data_dir, layout="class-folders", train_paths=[source for _, source in found],
        train_labels=np.array(labels, dtype=np.int64), train_groups=groups, test_ids=[], test_paths=[], test_labels=None,
        origin=_origin(data_dir), label_rule=rule, ignored=ignored, warnings=warnings,
    )  # fmt: skip


def _mapped_below_groups(found, class_depths: list[int]) -> list[str]:
    """The names of class folders that class_map matched at one depth below the top, each under at
    least two parent folders (patients or slides: IDC read with class_map='0=0,1=1'); [] otherwise."""
    depth = class_depths[0]
    if not depth or any(d != depth for d in class_depths):
        return []
    parents: dict[str, set] = {}
    for parts, _ in found:
        parents.setdefault(parts[depth], set()).add(parts[:depth])
    return sorted(parents, key=_natural_key) if all(len(held_by) >= 2 for held_by in parents.values()) else []


def _holds_images(folder: Path) -> bool:
    """Whether image files lie directly in `folder`."""
    return any(p.name.lower().endswith(IMAGE_SUFFIXES) and not _is_system_file(p.name) and p.is_file() for p in folder.iterdir())


def _images_below(folder: Path) -> bool:
    """Whether an image file lies anywhere below `folder` (stops at the first)."""
    return any(name.lower().endswith(IMAGE_SUFFIXES) for _, _, names in os.walk(folder) for name in names)


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


def _what_is_there(data_dir: Path, entries: list[Path], has_train: bool) -> str:
    """Why a folder matches no layout: what it holds, where images were found below it, and the
    nearest layout that would read them."""
    held = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in entries)[:20])
    hint = " (train/ is there but no train_label.csv or train_labels.csv)" if has_train else ""
    found = _walk_images(data_dir, [], ())
    if not found:
        return f"matches no layout{hint}, and no images were found in it at any depth; it holds: {held}"
    where = f"matches no layout{hint}; it holds: {held}. Images were found in: {_where(found)}"
    if any(not parts for parts, _ in found):
        return (f"{where}. Nearest layouts: csv (a path,label CSV beside the images, with a group column for a patient "
                "or slide) or class folders (the images moved into one folder per class)")  # fmt: skip
    # The shallowest folder whose own sub-folders hold images in two or more branches: class folders there.
    candidates = {parts[:k] for parts, _ in found for k in range(1, len(parts))}
    for prefix in sorted(candidates, key=lambda prefix: (len(prefix), prefix[0].lower() != "train", prefix)):
        branches = sorted({parts[len(prefix)] for parts, _ in found if parts[: len(prefix)] == prefix and len(parts) > len(prefix)})
        if len(branches) >= 2:
            return f"{where}. Nearest layout: class folders at {data_dir.joinpath(*prefix)} (it holds {', '.join(branches)}): give that as data_dir"
    return where


def read_layout(data_dir: str | Path, positive_class: str = "", *, class_map: str = "", group_level: int = 0) -> TileIndex:
    """The labelled (and test) tiles of `data_dir`, whichever supported layout it is in (see LAYOUTS).

    positive_class: the class folder labelled 1 (two class folders; else the second alphabetically).
    class_map: "name=1,name=0,...": folders at any level below data_dir mapped to labels, for data
      sets of more than two classes or classes below folders that group them; images in folders it
      does not name are left out, stated in the label rule.
    group_level: a folder level that names each image's group (patient, slide), counted 1, 2, ...
      down from the class folder or -1, -2, ... up from the image, past the class folder too (-2 is
      the patient of <patient>/0/<image>); 0 for none. The split is then grouped.
    Raises LayoutError naming the file, the line where there is one, and what was expected; class
    folders repeated below patient or slide folders are refused with the class_map and group_level
    to paste.
    Warnings (a tumour's name labelled 0 by alphabetical order, nested images without groups) are
    printed with WARNING: and kept in the TileIndex's warnings and label_rule."""
    index = _read_layout(Path(data_dir), positive_class, class_map, group_level)
    for warning in index.warnings:
        print(f"WARNING: {warning}")
    return index


def _read_layout(data_dir: Path, positive_class: str, class_map: str, group_level: int) -> TileIndex:
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
        folders = _top_folders(data_dir)
        if (data_dir / PCAM_H5.format(part="train", xy="x")).is_file():
            index = _read_pcam_h5(data_dir)
        elif has_train and (data_dir / "train_label.csv").is_file():
            index = _read_position_layout(data_dir, "course", "train_label.csv")
        elif has_train and (data_dir / "train_labels.csv").is_file():
            index = _read_position_layout(data_dir, "pcam", "train_labels.csv")
        elif not has_train and _is_test_only(data_dir, folders):
            index = _read_test_only(data_dir)
        elif len(csv_files) == 1:
            index = _read_csv_layout(csv_files[0])
        elif len(csv_files) > 1:
            raise LayoutError(f"{data_dir} holds several path,label CSV files ({', '.join(p.name for p in csv_files)}); "
                              "give the one to use as data_dir")  # fmt: skip
        elif len(folders) == 1 and not has_train and not _holds_images(data_dir) and not _holds_images(folders[0]) and _images_below(folders[0]):
            # An archive unzipped into a folder of its own name (BreaKHis_v1/histology_slides/breast/...): read what it holds.
            index = _read_layout(folders[0], positive_class, class_map, group_level)
            index.label_rule += f" (read from {folders[0].name}/, the only folder in {data_dir})"
            return index
        elif (found := _read_class_folders(data_dir, positive_class, class_map, group_level)) is not None:
            index = found
        else:
            raise _not_found(data_dir, _what_is_there(data_dir, entries, has_train))
    for name, value in (("positive_class", positive_class), ("class_map", class_map), ("group_level", group_level)):
        if value and index.layout != "class-folders":
            raise LayoutError(f"{name}={value!r} applies to class folders only; {data_dir} is in the {index.layout} layout, "
                              f"whose labels{' and groups' if index.layout == 'csv' else ''} come from its label file")  # fmt: skip
    return index
