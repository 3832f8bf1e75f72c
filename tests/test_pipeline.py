"""`make run-all`'s behaviour: parameters from make's command line, unchanged runs skipped, a failure
stops with its notebook kept."""

import os
import shutil

import pytest
import torch
import torchvision

from lib import pipeline, registry
from lib.config import ParameterError, run_config
from lib.data.layouts import read_layout
from tests.helpers import write_finished_run


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


def test_make_values_keep_dollars_and_a_parameter_given_twice_is_refused():
    assert pipeline.make_command_line(" -- TITLE=cost\\ $$5") == [("TITLE", "cost $5")]
    with pytest.raises(ParameterError, match=r"epochs is given twice, as EPOCHS=1 and as epochs='2' in SET; give it once"):
        pipeline.settings_from_make(" -- SET=epochs=2 EPOCHS=1")
    with pytest.raises(ParameterError, match=r"SET=.*No closing quotation"):
        pipeline.settings_from_make(" -- SET=title='unclosed")
    with pytest.raises(ParameterError, match=r"data_dir is empty"):
        pipeline.checked_settings({"data_dir": ""})
    with pytest.raises(ParameterError, match=r"the report takes runs_dir and reports_dir only, not epochs"):
        pipeline.report({"epochs": "1"})


def test_what_would_fail_inside_a_notebook_fails_before_the_first(monkeypatch, tmp_path, tiny_data):
    monkeypatch.setattr(pipeline, "execute", lambda *a: pytest.fail("no notebook may start"))
    common = {"data_dir": str(tiny_data), "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs")}
    with pytest.raises(FileNotFoundError, match=r"weights_path .*nowhere.pth does not exist"):
        pipeline.run_all(common | {"weights_path": str(tmp_path / "nowhere.pth")})
    (tmp_path / "broken.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"broken.pth cannot be read as a PyTorch file"):
        pipeline.run_all(common | {"weights_path": str(tmp_path / "broken.pth")})
    with pytest.raises(ValueError, match=r"device='gpu' names no device: use auto, cpu, cuda"):
        pipeline.run_all(common | {"device": "gpu"})
    with pytest.raises(ValueError, match=r"multi_page='all' is not one of refuse, first, largest"):
        pipeline.run_all(common | {"multi_page": "all"})
    with pytest.raises(ValueError, match=r"weights='none' asks for no pretrained weights, but weights_path"):
        pipeline.run_all(common | {"weights": "none", "weights_path": "/x.pth", "runs": "resnet50-10ep"})
    if not torch.cuda.is_available():  # a parameter error, said in one line by make (ValueError), not a traceback
        with pytest.raises(ValueError, match=r"device='cuda' asked for, but PyTorch sees no CUDA device here"):
            pipeline.run_all(common | {"device": "cuda", "profile": "quick"})
    # NPROC_PER_NODE=2 on a machine with one GPU: refused before the first run, not when the run reaches it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"nproc_per_node=2 for baseline asks for one GPU per process, but PyTorch sees 1"):
        pipeline.run_all(common | {"device": "cuda", "nproc_per_node": "2", "profile": "quick"})


def test_a_run_whose_results_are_gone_or_whose_weights_changed_runs_again(monkeypatch, tmp_path, tiny_data):
    ran = []

    def fake_execute(notebook, executed_dir, parameters):
        ran.append(notebook)
        (executed_dir / notebook).parent.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")
        run = next(r for r in registry.run_names() if registry.run_entry(r)["notebook"] == notebook)
        write_finished_run(tmp_path / "runs" / run)

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    settings = {"data_dir": str(tiny_data), "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"),
                "runs": "baseline,resnet50-10ep"}  # fmt: skip
    pipeline.run_all(settings)
    pipeline.run_all(settings)
    assert ran == ["01_baseline_cnn.ipynb", "02_resnet50_10_epochs.ipynb"], "unchanged runs are skipped"
    shutil.rmtree(tmp_path / "runs" / "baseline")
    pipeline.run_all(settings)
    assert ran[2:] == ["01_baseline_cnn.ipynb"], "a run whose folder was deleted runs again"
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights)
    pipeline.run_all(settings | {"weights_path": str(weights)})
    pipeline.run_all(settings | {"weights_path": str(weights)})
    os.utime(weights, ns=(0, 0))  # the same path, another file
    pipeline.run_all(settings | {"weights_path": str(weights)})
    assert ran[3:] == ["02_resnet50_10_epochs.ipynb"] * 2, "a new or changed weights file reruns the ResNet50 run, only it"


def test_an_interrupted_run_names_resume_and_resume_skips_the_finished_runs(monkeypatch, tmp_path, tiny_data):
    ran, interrupt = [], {"02_resnet50_10_epochs.ipynb"}

    def fake_execute(notebook, executed_dir, parameters):
        ran.append((notebook, parameters.get("resume")))
        run = next(r for r in registry.run_names() if registry.run_entry(r)["notebook"] == notebook)
        folder = tmp_path / "runs" / run
        folder.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).parent.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")
        if notebook in interrupt:  # killed after its second epoch was saved
            torch.save({"epoch": 1}, folder / "last.pt")
            raise pipeline.NotebookFailed(f"notebooks/{notebook} could not be executed: RuntimeError: Kernel died")
        write_finished_run(folder)

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    settings = {"data_dir": str(tiny_data), "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"),
                "runs": "baseline,resnet50-10ep", "weights": "none", "epochs": "3"}  # fmt: skip
    with pytest.raises(pipeline.NotebookFailed, match=r"holds 2 completed epoch\(s\) of resnet50-10ep's 3") as failed:
        pipeline.run_all(settings)
    assert "Kernel died" in str(failed.value)
    command = str(failed.value).split("skipped): ")[1]  # the whole command, with the parameters this one was given
    assert command.startswith("make run-all RESUME=true ") and "EPOCHS=3" in command and "RUNS=baseline,resnet50-10ep" in command
    assert f"DATA_DIR={tiny_data}" in command and "WEIGHTS=none" in command
    interrupt.clear()
    pipeline.run_all(settings | {"resume": "true"})
    assert ran == [("01_baseline_cnn.ipynb", None), ("02_resnet50_10_epochs.ipynb", None), ("02_resnet50_10_epochs.ipynb", True)], (
        "the finished baseline is skipped; only the interrupted run continues")
    pipeline.run_all(settings)
    assert len(ran) == 3, "resume=true or not, finished runs with the same parameters are not run again"


