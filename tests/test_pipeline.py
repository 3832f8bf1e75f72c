"""`make run-all`'s behaviour: unchanged runs are skipped, a failure stops with its notebook kept."""

import shutil

import pytest

from lib import pipeline


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "EXECUTED_DIR", tmp_path / "executed")
    monkeypatch.setattr(pipeline, "STAMPS_DIR", tmp_path / "executed" / ".stamps")
    return tmp_path


def test_unchanged_notebook_is_skipped_and_a_change_reruns_it(isolated, monkeypatch):
    calls = []

    def fake_execute(notebook, output_name, parameters):
        calls.append(notebook)
        (isolated / "executed").mkdir(exist_ok=True)
        (isolated / "executed" / output_name).write_text("{}")

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    assert pipeline._run_if_changed("01_baseline_cnn.ipynb", "01_baseline_cnn.ipynb", {}, "stamp-a")
    assert not pipeline._run_if_changed("01_baseline_cnn.ipynb", "01_baseline_cnn.ipynb", {}, "stamp-a")
    assert pipeline._run_if_changed("01_baseline_cnn.ipynb", "01_baseline_cnn.ipynb", {}, "stamp-b")
    assert calls == ["01_baseline_cnn.ipynb"] * 2


def test_fingerprint_follows_parameters_and_data(tiny_data, tmp_path):
    data = pipeline.data_fingerprint(tiny_data)
    assert data == pipeline.data_fingerprint(tiny_data)
    a = pipeline.fingerprint("01_baseline_cnn.ipynb", {"device": "cpu"}, data, "quick")
    assert a == pipeline.fingerprint("01_baseline_cnn.ipynb", {"device": "cpu"}, data, "quick")
    assert a != pipeline.fingerprint("01_baseline_cnn.ipynb", {"device": "cuda"}, data, "quick")
    assert a != pipeline.fingerprint("01_baseline_cnn.ipynb", {"device": "cpu"}, data, "full")
    assert a != pipeline.fingerprint("02_resnet50_10_epochs.ipynb", {"device": "cpu"}, data, "quick")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    lines = (copy / "train_label.csv").read_text().splitlines()
    first_id, first_label = lines[1].split(",")
    lines[1] = f"{first_id},{1 - int(first_label)}"
    (copy / "train_label.csv").write_text("\n".join(lines) + "\n")
    assert pipeline.data_fingerprint(copy) != pipeline.data_fingerprint(tiny_data)  # a changed label counts


def test_a_failing_notebook_stops_with_its_error_kept_on_disk(isolated, tiny_data):
    """A real papermill execution with a bad parameter: the pipeline raises, naming the notebook,
    and the executed copy holds the error; no stamp is written, so the next run retries it."""
    with pytest.raises(pipeline.NotebookFailed, match=r"01_baseline_cnn.ipynb failed.*epochs=0 must be at least 1"):
        pipeline._run_if_changed("01_baseline_cnn.ipynb", "01_baseline_cnn.ipynb",
                                 {"data_dir": str(tiny_data), "epochs": 0, "profile": "quick"}, "stamp")  # fmt: skip
    executed = (isolated / "executed" / "01_baseline_cnn.ipynb").read_text()
    assert "epochs=0 must be at least 1" in executed
    assert not (isolated / "executed" / ".stamps" / "01_baseline_cnn.ipynb.stamp").exists()


def test_an_unknown_notebook_parameter_is_refused_by_name():
    with pytest.raises(ValueError, match=r"01_baseline_cnn.ipynb has no parameter\(s\) epoch; it accepts: data_dir, .*epochs"):
        pipeline.check_parameters("01_baseline_cnn.ipynb", {"epoch": 3, "data_dir": "x"})
    pipeline.check_parameters("01_baseline_cnn.ipynb", {"epochs": 3, "positive_class": "a"})
