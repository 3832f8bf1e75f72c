"""Data sets whose images sit deeper than one folder per class: BreakHis- and LC25000-like trees
reach a leak-free run without code (class folders at any depth, a folder level as the group, a map
of many classes to 0/1), and every refusal says where the images are and how to read them."""

import re

import numpy as np
import pytest

from lib.data import load_tile_set, make_split
from lib.data.layouts import LayoutError, class_meaning, read_layout
from tests.helpers import LC25000_CLASSES, breakhis_tree, class_folders, lc25000_tree, write_tile


def test_a_breakhis_tree_is_read_from_its_unzipped_top_with_a_loud_word_about_groups(tmp_path, capsys):
    breakhis_tree(tmp_path)
    index = read_layout(tmp_path / "BreaKHis_v1")  # two wrapper folders above breast/
    assert index.layout == "class-folders" and len(index.train_paths) == 32 and index.train_groups is None
    assert index.data_dir == tmp_path / "BreaKHis_v1" / "histology_slides" / "breast"
    labels = {path.relative_to(index.data_dir).parts[0]: label for path, label in zip(index.train_paths, index.train_labels)}
    assert labels == {"benign": 0, "malignant": 1} and index.train_labels.tolist().count(1) == 16
    assert "malignant is 1 and benign is 0 by alphabetical order" in index.label_rule
    assert "read from histology_slides/, the only folder in" in index.label_rule
    printed = capsys.readouterr().out
    assert printed.count("WARNING: the images sit up to 4 folders below their class folders") == 1
    assert "benign/[1] SOB/[2] adenosis/[3] SOB_B_A_14-101A/[4] 100X/" in printed and "set group_level" in printed
    assert index.warnings and f"WARNING: {index.warnings[0]}" in index.label_rule  # the report shows it too


@pytest.mark.parametrize("group_level", [3, -2])
def test_a_folder_level_names_the_group_and_the_split_keeps_each_patient_on_one_side(tmp_path, capsys, group_level):
    breast = breakhis_tree(tmp_path, per_folder=3)
    index = read_layout(breast, group_level=group_level)
    patients = {path.parent.parent.name for path in index.train_paths}
    assert len(patients) == 8 and set(index.train_groups) == patients
    assert all(group == path.parent.parent.name for group, path in zip(index.train_groups, index.train_paths))
    assert "8 groups, each by its folder's name" in index.label_rule and "WARNING" not in capsys.readouterr().out
    tile_set = load_tile_set(index, size=16, cache_dir=None)
    split = make_split(tile_set, "auto", 0.25, seed=0)
    assert split.description.startswith("grouped (leak-free)")
    assert not set(tile_set.groups[split.train]) & set(tile_set.groups[split.valid])


def test_a_group_level_the_tree_lacks_or_a_layout_without_folders_is_refused(tmp_path, tiny_data):
    breast = breakhis_tree(tmp_path)
    with pytest.raises(LayoutError, match=r"group_level=5 names a folder level that some images lack.*"
                                          r"benign/\[1\] SOB/\[2\] adenosis/\[3\] SOB_B_A_14-101A/\[4\] 100X/SOB_B_A-14-101A-100-001\.png"):
        read_layout(breast, group_level=5)
    with pytest.raises(LayoutError, match="group_level=2 applies to class folders only; .* course layout"):
        read_layout(tiny_data, group_level=2)


def test_the_lc25000_top_folder_is_refused_with_a_class_map_that_reads_it(tmp_path, capsys):
    top = lc25000_tree(tmp_path)
    with pytest.raises(LayoutError) as caught:
        read_layout(top)
    message = str(caught.value)
    assert "its two folders colon_image_sets/ and lung_image_sets/ look like groups of classes, not two classes" in message
    assert "lung_image_sets/ holds lung_aca, lung_n, lung_scc" in message and str(top / "colon_image_sets") in message
    suggested = re.search(r"class_map='([^']+)'", message).group(1)
    assert suggested == "colon_aca=1,colon_n=0,lung_aca=1,lung_n=0,lung_scc=1"
    index = read_layout(top, class_map=suggested)  # the suggestion, pasted, reads the whole set
    by_class = {path.parent.name: label for path, label in zip(index.train_paths, index.train_labels)}
    assert len(index.train_paths) == 15 and by_class == {"colon_aca": 1, "colon_n": 0, "lung_aca": 1, "lung_n": 0, "lung_scc": 1}
    assert "colon_aca, lung_aca, lung_scc are 1, colon_n, lung_n are 0" in index.label_rule and "WARNING" not in capsys.readouterr().out