def test_no_resume_hint_for_a_finished_run_or_one_without_a_saved_epoch(tmp_path):
    from lib.config import run_config

    config = run_config("baseline", profile="quick", runs_dir=str(tmp_path))
    assert pipeline.resume_hint(config) == "", "no last.pt"
    config.run_dir.mkdir(parents=True)
    torch.save({"epoch": 2}, config.run_dir / "last.pt")
    assert "holds 3 completed epoch(s) of baseline's" in pipeline.resume_hint(config)
    assert pipeline.resume_hint(config).endswith("make run-all RESUME=true"), "no parameters given: none to repeat"
    assert pipeline.resume_hint(config, {"title": "my run", "resume": True}).endswith("RESUME=true TITLE='my run'"), "quoted for the shell"
    (config.run_dir / "result.json").write_text("{}")
    assert pipeline.resume_hint(config) == "", "a finished run"


def interrupted_after_one_epoch(tmp_path):
    """A fake `execute` whose baseline saved one epoch's last.pt, then met Ctrl-C."""

    def interrupted(notebook, executed_dir, parameters):
        folder = tmp_path / "runs" / "baseline"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": 0}, folder / "last.pt")
        raise KeyboardInterrupt

    return interrupted


def test_ctrl_c_during_a_run_ends_with_the_resume_command_not_a_traceback(monkeypatch, tmp_path, tiny_data):
    monkeypatch.setattr(pipeline, "execute", interrupted_after_one_epoch(tmp_path))
    settings = {"data_dir": str(tiny_data), "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"), "runs": "baseline"}
    with pytest.raises(pipeline.NotebookFailed, match=r"01_baseline_cnn.ipynb was interrupted\n.*holds 1 completed epoch.*RESUME=true"):
        pipeline.run_all(settings)


def test_ctrl_c_during_a_run_through_main_ends_interrupted_with_status_130_and_the_resume_command(monkeypatch, tmp_path, tiny_data, capsys):
    """As the evaluation and the report end: INTERRUPTED and 128 + the signal, not ERROR and 1; the
    command that goes on is the resume hint's, not a plain rerun."""
    monkeypatch.setattr(pipeline, "execute", interrupted_after_one_epoch(tmp_path))
    settings = {"data_dir": str(tiny_data), "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"), "runs": "baseline"}
    assert pipeline.main(["run-all", *(f"{name}={value}" for name, value in settings.items())]) == 130
    err = capsys.readouterr().err
    said = err[err.index("INTERRUPTED: "):]
    assert said.startswith("INTERRUPTED: notebooks/01_baseline_cnn.ipynb was interrupted\n") and "ERROR" not in err, err
    assert "holds 1 completed epoch(s) of baseline's" in said and "make run-all RESUME=true" in said and "To go on" not in said


def test_a_tile_size_for_every_run_reaches_the_resnet50_runs_and_not_the_baseline(monkeypatch, tmp_path, tiny_data, capsys):
    """The README's own example, `make run-all TILE_SIZE=96`: the baseline takes 256x256 tiles only,
    so it keeps its own and says so; the other runs get 96. Given to the baseline alone, it is refused."""
    given = {}

    def fake_execute(notebook, executed_dir, parameters):
        given[notebook] = dict(parameters)
        run = next(r for r in registry.run_names() if registry.run_entry(r)["notebook"] == notebook)
        write_finished_run(tmp_path / "runs" / run)
        (executed_dir / notebook).parent.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    settings = {"data_dir": str(tiny_data), "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"),
                "runs": "baseline,resnet50-10ep", "weights": "none", "tile_size": "96", "crop_size": "80", "epochs": "1"}  # fmt: skip
    pipeline.run_all(settings)
    assert "tile_size" not in given["01_baseline_cnn.ipynb"] and "crop_size" not in given["01_baseline_cnn.ipynb"]
    assert given["01_baseline_cnn.ipynb"]["epochs"] == 1, "every other parameter still reaches it"
    assert (given["02_resnet50_10_epochs.ipynb"]["tile_size"], given["02_resnet50_10_epochs.ipynb"]["crop_size"]) == (96, 80)
    out = capsys.readouterr().out
    assert "=== baseline: tile_size=96 crop_size=80 applies to the other runs, not this one: the baseline CNN takes 256x256" in out
    assert "resnet50-10ep: tile_size" not in out
    with pytest.raises(ValueError, match=r"tile_size=96: the baseline CNN takes 256x256 tiles only"):
        run_config("baseline", profile="quick", tile_size=96)
    assert pipeline.parameters_for("baseline", {"tile_size": 96, "model": "small"}) == ({"tile_size": 96, "model": "small"}, ""), (
        "a baseline run given another model takes any tile")
