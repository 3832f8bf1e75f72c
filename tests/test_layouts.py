"""Every supported layout is found and read; every bad-input case fails by name, or is ignored."""

import shutil
import zipfile

import numpy as np
import pytest

from lib.data import decode_tiles
from lib.data.layouts import LayoutError, read_layout
from tests.helpers import class_folders, write_tile


def test_reads_the_course_layout(tiny_data):
    index = read_layout(tiny_data)
    assert index.layout == "course" and len(index.train_paths) == 96 and index.train_labels.dtype == np.int64
    assert index.train_paths[0].name == "1.jpg" and index.train_groups is None
    assert index.test_ids == [str(i) for i in range(1, 25)]
    assert index.test_labels is not None and len(index.test_labels) == 24
    assert "generated" in index.origin and "by position" in index.label_rule


def test_header_written_as_in_a_submission_is_accepted(tiny_data, tmp_path):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    lines = (copy / "train_label.csv").read_text().splitlines()
    (copy / "train_label.csv").write_text("\n".join(["# Id,Values", *lines[1:]]) + "\n")
    assert len(read_layout(copy).train_paths) == 96


@pytest.mark.parametrize("inner_folder", [True, False])
def test_course_layout_straight_from_its_zip_files(tiny_data, tmp_path, inner_folder):
    """train.zip / test.zip as downloaded, with the tiles in a train/ folder inside or at the top."""
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    shutil.copy(tiny_data / "train_label.csv", zipped)
    for part in ("train", "test"):
        with zipfile.ZipFile(zipped / f"{part}.zip", "w") as archive:
            for image in sorted((tiny_data / part).iterdir()):
                archive.write(image, f"{part}/{image.name}" if inner_folder else image.name)
            archive.writestr("__MACOSX/._1.jpg" if inner_folder else ".DS_Store", b"junk")
    index = read_layout(zipped)
    assert index.layout == "course" and len(index.train_paths) == 96 and index.test_ids[:3] == ["1", "2", "3"]
    from_zip, _, _ = decode_tiles(index.train_paths[:3], cache_dir=None)
    from_folder, _, _ = decode_tiles(read_layout(tiny_data).train_paths[:3], cache_dir=None)
    assert (from_zip == from_folder).all()


def test_class_folders_state_their_label_rule_and_take_positive_class(tmp_path):
    root = class_folders(tmp_path / "classes", {"colon_aca": 3, "colon_n": 4})
    index = read_layout(root)
    assert index.layout == "class-folders" and len(index.train_paths) == 7
    assert "colon_n is 1 and colon_aca is 0 by alphabetical order" in index.label_rule
    assert index.train_labels.tolist() == [0] * 3 + [1] * 4
    chosen = read_layout(root, positive_class="colon_aca")
    assert chosen.train_labels.tolist() == [1] * 3 + [0] * 4 and "colon_aca is 1 (positive_class)" in chosen.label_rule
    with pytest.raises(LayoutError, match="positive_class='tumour' is not one of the class folders.*colon_aca, colon_n"):
        read_layout(root, positive_class="tumour")
    class_folders(root, {"lung_n": 1})
    with pytest.raises(LayoutError, match="exactly two.*found 3: colon_aca, colon_n, lung_n"):
        read_layout(root)


def test_csv_with_groups_given_as_folder_or_file(tmp_path):
    root = class_folders(tmp_path / "csvset", {"a": 4, "b": 4})
    rows = ["path,label,group"] + [f"{c}/{c}{i}.png,{int(c == 'b')},{c}-{i // 2}" for c in "ab" for i in range(4)]
    (root / "tiles.csv").write_text("\n".join(rows) + "\n")
    index = read_layout(root)  # the CSV wins over the class folders: it carries the groups
    assert index.layout == "csv" and index.train_groups.tolist() == ["a-0", "a-0", "a-1", "a-1", "b-0", "b-0", "b-1", "b-1"]
    assert read_layout(root / "tiles.csv").train_labels.tolist() == [0] * 4 + [1] * 4
    (root / "tiles.csv").write_text("path,label\n" + "a/a0.png,0\na/nothere.png,1\n")
    with pytest.raises(LayoutError, match=r"ids with no image.*a/nothere.png \(1 in all\)"):
        read_layout(root)