def test_more_than_two_classes_are_refused_by_name_with_a_map_to_paste(tmp_path):
    lung = lc25000_tree(tmp_path) / "lung_image_sets"
    with pytest.raises(LayoutError, match=r"exactly two .* found 3: lung_aca, lung_n, lung_scc\. Map them, e.g\. "
                                          r"class_map='lung_aca=1,lung_n=0,lung_scc=1'"):
        read_layout(lung)
    index = read_layout(lung, class_map="lung_aca=1,lung_n=0,lung_scc=1")
    assert index.train_labels.tolist() == [1, 1, 1, 0, 0, 0, 1, 1, 1]


def test_a_class_map_may_leave_folders_out_and_says_so(tmp_path):
    top = lc25000_tree(tmp_path)
    index = read_layout(top, class_map="colon_aca=1, colon_n=0")
    assert len(index.train_paths) == 6 and all(path.parent.parent.name == "colon_image_sets" for path in index.train_paths)
    assert ("9 images in folders class_map does not name were left out: lung_image_sets/lung_aca, lung_image_sets/lung_n, "
            "lung_image_sets/lung_scc (3 folders)") in index.label_rule  # fmt: skip
    deeper = read_layout(top, class_map="lung_image_sets=1;lung_image_sets/lung_n=0")  # a path, and the deepest name decides
    assert [(p.parent.name, int(label)) for p, label in zip(deeper.train_paths[::3], deeper.train_labels[::3])] == [
        ("lung_aca", 1), ("lung_n", 0), ("lung_scc", 1)]  # fmt: skip


@pytest.mark.parametrize("class_map, complaint", [
    ("colon_aca:1,colon_n=0", r"'colon_aca:1' is not name=0 or name=1; expected folder names mapped to 1 \(cancer\) or 0"),
    ("colon_aca=1,colon_aca=0", "names 'colon_aca' twice"),
    ("colon_aca=1,lung_aca=1", "must map at least one folder to 1 and one to 0"),
    ("colon_aca=1,colon_normal=0", r"names folders that hold no images under .*: colon_normal; images were found in "
                                   r"colon_image_sets/colon_aca/ \(3\), colon_image_sets/colon_n/ \(3\), lung_image_sets/lung_aca/ \(3\)"),
])  # fmt: skip
def test_a_class_map_that_does_not_fit_is_refused_with_what_was_expected(tmp_path, class_map, complaint):
    with pytest.raises(LayoutError, match=complaint):
        read_layout(lc25000_tree(tmp_path), class_map=class_map)


def test_class_map_and_positive_class_together_or_on_a_label_file_layout_are_refused(tmp_path, tiny_data):
    colon = lc25000_tree(tmp_path) / "colon_image_sets"
    with pytest.raises(LayoutError, match="give positive_class or class_map, not both"):
        read_layout(colon, "colon_aca", class_map="colon_aca=1,colon_n=0")
    with pytest.raises(LayoutError, match="class_map='1=1,0=0' applies to class folders only"):
        read_layout(tiny_data, class_map="1=1,0=0")


