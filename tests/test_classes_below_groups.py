"""Class folders repeated below patient or slide folders (Kaggle's IDC: <patient>/0/, <patient>/1/):
refused with the class_map and group_level that read them leak-free, and read leak-free with them,
pasted as the message gives them (in a notebook, and through make's command line)."""

import re

import pytest

from lib.config import convert
from lib.data import load_tile_set, make_split
from lib.data.layouts import LayoutError, read_layout
from lib.pipeline import settings_from_make
from tests.helpers import idc_tree

PATIENTS = ("10253", "10254", "12868")


def _pasted(message: str) -> tuple[str, int]:
    """The class_map and group_level a refusal says to paste in a notebook."""
    match = re.search(r"class_map='([^']+)', group_level=(-?\d+) in a notebook", message)
    assert match, message
    return match.group(1), int(match.group(2))


@pytest.mark.parametrize("classes, middle, class_map, group_level", [
    (("0", "1"), (), "0=0,1=1", -2),  # IDC itself
    (("benign", "malignant"), ("40X",), "benign=0,malignant=1", -3),  # <patient>/<magnification>/<class>/
    (("normal", "tumor"), (), "normal=0,tumor=1", -2),
])  # fmt: skip
def test_class_folders_below_patient_folders_are_refused_with_what_reads_them_leak_free(tmp_path, capsys, classes, middle,
                                                                                         class_map, group_level):
    root = idc_tree(tmp_path / "IDC", PATIENTS, classes, middle)
    with pytest.raises(LayoutError) as caught:
        read_layout(root)
    message = str(caught.value)
    assert f"class_map='{class_map}', group_level={group_level} in a notebook" in message
    assert f"CLASS_MAP={class_map} GROUP_LEVEL={group_level} for make" in message
    assert "10253, 10254, 12868 (3 in all) each hold" in message and "=?" not in message and "10253=" not in message
    pasted_map, pasted_level = _pasted(message)
    index = read_layout(root, class_map=pasted_map, group_level=pasted_level)
    assert [int(label) for label in index.train_labels] == [int(p.parent.name in ("1", "malignant", "tumor")) for p in index.train_paths]
    assert sorted(set(index.train_groups)) == list(PATIENTS)
    assert all(group == path.relative_to(root).parts[0] for group, path in zip(index.train_groups, index.train_paths))
    assert "WARNING" not in capsys.readouterr().out
    tile_set = load_tile_set(index, size=16, cache_dir=None)
    split = make_split(tile_set, "auto", 0.34, seed=0)
    assert split.description.startswith("grouped (leak-free)")
    assert not set(tile_set.groups[split.train]) & set(tile_set.groups[split.valid])


def test_the_make_form_of_the_suggestion_reads_as_the_notebook_form(tmp_path):
    root = idc_tree(tmp_path / "IDC")
    with pytest.raises(LayoutError) as caught:
        read_layout(root)
    make_form = re.search(r"(CLASS_MAP=\S+ GROUP_LEVEL=-?\d+) for make", str(caught.value)).group(1)
    settings = settings_from_make(f" -- {make_form}")
    assert {name: convert(name, value) for name, value in settings.items()} == {"class_map": "0=0,1=1", "group_level": -2}


def test_two_patient_folders_are_not_taken_for_groups_of_classes(tmp_path):
    root = idc_tree(tmp_path / "IDC", PATIENTS[:2])
    with pytest.raises(LayoutError, match=r"class_map='0=0,1=1', group_level=-2 in a notebook") as caught:
        read_layout(root)
    assert "look like groups of classes" not in str(caught.value)


def test_a_class_map_without_a_group_level_on_such_a_tree_warns_with_the_level(tmp_path, capsys):
    index = read_layout(idc_tree(tmp_path / "IDC"), class_map="0=0,1=1")
    assert index.train_groups is None and len(index.train_paths) == 12
    printed = capsys.readouterr().out
    assert "WARNING: the class folders repeat below other folders" in printed and "GROUP_LEVEL=-2 for make" in printed
    assert index.warnings and "WARNING: the class folders repeat" in index.label_rule


def test_a_group_level_on_the_class_folder_itself_is_refused(tmp_path):
    with pytest.raises(LayoutError, match=r"group_level=-1 names the class folder itself \(0 in 10253/0/10253_idx5_x1_y51_class0\.png"):
        read_layout(idc_tree(tmp_path / "IDC"), class_map="0=0,1=1", group_level=-1)


def test_images_at_different_depths_get_the_class_map_and_the_csv_way_to_groups(tmp_path):
    root = idc_tree(tmp_path / "IDC")
    idc_tree(root / "10253" / "1", ("region-a",), ("deeper",), per_folder=1)  # 10253/1/region-a/deeper/...: a level more
    with pytest.raises(LayoutError, match=r"different depths, so no one group_level .* class_map='0=0,1=1' and give the groups in a CSV"):
        read_layout(root)
