"""Ctrl-C, SIGTERM and a broken Chromium after training: one line, never a traceback, and no output
left beside newer ones (an old report.pdf beside a new report.html, an old evaluation.json beside a
new submission.csv). Real processes and signals; notebooks that stand in for the slow ones."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from lib import pipeline, registry
from lib.paths import PROJECT_ROOT
from lib.report import render
from tests.helpers import write_finished_run

EVALUATION_OUTPUTS = ("evaluation.json", "test_predictions.csv", "submission.csv")
FAKE_CHROMIUMS = {  # shell scripts that stand where a Chromium is looked for
    "snap stub": "echo \"Command '/usr/bin/chromium-browser' requires the chromium snap to be installed.\" >&2\n"
                 "echo 'Please install it with: snap install chromium' >&2\nexit 1",
    "silent": "exit 0",
    "hung": "exec sleep 600",
}  # fmt: skip


def fake_chromium(folder: Path, body: str, name: str = "chromium") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def printing_chromium(folder: Path, then: str) -> Path:
    """A Chromium that answers --version, as a real one does, and then does `then` when asked to print."""
    return fake_chromium(folder, f'if [ "$1" = --version ]; then echo "Chromium 1.0 (a stand-in)"; exit 0; fi\n{then}')


def executed_report(path: Path) -> Path:
    """An executed report notebook as papermill leaves one, small: a heading and a printed line."""
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('measured')", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="measured\n")]
    notebook.cells = [nbformat.v4.new_markdown_cell("# The report"), cell]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return path


def last_report(reports: Path) -> None:
    """A report from an earlier `make report`: the HTML and PDF that the next one replaces."""
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "report.html").write_text("<html>the last report</html>")
    (reports / "report.pdf").write_bytes(b"%PDF the last report")


@pytest.fixture
def only_fake_chromiums(tmp_path, monkeypatch):
    """Chromiums are looked for on PATH in a folder of fakes only, $CHROMIUM is unset, and playwright
    offers none."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setattr(render, "CHROMIUM_CHECK_S", 2, raising=False)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, path=None: real_which(name, path=str(folder)))
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # its own browser: not a candidate here
    return folder


@pytest.mark.parametrize("kind", FAKE_CHROMIUMS)
def test_a_broken_chromium_is_named_once_the_html_written_and_the_old_pdf_set_aside(kind, only_fake_chromiums, tmp_path, capsys):
    chromium = fake_chromium(only_fake_chromiums, FAKE_CHROMIUMS[kind])
    reports = tmp_path / "reports"
    last_report(reports)
    assert render.find_chromium() is None, "a Chromium whose --version fails is not used"
    pdf = pipeline.render_report(executed_report(tmp_path / "executed.ipynb"), reports / "report.html", reports / "report.pdf", None)
    out = capsys.readouterr().out
    assert pdf is None and "the last report" not in (reports / "report.html").read_text()
    said = [line for line in out.splitlines() if str(chromium) in line]
    assert len(said) == 1 and "Traceback" not in out, out
    assert "apt-get install chromium" in said[0] and "CHROMIUM=/path/to/a/working/chromium" in said[0]
    assert {"snap stub": "`--version` exited 1: Command '/usr/bin/chromium-browser' requires the chromium snap",
            "silent": "`--version` printed nothing", "hung": "`--version` did not answer within 2 s"}[kind] in said[0]  # fmt: skip
    assert not (reports / "report.pdf").exists(), "an old PDF must not stand beside the new HTML"
    assert (reports / "report.stale.pdf").read_bytes() == b"%PDF the last report"
    assert "set aside as" in out and "report.stale.pdf" in out


def test_a_chromium_that_fails_to_print_is_named_with_its_exit_code_and_first_error_line(only_fake_chromiums, tmp_path, capsys):
    chromium = printing_chromium(only_fake_chromiums, "echo 'chrome: error while loading shared libraries: libnss3.so' >&2\nexit 127")
    reports = tmp_path / "reports"
    last_report(reports)
    assert render.find_chromium() == str(chromium)
    pipeline.render_report(executed_report(tmp_path / "executed.ipynb"), reports / "report.html", reports / "report.pdf", str(chromium))
    out = capsys.readouterr().out
    assert f"the Chromium at {chromium} failed to print it (exited 127, said: chrome: error while loading shared libraries" in out, out
    assert "Traceback" not in out and not (reports / "report.pdf").exists() and (reports / "report.stale.pdf").exists()


