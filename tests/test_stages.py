"""What reruns when: a run's training follows the code that trains, its config, data and weights;
drawing and the report's sentences redraw a run's notebook from its saved result, never retrain it."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from lib import pipeline, registry
from lib.config import run_config
from lib.paths import PROJECT_ROOT
from lib.training.loop import _finished_result
from lib.training.run_folder import RunFolder
from tests.helpers import write_finished_run


def copy_of_project(root: Path) -> Path:
    """What the fingerprints read, copied under `root`: lib/, the notebooks and the registry."""
    shutil.copytree(PROJECT_ROOT / "lib", root / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT_ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(PROJECT_ROOT / "registry.toml", root / "registry.toml")
    return root


def append_code(root: Path, module: str) -> None:
    """A change to what the module runs (a new name), as a one-line edit of a figure or a loop is."""
    path = root / "lib" / module
    path.write_text(path.read_text() + "\n_EDITED_IN_A_TEST = True\n")


def test_the_training_code_is_what_lib_training_imports_and_nothing_of_the_report_or_doors():
    closure = {str(path.relative_to(PROJECT_ROOT)) for path in pipeline.code_closure([pipeline.TRAINING_ENTRY])}
    must = {"lib/config.py", "lib/registry.py", "lib/paths.py", "lib/metrics.py", "lib/models.py", "lib/weights.py",
            # __main__.py is torchrun's door to lib.training.distributed.main, which the closure holds; nothing imports it.
            *(f"lib/{path.relative_to(PROJECT_ROOT / 'lib')}" for path in (PROJECT_ROOT / "lib" / "training").glob("*.py")
              if path.name != "__main__.py"),
            *(f"lib/data/{path.name}" for path in (PROJECT_ROOT / "lib" / "data").glob("*.py") if path.name != "synthetic.py")}  # fmt: skip
    assert must <= closure, f"missing from the training code: {sorted(must - closure)}"
    assert "lib/training/loop.py" in closure and "lib/data/tiles.py" in closure  # the globs above found the files
    never = [name for name in closure if name.startswith(("lib/report/", "lib/bench/")) or name in ("lib/pipeline.py", "lib/lab.py")]
    assert never == [], "training depends on no figure, sentence, door or benchmark"
    assert "lib/data/synthetic.py" not in closure, "the default set's generator is not imported by training"
    notebook = {str(p.relative_to(PROJECT_ROOT)) for p in pipeline.code_closure([], sources=pipeline.notebook_code("01_baseline_cnn.ipynb"))}
    assert closure | {"lib/report/figures.py", "lib/report/explain.py", "lib/data/synthetic.py"} <= notebook, (
        "a run notebook's code: what it trains with, what it draws with, and the default set it generates")
    with pytest.raises(ModuleNotFoundError, match="lib.nowhere is no module"):
        pipeline.code_closure(["lib.nowhere"])


def test_the_closure_reads_every_form_of_import_in_a_copied_tree(tmp_path):
    lib = tmp_path / "lib"
    for name, source in {
        "__init__.py": "",
        "a.py": "def f():\n    import lib.b  # inside a function: a dependency all the same\n",
        "b.py": "from lib import c\n",
        "c.py": "from lib.pkg import name\n",
        "pkg/__init__.py": "from lib.pkg.inner import name\n",
        "pkg/inner.py": "from . import sibling\nimport os\nname = 1\n",
        "pkg/sibling.py": "",
        "pkg/unused.py": "",
        "alone.py": "import lib.a\n",
    }.items():
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_text(source)
    found = {str(path.relative_to(lib)) for path in pipeline.code_closure(["lib.a"], root=tmp_path)}
    assert found == {"__init__.py", "a.py", "b.py", "c.py", "pkg/__init__.py", "pkg/inner.py", "pkg/sibling.py"}


def test_a_figure_change_keeps_every_training_fingerprint_and_a_training_change_changes_them(tmp_path):
    root = copy_of_project(tmp_path / "project")

    def fingerprints():
        training, notebooks = {}, {}
        for run in registry.run_names():
            parameters = pipeline.training_parameters(run_config(run, profile="quick"), None)
            training[run] = pipeline.training_fingerprint(parameters, "data", root=root)
            notebooks[run] = pipeline.fingerprint(registry.run_entry(run)["notebook"], {}, "data", upstream=[training[run]], root=root)
        return training, notebooks

    training, notebooks = fingerprints()
    assert (training, notebooks) == fingerprints()
    assert len(set(training.values())) == len(training), "each run's config tells its training apart"
    append_code(root, "report/figures.py")
    after_figures = fingerprints()
    assert after_figures[0] == training, "a figure's code trains nothing again"
    assert all(after_figures[1][run] != notebooks[run] for run in notebooks), "every run notebook draws with it"
    append_code(root, "report/results.py")  # the run notebooks' curve notes are sentences of it: they redraw, never retrain
    after_sentences = fingerprints()
    assert after_sentences[0] == training, "the report's sentences train nothing again"
    for module in ("__init__.py", "training/loop.py"):  # a comment or docstring reworded retrains nothing
        path = root / "lib" / module
        path.write_text(path.read_text().replace('"""', '"""Reworded. ', 1) + "\n# a comment that computes nothing\n")
    assert fingerprints() == after_sentences, "docstrings and comments are not the code that trains"
    append_code(root, "training/loop.py")
    after_loop = fingerprints()
    assert all(after_loop[0][run] != training[run] for run in training), "the training loop retrains every run"


def test_a_finished_run_resumed_with_weights_it_never_reads_keeps_its_result(tmp_path):
    config = run_config("baseline", profile="quick", runs_dir=str(tmp_path), epochs=2)
    folder = RunFolder(config.run_dir)
    folder.start(fresh=True)
    folder.write_config(config)
    folder.write_history([{"epoch": 0}, {"epoch": 1}])
    folder.write_result({"run": "baseline", "epochs": 2, "best_epoch": 1})
    folder.save_checkpoint("best", {"model": {}, "epoch": 1})
    given = dataclasses.replace(config, resume=True, weights_path="/data/resnet50.pth", weights="none")
    assert _finished_result(given, folder) is not None, "the baseline takes no pretrained weights"
    assert _finished_result(dataclasses.replace(given, lr=0.5), folder) is None, "another lr is another run"


@pytest.fixture
def fake_workbook(tmp_path, tiny_data, monkeypatch):
    """run_all over a copy of the project's code with a fake `execute`: a run notebook executed with
    resume=True over a kept result redraws (as `fit` returns that result), otherwise it trains.
    Returns (settings, root of the copied code, executions as (notebook, resume), runs trained)."""
    root = copy_of_project(tmp_path / "project")
    monkeypatch.setattr(pipeline, "PROJECT_ROOT", root)
    executions, trained = [], []

    def fake_execute(notebook, executed_dir, parameters):
        executions.append((notebook, parameters.get("resume")))
        executed_dir.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")
        if notebook == pipeline.EVALUATION_NOTEBOOK:
            (executed_dir.parent / "evaluation.json").write_text("{}")
        if notebook in (pipeline.EVALUATION_NOTEBOOK, pipeline.REPORT_NOTEBOOK):
            return
        run = next(r for r in registry.run_names() if registry.run_entry(r)["notebook"] == notebook)
        folder = RunFolder(tmp_path / "runs" / run)
        if parameters.get("resume") and folder.has_result():
            return
        folder.start(fresh=True)
        write_finished_run(folder.path)
        trained.append(run)

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    settings = {"data_dir": str(tiny_data), "reports_dir": str(tmp_path / "reports"), "runs_dir": str(tmp_path / "runs"), "weights": "none"}
    return settings, root, executions, trained


def test_a_figure_change_redraws_every_run_without_training_and_a_loop_change_retrains(fake_workbook, capsys):
    settings, root, executions, trained = fake_workbook
    runs = registry.run_names()
    notebooks = [registry.run_entry(run)["notebook"] for run in runs]
    pipeline.run_all(settings)
    assert executions == [(notebook, None) for notebook in notebooks] + [(pipeline.EVALUATION_NOTEBOOK, None)]
    assert trained == runs
    pipeline.run_all(settings)
    n = len(notebooks) + 1  # the run notebooks and the evaluation
    assert len(executions) == n, "nothing changed: nothing executes"

    append_code(root, "report/figures.py")
    capsys.readouterr()
    pipeline.run_all(settings)
    assert executions[n:] == [(notebook, True) for notebook in notebooks] + [(pipeline.EVALUATION_NOTEBOOK, None)], (
        "every run notebook redraws from its result; the evaluation draws with figures.py too")
    assert trained == runs, "nothing trained"
    out = capsys.readouterr().out
    assert "=== 01_baseline_cnn.ipynb: training unchanged since its last run; re-executing it to redraw from " in out
    assert f"{Path(settings['runs_dir']) / 'baseline'} without training" in out
    pipeline.run_all(settings)
    assert len(executions) == 2 * n, "redrawn: nothing to do again"

    append_code(root, "training/loop.py")
    pipeline.run_all(settings)
    assert executions[2 * n:] == [(notebook, None) for notebook in notebooks] + [(pipeline.EVALUATION_NOTEBOOK, None)]
    assert trained == runs * 2, "the training loop changed: every run trains again"


def test_a_run_trained_afresh_outside_the_pipeline_is_not_redrawn_as_the_one_recorded(fake_workbook):
    settings, root, executions, trained = fake_workbook
    pipeline.run_all(settings | {"runs": "baseline"})
    RunFolder(Path(settings["runs_dir"]) / "baseline").start(fresh=True)  # its notebook run by hand: the record goes with the old result
    RunFolder(Path(settings["runs_dir"]) / "baseline").write_result({})
    append_code(root, "report/figures.py")
    pipeline.run_all(settings | {"runs": "baseline"})
    assert executions == [("01_baseline_cnn.ipynb", None)] * 2 and trained == ["baseline"] * 2


def test_the_report_is_skipped_when_nothing_it_reads_changed(fake_workbook, monkeypatch, capsys):
    from lib.report import render

    settings, root, executions, trained = fake_workbook
    rendered = []

    def fake_render_html(executed, output):
        rendered.append(Path(output).name)
        Path(output).write_text("<html/>")
        return Path(output)

    monkeypatch.setattr(render, "render_html", fake_render_html)
    monkeypatch.setattr(render, "render_pdf", lambda executed, output, chromium=None: rendered.append("pdf") or None)
    monkeypatch.setattr(render, "find_chromium", lambda: None)
    folders = {"runs_dir": settings["runs_dir"], "reports_dir": settings["reports_dir"]}
    pipeline.run_all(settings)
    pipeline.report(folders)
    pipeline.report(folders)
    assert executions.count((pipeline.REPORT_NOTEBOOK, None)) == 1 and rendered == ["report.html", "pdf"]
    assert "=== 07_report.ipynb: unchanged since its last successful execution, skipped" in capsys.readouterr().out

    report_notebook = root / "notebooks" / pipeline.REPORT_NOTEBOOK  # a sentence of the report's own: only the report executes
    cells = json.loads(report_notebook.read_text())
    cells["cells"][0]["source"].append(" Reworded.")
    report_notebook.write_text(json.dumps(cells))
    pipeline.run_all(settings)
    pipeline.report(folders)
    first = len(registry.run_names()) + 1  # after the runs and the evaluation: the reports
    assert executions[first:] == [(pipeline.REPORT_NOTEBOOK, None)] * 2
    append_code(root, "report/render.py")
    pipeline.report(folders)
    (Path(settings["reports_dir"]) / "report.html").unlink()
    pipeline.report(folders)
    append_code(root, "training/loop.py")  # every run retrains, the evaluation reruns, and the report with them
    pipeline.run_all(settings)
    pipeline.report(folders)
    pipeline.report(folders)
    assert executions[first + 2:] == [(pipeline.REPORT_NOTEBOOK, None)] * 2 + [(n, None) for n in [*(registry.run_entry(r)["notebook"] for r in
                              registry.run_names()), pipeline.EVALUATION_NOTEBOOK, pipeline.REPORT_NOTEBOOK]]  # fmt: skip
