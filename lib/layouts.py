"""Tile layouts: find which one a `data_dir` holds, read it into a TileIndex, and check it.

Four layouts, tried in this order (the first that fits wins, and the run records which):
  course         train/<id>.jpg (or train.zip) + train_label.csv, columns read by position
  pcam           train/<id>.tif + train_labels.csv (PatchCamelyon as on Kaggle), by position
  csv            a CSV with a header naming path,label[,group]; paths relative to the CSV
  class-folders  two folders of images, one per class (torchvision's ImageFolder)
Every problem found in the labels is reported at once, each kind with its first ten offenders and a
count, so one fix-and-rerun cycle is enough.
"""

from __future__ import annotations

import codecs
import csv
import io
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Files that operating systems drop into folders; never tiles, never an error.
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
# Folder names that belong to a split, not a class: a course folder missing its label file must not
# be read as two classes called "test" and "train".
SPLIT_FOLDER_NAMES = {"train", "test", "valid", "validation", "val"}

LAYOUTS = {
    "course": "train/<id>.jpg (or train.zip) with train_label.csv: a header row, then id,label rows read "
              "by position (id = file stem, label 0 or 1); optionally test/<id>.jpg (or test.zip)",
    "pcam": "train/<id>.tif with train_labels.csv (id,label), the PatchCamelyon/Kaggle form; optionally test/<id>.tif",
    "csv": "one CSV file whose header names path,label and optionally group (paths relative to the CSV's "
           "folder); give the file itself as data_dir when the folder holds several",
    "class-folders": "exactly two folders of images, one per class (torchvision's ImageFolder); "
                     "positive_class names the folder labelled 1, else the second in alphabetical order",
}  # fmt: skip

# Label files as spreadsheets save them: the encodings told by their byte-order mark (UTF-32's
# little-endian mark begins with UTF-16's, so it is tried first), and the delimiters in use.
BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8 with BOM", "utf-16": "UTF-16", "utf-16-le": "UTF-16", "utf-16-be": "UTF-16", "utf-32": "UTF-32"}
EXPECTED_TEXT = ("expected a text file in UTF-8 (with or without a byte-order mark) or UTF-16, its columns separated by commas, "
                 "semicolons or tabs: in a spreadsheet, save as 'CSV UTF-8' or 'Unicode Text'")  # fmt: skip

# A tile is a file on disk or a member of a zip archive; both open with .open("rb") and print as a path.
TileSource = Path | zipfile.Path


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
    return "generated (lib/synthetic.py)" if (data_dir / "DATASET.json").exists() else f"user data at {data_dir}"


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
        if has_train and (data_dir / "train_label.csv").is_file():
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