def test_make_report_with_a_broken_chromium_exits_0_as_without_one(only_fake_chromiums, tmp_path, monkeypatch, capsys):
    """Through main, as `make report` runs it: the HTML is the report; the PDF is its printed copy."""
    fake_chromium(only_fake_chromiums, FAKE_CHROMIUMS["snap stub"], name="chromium-browser")
    monkeypatch.setattr(pipeline, "execute", lambda notebook, executed_dir, parameters: executed_report(executed_dir / notebook))
    reports = tmp_path / "reports"
    last_report(reports)
    assert pipeline.main(["report", f"runs_dir={tmp_path / 'runs'}", f"reports_dir={reports}"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "chromium-browser does not work (`--version` exited 1" in captured.out
    assert sorted(p.name for p in reports.glob("report*")) == ["report.html", "report.stale.pdf"]


def test_a_new_pdf_removes_the_stale_one(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    last_report(reports)
    (reports / "report.stale.pdf").write_bytes(b"%PDF older still")
    monkeypatch.setattr(render, "render_pdf", lambda executed, output, chromium: Path(output).write_bytes(b"%PDF new") and Path(output))
    pipeline.render_report(executed_report(tmp_path / "executed.ipynb"), reports / "report.html", reports / "report.pdf", "chromium")
    assert sorted(p.name for p in reports.glob("report*")) == ["report.html", "report.pdf"]


# --- Ctrl-C and SIGTERM in a real `python -m lib.pipeline report` ---------------------------------


def copied_project(root: Path, report_cells: list[str]) -> Path:
    """The project's code, notebooks and registry under `root`, its report notebook replaced by one of
    `report_cells` (after the parameters cell): `python -m lib.pipeline` run there is this checkout's."""
    shutil.copytree(PROJECT_ROOT / "lib", root / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT_ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(PROJECT_ROOT / "registry.toml", root / "registry.toml")
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('runs_dir = "runs"\nreports_dir = "reports"')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, *(nbformat.v4.new_code_cell(source) for source in report_cells)]
    notebook.metadata["kernelspec"] = {"name": pipeline.KERNEL_NAME, "language": "python", "display_name": pipeline.KERNEL_NAME}
    nbformat.write(notebook, str(root / "notebooks" / pipeline.REPORT_NOTEBOOK))
    return root


def signalled(root: Path, args: list[str], when: str, signum: int, env: dict | None = None, timeout: float = 240) -> tuple[int, str, int]:
    """Start `python -m lib.pipeline args` in `root`, send `signum` once its output shows `when`, and
    return (exit status, its whole output, its pid)."""
    log = root / "pipeline.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "lib.pipeline", *args], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                   env=os.environ | (env or {}))  # fmt: skip
    deadline = time.monotonic() + timeout
    while when not in log.read_text():
        assert process.poll() is None, f"ended before {when!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {when!r} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signum)
    status = process.wait(timeout=60)
    return status, log.read_text(), process.pid


def kernels_of(pid: int) -> list[int]:
    """Live Jupyter kernels that the process `pid` started (they carry JPY_PARENT_PID)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"JPY_PARENT_PID={pid}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def assert_one_line_ending(status: int, output: str, signum: int) -> str:
    assert status == 128 + signum, output
    assert "Traceback" not in output, output
    said = [line for line in output.splitlines() if line.startswith("INTERRUPTED: ")]
    assert len(said) == 1 and output.rstrip().endswith(said[0]), output
    return said[0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_report_notebook_runs_ends_in_one_line_with_the_last_report_untouched(signum, tmp_path):
    root = copied_project(tmp_path / "project", ["import time\nprint('drawing the report', flush=True)\ntime.sleep(300)"])
    reports = tmp_path / "reports"
    last_report(reports)
    status, output, pid = signalled(root, ["report", f"runs_dir={tmp_path / 'runs'}", f"reports_dir={reports}"], "drawing the report", signum)
    said = assert_one_line_ending(status, output, signum)
    assert f"07_report.ipynb was interrupted; {reports / 'report.html'} and {reports / 'report.pdf'} are the last report's, untouched" in said
    assert said.endswith(f"To go on: python -m lib.pipeline report runs_dir={tmp_path / 'runs'} reports_dir={reports}")
    assert (reports / "report.html").read_text() == "<html>the last report</html>" and (reports / "report.pdf").exists()
    executed = (reports / "executed" / pipeline.REPORT_NOTEBOOK).read_text()
    assert "KeyboardInterrupt" in executed, "the executed copy shows where it was stopped"
    assert not (reports / "executed" / ".stamps" / f"{pipeline.REPORT_NOTEBOOK}.stamp").exists(), "an interrupted stage is not finished"
    assert kernels_of(pid) == [], "the kernel stops with the pipeline"


def test_a_signal_while_the_pdf_prints_leaves_the_new_html_and_no_old_pdf_beside_it(tmp_path):
    root = copied_project(tmp_path / "project", ["print('measured')"])
    started = tmp_path / "chromium.pid"
    chromium = printing_chromium(tmp_path / "bin", f"echo $$ > {started}\nexec sleep 600")  # hangs while printing
    reports = tmp_path / "reports"
    last_report(reports)
    status, output, _ = signalled(root, ["report", f"runs_dir={tmp_path / 'runs'}", f"reports_dir={reports}"], "Building PDF",
                                  signal.SIGINT, env={"CHROMIUM": str(chromium)})  # fmt: skip
    said = assert_one_line_ending(status, output, signal.SIGINT)
    assert f"printing {reports / 'report.pdf'} was interrupted: {reports / 'report.html'} is written and the PDF not" in said
    assert "the last report" not in (reports / "report.html").read_text()
    assert not (reports / "report.pdf").exists() and (reports / "report.stale.pdf").read_bytes() == b"%PDF the last report"
    if started.exists():  # the browser was launched: it goes with the pipeline
        browser = int(started.read_text())
        deadline = time.monotonic() + 15
        while Path(f"/proc/{browser}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{browser}").exists() or "zombie" in Path(f"/proc/{browser}/status").read_text(), "Chromium left running"


# --- the evaluation step --------------------------------------------------------------------------


@pytest.fixture
def evaluated_workbook(tmp_path, tiny_data, monkeypatch):
    """run_all with a fake `execute` (runs trained instantly) and an evaluation that wrote its three
    files once; returns (settings, the fake's behaviour for the evaluation, reports folder)."""
    reports = tmp_path / "reports"
    behaviour = {"evaluation": None}

    def fake_execute(notebook, executed_dir, parameters):
        executed_dir.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")
        if notebook == pipeline.EVALUATION_NOTEBOOK:
            (reports / "submission.csv").write_text("# Id,Values\nnew\n")  # its third cell: written first
            if behaviour["evaluation"]:
                behaviour["evaluation"]()
            for name in ("test_predictions.csv", "evaluation.json"):
                (reports / name).write_text("new")
            return
        run = next(r for r in registry.run_names() if registry.run_entry(r)["notebook"] == notebook)
        write_finished_run(tmp_path / "runs" / run)  # whole: a skipped run is checked before it passes for done

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    settings = {"data_dir": str(tiny_data), "reports_dir": str(reports), "runs_dir": str(tmp_path / "runs"), "weights": "none"}
    pipeline.run_all(settings)
    for name in EVALUATION_OUTPUTS:
        (reports / name).write_text("old")
    (reports / "executed" / ".stamps" / f"{pipeline.EVALUATION_NOTEBOOK}.stamp").write_text("changed")  # it runs again
    return settings, behaviour, reports


def test_sigterm_midway_through_the_evaluation_leaves_no_mix_of_old_and_new_outputs(evaluated_workbook, capsys):
    """A real SIGTERM through main's handler, sent after the submission was rewritten and before
    evaluation.json was: neither the old evaluation.json nor the new submission.csv is left."""
    settings, behaviour, reports = evaluated_workbook

    def killed_midway():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    def not_main(signum, frame):  # main's own handler stands in front of this one while it runs
        raise AssertionError("SIGTERM reached the test's handler: main installed none")

    behaviour["evaluation"] = killed_midway
    before = signal.signal(signal.SIGTERM, not_main)  # without main's handler, SIGTERM would end pytest itself
    try:
        status = pipeline.main(["run-all", *(f"{k}={v}" for k, v in settings.items())])
        handler = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert status == 128 + signal.SIGTERM and "Traceback" not in err
    said = [line for line in err.splitlines() if line.startswith("INTERRUPTED: ")]
    assert len(said) == 1 and "06_evaluation.ipynb was interrupted; the runs' results are kept; what it had written (submission.csv)" in said[0]
    assert "To go on: python -m lib.pipeline run-all data_dir=" in said[0] and "weights=none" in said[0]
    assert [name for name in EVALUATION_OUTPUTS if (reports / name).exists()] == []
    assert not (reports / "executed" / ".stamps" / f"{pipeline.EVALUATION_NOTEBOOK}.stamp").exists()
    assert handler is not_main, "main gives the handlers back"


def test_a_failing_evaluation_leaves_no_mix_either(evaluated_workbook):
    settings, behaviour, reports = evaluated_workbook

    def failing():
        raise pipeline.NotebookFailed("notebooks/06_evaluation.ipynb failed in cell 4: OSError: No space left on device")

    behaviour["evaluation"] = failing
    with pytest.raises(pipeline.NotebookFailed, match=r"No space left.*\nwhat it had written \(submission.csv\) is removed"):
        pipeline.run_all(settings)
    assert [name for name in EVALUATION_OUTPUTS if (reports / name).exists()] == []
    behaviour["evaluation"] = None
    pipeline.run_all(settings)
    assert all((reports / name).read_text().startswith(("new", "# Id")) for name in EVALUATION_OUTPUTS)


def test_the_command_to_go_on_repeats_what_was_given():
    settings = {"epochs": "3", "data_dir": "/data/my tiles"}
    assert pipeline.again_command("report", settings, from_make=True) == "make report EPOCHS=3 DATA_DIR='/data/my tiles'"
    assert pipeline.again_command("run-all", settings, from_make=False) == "python -m lib.pipeline run-all epochs=3 'data_dir=/data/my tiles'"
    assert json.dumps(pipeline.again_command("run-all", {}, True)) == '"make run-all"'