@pytest.mark.parametrize("names, warned", [
    (("colon_aca", "colon_n"), True), (("cancer", "normal"), True), (("1", "2"), True), (("Malignant", "Other"), True),
    (("healthy", "tumour"), False), (("benign", "malignant"), False), (("0", "1"), False), (("a", "b"), False),
])  # fmt: skip
def test_a_tumour_name_labelled_0_by_alphabetical_order_is_warned_about_loudly(tmp_path, capsys, names, warned):
    index = read_layout(class_folders(tmp_path / "set", dict.fromkeys(names, 2)))
    printed = capsys.readouterr().out
    assert (f"WARNING: {names[0]} became class 0 (normal) and {names[1]} class 1 (cancer) by alphabetical order" in printed) == warned
    assert ("WARNING:" in index.label_rule) == warned and bool(index.warnings) == warned
    if warned:
        assert f"set positive_class={names[0]!r}" in printed
        chosen = read_layout(tmp_path / "set", positive_class=names[0])
        assert not chosen.warnings and chosen.train_labels.tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("name, meaning", [
    ("colon_aca", "tumour"), ("lung_scc", "tumour"), ("malignant", "tumour"), ("Tumor", "tumour"), ("1", "tumour"),
    ("ductal_carcinoma", "tumour"), ("lung_n", "normal"), ("benign", "normal"), ("non-tumour", "normal"), ("0", "normal"),
    ("SOB", ""), ("40X", ""), ("patient_1", ""), ("N12", ""), ("colon_image_sets", ""),
])  # fmt: skip
def test_what_folder_names_mean(name, meaning):
    assert class_meaning(name) == meaning


def test_hidden_and_system_folders_in_a_tree_are_passed_over_and_loose_images_are_noted(tmp_path):
    root = class_folders(tmp_path / "set", {"normal": 2, "tumour": 2})
    write_tile(root / "tumour" / "slide-1" / "deep.png", 9)
    (root / "tumour" / "__MACOSX").mkdir()
    write_tile(root / "tumour" / "__MACOSX" / "junk.png", 10)
    write_tile(root / "normal" / ".thumbnails" / "thumb.png", 11)
    write_tile(root / "overview.png", 12)
    index = read_layout(root)
    assert sorted(p.name for p in index.train_paths) == ["deep.png", "normal0.png", "normal1.png", "tumour0.png", "tumour1.png"]
    assert "1 images directly in" in index.label_rule and "overview.png" in index.label_rule


def test_a_folder_that_matches_no_layout_says_where_the_images_are_and_the_nearest_layout(tmp_path):
    loose = tmp_path / "loose"
    for i in range(3):
        write_tile(loose / f"{i}.png", i)
    with pytest.raises(LayoutError, match=r"Images were found in: \(the folder itself\) \(3\).*Nearest layouts: csv .* or class folders"):
        read_layout(loose)
    split = class_folders(tmp_path / "split" / "train", {"normal": 2, "tumour": 2}).parent
    class_folders(split / "test", {"normal": 1, "tumour": 1})
    with pytest.raises(LayoutError) as caught:
        read_layout(split)
    message = str(caught.value)
    assert "train/ is there but no train_label.csv" in message and "Images were found in: test/normal/ (1), test/tumour/ (1), train/normal/ (2)" in message
    assert f"Nearest layout: class folders at {split / 'train'} (it holds normal, tumour): give that as data_dir" in message
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    (tmp_path / "empty" / "notes" / "README.txt").write_text("no tiles yet")
    (tmp_path / "empty" / "list.txt").write_text("")
    with pytest.raises(LayoutError, match="no images were found in it at any depth; it holds: list.txt, notes/"):
        read_layout(tmp_path / "empty")


def test_two_flat_class_folders_read_as_before(tmp_path):
    root = class_folders(tmp_path / "flat", {"normal": 3, "tumour": 12})
    index = read_layout(root)
    assert [p.stem for p in index.train_paths] == ["normal0", "normal1", "normal2", *sorted(f"tumour{i}" for i in range(12))]
    assert np.array_equal(index.train_labels, [0] * 3 + [1] * 12)
    assert index.label_rule == "class folders: tumour is 1 and normal is 0 by alphabetical order (torchvision's ImageFolder rule); set positive_class to choose"
    assert not index.warnings


def test_every_lc25000_class_is_found_under_its_organ(tmp_path):
    top = lc25000_tree(tmp_path, per_class=1)
    index = read_layout(top, class_map=",".join(f"{name}={int(not name.endswith('_n'))}" for names in LC25000_CLASSES.values() for name in names))
    assert [p.parent.name for p in index.train_paths] == [name for names in LC25000_CLASSES.values() for name in names]