def test_patchcamelyon_tifs_are_read_and_recorded_as_resized(tmp_path):
    root = tmp_path / "pcam"
    ids = ["f38a6374c348f90b587e046aac6079959adf3835", "c18f2d887b7ae4f6742ee445113fa1aef383ed77", "755db6279dae599ebb4d39a9123cce439965282d"]
    for k, tile_id in enumerate(ids):
        write_tile(root / "train" / f"{tile_id}.tif", k, size=96)
    (root / "train_labels.csv").write_text("id,label\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
    write_tile(root / "test" / "0a1b.tif", 9, size=96)
    index = read_layout(root)
    assert index.layout == "pcam" and index.train_labels.tolist() == [0, 1, 0] and index.test_ids == ["0a1b"]
    tiles, _, record = decode_tiles(index.train_paths, cache_dir=None)
    assert tiles.shape == (3, 3, 256, 256) and record.resized == {"96x96": 3}
    assert "resized to 256x256: 3 tiles of 96x96" in record.notes(256)


def test_missing_empty_and_unrecognised_folders_name_the_layouts(tmp_path):
    for layout in ("course", "pcam", "csv", "class-folders"):
        with pytest.raises(LayoutError, match=f"(?s)nowhere: does not exist.*{layout}"):
            read_layout(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(LayoutError, match="empty: is empty. The layouts read here"):
        read_layout(empty)
    odd = tmp_path / "odd"
    (odd / "train").mkdir(parents=True)
    write_tile(odd / "train" / "1.jpg", 0)
    write_tile(odd / "test" / "1.jpg", 1)
    (odd / "notes.txt").write_text("hi")
    with pytest.raises(LayoutError, match=r"no train_label.csv or train_labels.csv\); it holds: notes.txt, test/, train/"):
        read_layout(odd)  # not two classes called test and train


def test_every_label_problem_is_listed_at_once(tiny_data, tmp_path):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    for i in range(1, 16):
        (copy / "train" / f"{i}.jpg").unlink()  # 15 labelled ids lose their image
    shutil.copy(copy / "train" / "20.jpg", copy / "train" / "extra.jpg")  # an image nobody labelled
    rows = (copy / "train_label.csv").read_text().splitlines()
    rows[30] = rows[30].split(",")[0] + ",2"  # a label that is neither 0 nor 1
    rows.append(rows[40])  # a duplicate id
    (copy / "train_label.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(LayoutError) as caught:
        read_layout(copy)
    message = str(caught.value)
    assert "labels other than 0 or 1: 30 (line 31: '2') (1 in all)" in message
    assert "ids listed more than once: 40 (1 in all)" in message
    assert "ids with no image in train/: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (15 in all)" in message
    assert "images in train/ with no label: extra (1 in all)" in message


def test_one_class_only_is_refused(tiny_data, tmp_path):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    rows = (copy / "train_label.csv").read_text().splitlines()
    (copy / "train_label.csv").write_text("\n".join([rows[0]] + [r.split(",")[0] + ",1" for r in rows[1:]]) + "\n")
    with pytest.raises(LayoutError, match="one class only: every tile is labelled 1"):
        read_layout(copy)


def test_system_files_are_ignored(tiny_data, tmp_path):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    for junk in ("train/.DS_Store", "train/Thumbs.db", "train/._1.jpg", ".DS_Store", "test/Thumbs.db"):
        (copy / junk).write_bytes(b"\0\1")
    index = read_layout(copy)
    assert len(index.train_paths) == 96 and len(index.test_paths) == 24 and len(index.ignored) == 4  # those among the tiles


def test_positive_class_is_refused_where_labels_come_from_a_file(tiny_data):
    with pytest.raises(LayoutError, match="positive_class='1' applies to class folders only.*course layout"):
        read_layout(tiny_data, positive_class="1")


def test_a_csv_given_directly_must_name_its_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class\na.png,0\n")
    with pytest.raises(LayoutError, match="labels.csv, line 1: its header names no label or path column"):
        read_layout(tmp_path / "labels.csv")
