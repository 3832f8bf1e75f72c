"""`make run-all`'s behaviour: parameters from make's command line, unchanged runs skipped, a failure
stops with its notebook kept."""

import shutil

import pytest

from lib import pipeline
from lib.config import ParameterError
from lib.layouts import read_layout


def test_make_command_line_is_read_from_makeflags_with_spaces_and_backslashes():
    flags = r" -j2 --jobserver-auth=3,4 -- SET=a=1\ b=\"c\ d\" EPOCHS=3 DATA=/data/my\ tiles/set\ 1 FOO=bar\\baz"
    assert pipeline.make_command_line(flags) == [("SET", 'a=1 b="c d"'), ("EPOCHS", "3"), ("DATA", "/data/my tiles/set 1"), ("FOO", "bar\\baz")]
    assert pipeline.make_command_line("") == [] and pipeline.make_command_line(" -j2") == []
    assert pipeline.make_command_line("-- X=1") == [("X", "1")]


def test_make_variables_become_run_parameters_and_unknown_ones_fail():
    flags = r" -- SET=lr=0.01\ positive_class=\"tumour\ cells\" EPOCHS=3 DATA=/d\ 1 WEIGHTS=/w.pth RUNS=baseline PORT=8890"
    assert pipeline.settings_from_make(flags) == {"lr": "0.01", "positive_class": "tumour cells", "epochs": "3",
                                                  "data_dir": "/d 1", "weights_path": "/w.pth", "runs": "baseline"}  # fmt: skip
    assert pipeline.settings_from_make(" -- WEIGHTS=none") == {"weights": "none"}  # the field's own words
    assert pipeline.settings_from_make(" -- WEIGHTS=/data/none.pth") == {"weights_path": "/data/none.pth"}
    with pytest.raises(ParameterError, match=r"make variable EPOCH is no run parameter; accepted: .*TILE_SIZE.*EPOCHS.*DATA \(data_dir\), WEIGHTS \(weights_path\)"):
        pipeline.settings_from_make(" -- EPOCH=3")
    with pytest.raises(ParameterError, match=r"SET: 'epochs' is not name=value"):
        pipeline.settings_from_make(" -- SET=epochs")


def test_settings_are_converted_by_type_and_checked_by_name():
    parameters, options = pipeline.checked_settings({"epochs": "3", "compile": "true", "positive_class": "1", "lr": "1e-4",
                                                     "weights_path": "None", "data_dir": "data/x", "runs": "baseline"})  # fmt: skip
    assert parameters["epochs"] == 3 and parameters["compile"] is True and parameters["positive_class"] == "1"
    assert parameters["lr"] == 1e-4 and parameters["weights_path"] is None and parameters["data_dir"].endswith("/data/x")
    assert parameters["data_dir"].startswith("/") and options == {"runs": "baseline"}
    with pytest.raises(TypeError, match=r"epochs='3.0' should be int \(a whole number\)"):
        pipeline.checked_settings({"epochs": "3.0"})
    with pytest.raises(TypeError, match=r"skip_bad_images='maybe' should be bool"):
        pipeline.checked_settings({"skip_bad_images": "maybe"})
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) weights_file; accepted: .*weights_path"):
        pipeline.checked_settings({"weights_file": "/x.pth"})
    with pytest.raises(ParameterError, match=r"runs='resnet18': no run\(s\) resnet18"):
        pipeline._selected_runs({"runs": "resnet18"})


def test_run_all_refuses_a_bad_parameter_before_any_notebook(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "execute", lambda *a: pytest.fail("no notebook may start"))
    with pytest.raises(ValueError, match="epochs=0 must be at least 1"):
        pipeline.run_all({"epochs": "0", "reports_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="data_dir .*nowhere does not exist"):
        pipeline.run_all({"data_dir": str(tmp_path / "nowhere"), "reports_dir": str(tmp_path)})


def test_main_reports_errors_without_a_traceback(capsys, tmp_path):
    assert pipeline.main(["run-all", "epochz=3"]) == 1
    assert "ERROR: unknown parameter(s) epochz" in capsys.readouterr().err
    assert pipeline.main(["run-all", "--profile", "quick"]) == 2


def test_unchanged_notebook_is_skipped_and_a_change_reruns_it(tmp_path, monkeypatch):
    calls = []

    def fake_execute(notebook, executed_dir, parameters):
        calls.append(notebook)
        executed_dir.mkdir(exist_ok=True)
        (executed_dir / notebook).write_text("{}")

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    executed = tmp_path / "executed"
    assert pipeline._run_if_changed("01_baseline_cnn.ipynb", executed, {}, "stamp-a")
    assert not pipeline._run_if_changed("01_baseline_cnn.ipynb", executed, {}, "stamp-a")
    assert pipeline._run_if_changed("01_baseline_cnn.ipynb", executed, {}, "stamp-b")
    assert calls == ["01_baseline_cnn.ipynb"] * 2


def test_fingerprint_follows_parameters_and_data(tiny_data, tmp_path):
    data = pipeline.data_fingerprint(read_layout(tiny_data))
    assert data == pipeline.data_fingerprint(read_layout(tiny_data))
    a = pipeline.fingerprint("01_baseline_cnn.ipynb", {"device": "cpu"}, data)
    assert a == pipeline.fingerprint("01_baseline_cnn.ipynb", {"device": "cpu"}, data)
    assert a != pipeline.fingerprint("01_baseline_cnn.ipynb", {"device": "cuda"}, data)
    assert a != pipeline.fingerprint("02_resnet50_10_epochs.ipynb", {"device": "cpu"}, data)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    lines = (copy / "train_label.csv").read_text().splitlines()
    first_id, first_label = lines[1].split(",")
    lines[1] = f"{first_id},{1 - int(first_label)}"
    (copy / "train_label.csv").write_text("\n".join(lines) + "\n")
    assert pipeline.data_fingerprint(read_layout(copy)) != data  # a changed label counts


def test_a_failing_notebook_stops_with_its_error_kept_on_disk(tmp_path, tiny_data):
    """A real papermill execution with a bad parameter: the pipeline raises, naming the notebook,
    and the executed copy holds the error; no stamp is written, so the next run retries it."""
    executed = tmp_path / "executed"
    with pytest.raises(pipeline.NotebookFailed, match=r"01_baseline_cnn.ipynb failed.*epochs=0 must be at least 1"):
        pipeline._run_if_changed("01_baseline_cnn.ipynb", executed, {"data_dir": str(tiny_data), "epochs": 0, "profile": "quick"}, "stamp")
    assert "epochs=0 must be at least 1" in (executed / "01_baseline_cnn.ipynb").read_text()
    assert not (executed / ".stamps" / "01_baseline_cnn.ipynb.stamp").exists()


def test_an_unknown_notebook_parameter_is_refused_by_name():
    with pytest.raises(ValueError, match=r"01_baseline_cnn.ipynb has no parameter\(s\) epoch; it accepts: data_dir, .*epochs"):
        pipeline.check_parameters("01_baseline_cnn.ipynb", {"epoch": 3, "data_dir": "x"})
    pipeline.check_parameters("01_baseline_cnn.ipynb", {"epochs": 3, "positive_class": "a", "weights_path": "/x.pth", "tile_size": 96})
