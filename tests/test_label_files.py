"""Label files as spreadsheets save them (UTF-8 with or without BOM, UTF-16, comma, semicolon, tab)
are read; anything else is refused with the file's name, the line and what was expected."""

import shutil
import zipfile

import pytest

from lib.data.layouts import LayoutError, read_layout
from tests.helpers import write_tile

# How spreadsheets save a table: Excel's "Unicode Text" (UTF-16 with BOM, tabs, CRLF), "CSV UTF-8"
# (a BOM, commas; semicolons where the decimal mark is a comma), and plain UTF-8 from a script.
SAVED_AS = {
    "unicode-text": ("utf-16", "\t", "\r\n"),
    "csv-utf8-bom": ("utf-8-sig", ",", "\r\n"),
    "csv-utf8-bom-semicolon": ("utf-8-sig", ";", "\r\n"),
    "utf8-semicolon": ("utf-8", ";", "\n"),
    "utf16-le-without-bom": ("utf-16-le", ",", "\n"),
}
READ_AS = {"unicode-text": "UTF-16, tab-separated", "csv-utf8-bom": "UTF-8 with BOM, comma-separated",
           "csv-utf8-bom-semicolon": "UTF-8 with BOM, semicolon-separated", "utf8-semicolon": "UTF-8, semicolon-separated",
           "utf16-le-without-bom": "UTF-16, comma-separated"}  # fmt: skip


def save(path, rows, saved_as):
    encoding, delimiter, newline = SAVED_AS[saved_as]
    path.write_bytes("".join(delimiter.join(row) + newline for row in rows).encode(encoding))
    return path


@pytest.mark.parametrize("saved_as", SAVED_AS)
def test_course_label_files_in_every_spreadsheet_encoding_and_delimiter(tiny_data, tmp_path, saved_as):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    rows = [line.split(",") for line in (tiny_data / "train_label.csv").read_text().splitlines()]
    save(copy / "train_label.csv", rows, saved_as)
    test_rows = [line.split(",") for line in (tiny_data / "test_label.csv").read_text().splitlines()]
    save(copy / "test_label.csv", test_rows, saved_as)
    index, original = read_layout(copy), read_layout(tiny_data)
    assert (index.train_labels == original.train_labels).all() and [p.name for p in index.train_paths] == [p.name for p in original.train_paths]
    assert index.test_labels is not None and (index.test_labels == original.test_labels).all()
    assert READ_AS[saved_as] in index.label_rule


@pytest.mark.parametrize("saved_as", SAVED_AS)
def test_a_path_label_group_csv_in_every_spreadsheet_form_with_accented_paths(tmp_path, saved_as):
    rows = [["path", "label", "group"]]
    for k, folder in enumerate(["tumör", "normal"]):
        for i in range(3):
            write_tile(tmp_path / folder / f"pätient {i}.png", 10 * k + i)
            rows.append([f"{folder}/pätient {i}.png", str(1 - k), f"Zürich-{i}"])
    save(tmp_path / "labels.csv", rows, saved_as)
    index = read_layout(tmp_path)  # found by its header, read in full
    assert index.layout == "csv" and index.train_labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert index.train_paths[0] == tmp_path / "tumör" / "pätient 0.png" and set(index.train_groups) == {"Zürich-0", "Zürich-1", "Zürich-2"}
    assert READ_AS[saved_as] in index.label_rule


def test_a_file_in_another_encoding_is_refused_with_its_name_and_line(tmp_path):
    write_tile(tmp_path / "a" / "café.png", 1)
    write_tile(tmp_path / "b" / "b.png", 2)
    (tmp_path / "labels.csv").write_bytes("path,label\nb/b.png,0\na/café.png,1\n".encode("cp1252"))  # Excel's plain "CSV" on Windows
    with pytest.raises(LayoutError) as caught:
        read_layout(tmp_path)
    message = str(caught.value)
    assert f"{tmp_path / 'labels.csv'}, line 3: byte 0xe9 is not UTF-8 text" in message
    assert "Windows-1252" in message and "save as 'CSV UTF-8' or 'Unicode Text'" in message


def test_a_workbook_saved_with_a_csv_name_is_refused_as_a_workbook(tiny_data, tmp_path):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    with zipfile.ZipFile(copy / "train_label.csv", "w") as workbook:  # an .xlsx is a zip file
        workbook.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(LayoutError, match=r"train_label\.csv is a spreadsheet workbook \(\.xlsx or \.xls\), not CSV text.*'CSV UTF-8'"):
        read_layout(copy)


def test_a_row_that_does_not_split_into_id_and_label_names_its_line_and_what_was_expected(tiny_data, tmp_path):
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    lines = (tiny_data / "train_label.csv").read_text().splitlines()
    lines[5] = lines[5].replace(",", " ")  # one row with a space where the delimiter belongs
    (copy / "train_label.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LayoutError, match=r"train_label\.csv, line 6: expected two columns, id and label, got '5 \d' \(the file reads as UTF-8, comma-separated\)"):
        read_layout(copy)


def test_a_csv_layout_header_is_read_with_its_own_delimiter_and_names_what_it_found(tmp_path):
    save(tmp_path / "labels.csv", [["file", "class"], ["a.png", "0"]], "unicode-text")
    with pytest.raises(LayoutError, match=r"labels\.csv, line 1: its header names no label or path column \(it reads as UTF-16, tab-separated: file, class\)"):
        read_layout(tmp_path / "labels.csv")
