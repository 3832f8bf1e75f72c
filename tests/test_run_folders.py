"""Run folders that survive crashes, reruns, two writers and moves: one writer per folder (real
processes holding real locks), a killed run continued by a plain rerun, done meaning whole (damaged
files named, never skipped nor scored), a SIGTERM'd pipeline's resume hint, and a moved runs folder."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lib import pipeline, registry
from lib.config import run_config
from lib.report.evaluate import load_trained_model, predict_test_tiles
from lib.training.loop import fit
from lib.training.run_folder import DamagedRunFolder, RunFolder
from lib.writer_lock import FolderInUse, WriterLock, held_for_children, lock_file

from tests.conftest import PROJECT_ROOT
from tests.helpers import write_finished_run

# The small CNN on 32x32 tiles: an epoch takes a fraction of a second, so a run is long in epochs and short in time.
FAST = {"profile": "quick", "model": "small", "tile_size": 32, "batch_size": 8, "subset": 0, "device": "cpu", "seed": 3,
        "checkpoint_every_s": 0, "cache_dir": ""}  # fmt: skip
EPOCHS = 6


def _config(data_dir, runs_dir, **overrides):
    return run_config("baseline", data_dir=str(data_dir), runs_dir=str(runs_dir), **(FAST | {"epochs": EPOCHS} | overrides))


def _python(code: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, text=True, **popen)


def _wait_for(condition, process: subprocess.Popen, what: str, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, f"the process ended before {what}: {process.communicate()}"
        assert time.time() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def killed_run(tiny_data, tmp_path_factory) -> Path:
    """A runs folder whose baseline run was SIGKILLed after saving some of its epochs (a kernel killed)."""
    runs = tmp_path_factory.mktemp("killed") / "runs"
    overrides = FAST | {"epochs": EPOCHS}
    # Each epoch of the killed process lasts a second longer (the same computation, then a pause), so that
    # it is still training when the test sees its first saved epoch, however fast the machine.
    process = _python("import time; from lib.config import run_config; from lib.training import loop\n"
                      "one_epoch = loop.train_one_epoch\n"
                      "loop.train_one_epoch = lambda *a, **k: (one_epoch(*a, **k), time.sleep(1))[0]\n"
                      f"loop.fit(run_config('baseline', data_dir={str(tiny_data)!r}, runs_dir={str(runs)!r}, **{overrides!r}))",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = runs / "baseline" / "last.pt"
    _wait_for(lambda: last.is_file() and (runs / "baseline" / "history.json").is_file(), process, "a saved epoch")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (runs / "baseline" / "result.json").exists(), "killed before its end; make EPOCHS larger"
    return runs


def _copy(runs: Path, to: Path) -> Path:
    shutil.copytree(runs, to, ignore=shutil.ignore_patterns("*.lock"))
    return to


def test_a_killed_run_is_continued_by_a_plain_rerun_not_restarted(killed_run, tiny_data, tmp_path, capsys):
    runs = _copy(killed_run, tmp_path / "runs")
    saved = torch.load(runs / "baseline" / "last.pt", weights_only=True)["epoch"]
    before = json.loads((runs / "baseline" / "history.json").read_text())[: saved + 1]
    result = fit(_config(tiny_data, runs))  # the same command again, without resume
    out = capsys.readouterr().out
    assert f"resuming baseline after its completed epoch {saved}" in out and "held an unfinished run with these parameters" in out
    assert len(result.history) == EPOCHS and result.history[: saved + 1] == before, "the saved epochs are kept, not trained again"


def test_a_killed_run_rerun_with_other_parameters_is_refused_naming_resume_and_fresh_and_fresh_starts_over(
        killed_run, tiny_data, tmp_path, capsys):  # fmt: skip
    runs = _copy(killed_run, tmp_path / "runs")
    kept = {name: (runs / "baseline" / name).read_bytes() for name in ("last.pt", "history.json", "config.json")}
    with pytest.raises(ValueError, match=r"last\.pt holds \d+ completed epoch\(s\) of baseline's 6, written with other parameters "
                                         r"\(epochs: 6 there, 2 now\).*make run-all RESUME=true EPOCHS=6.*FRESH=true RUNS=baseline"):  # fmt: skip
        fit(_config(tiny_data, runs, epochs=2))
    assert {name: (runs / "baseline" / name).read_bytes() for name in kept} == kept, "refused before touching anything"
    capsys.readouterr()
    result = fit(_config(tiny_data, runs, epochs=2, fresh=True))
    assert f"fresh: discarding what {runs / 'baseline'} holds and training baseline from the beginning" in capsys.readouterr().out
    assert [row["epoch"] for row in result.history] == [0, 1]
    with pytest.raises(ValueError, match="fresh=True and resume=True contradict"):
        _config(tiny_data, runs, fresh=True, resume=True)


def test_a_moved_runs_folder_resumes_and_evaluates(killed_run, tiny_data, tmp_path, capsys):
    runs = _copy(killed_run, tmp_path / "before" / "runs")
    moved = tmp_path / "elsewhere" / "runs"
    moved.parent.mkdir()
    shutil.move(runs, moved)
    result = fit(_config(tiny_data, moved, resume=True))
    assert "resuming baseline" in capsys.readouterr().out and len(result.history) == EPOCHS
    assert result.run_dir == moved / "baseline" and RunFolder(moved / "baseline").read_config()["runs_dir"] == str(moved)
    predictions = predict_test_tiles(moved / "baseline", device="cpu", batch_size=8)
    assert predictions.checkpoint == str(moved / "baseline" / "best.pt") and len(predictions.ids) == 24


def test_a_checkout_moved_with_its_data_reads_its_paths_inside_the_new_one(tmp_path):
    """config.json keeps the project's place: data_dir and cache_dir inside it move with it."""
    folder = RunFolder(tmp_path / "runs" / "baseline")
    folder.path.mkdir(parents=True)
    old = "/old/checkout"
    folder.config_file.write_text(json.dumps({"run": "baseline", "runs_dir": "/old/checkout/runs", "project_root": old,
                                              "data_dir": f"{old}/data/synthetic", "cache_dir": f"{old}/data/cache",
                                              "weights_path": "/shared/resnet50.pth"}))  # fmt: skip
    config = folder.read_config()
    assert config["data_dir"] == str(PROJECT_ROOT / "data" / "synthetic") and config["cache_dir"] == str(PROJECT_ROOT / "data" / "cache")
    assert config["runs_dir"] == str(tmp_path / "runs") and config["weights_path"] == "/shared/resnet50.pth", "outside the project: as given"
    base = run_config("baseline", profile="quick")
    moved = run_config("baseline", profile="quick", runs_dir="/elsewhere/runs", cache_dir="/elsewhere/cache", checkpoint_every_s=5)
    assert pipeline.training_parameters(base, None) == pipeline.training_parameters(moved, None), (
        "where a run lives and how often it saves are not what it computes")
    assert pipeline.training_parameters(base, None)["data_dir"] == "data/synthetic"


# Done means whole.

@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("finished") / "runs"
    fit(_config(tiny_data, runs, epochs=3))
    return runs / "baseline"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "truncated best.pt": (lambda run: _truncate(run / "best.pt"), r"best\.pt is damaged \(truncated or not a checkpoint: PytorchStreamReader"),
    "0-byte best.pt": (lambda run: (run / "best.pt").write_bytes(b""), r"best\.pt is damaged \(empty: 0 bytes\)"),
    "cut result.json": (lambda run: _truncate(run / "result.json"), r"result\.json is damaged \(cut short or not JSON"),
    "two runs' files": (lambda run: (run / "config.json").write_text(json.dumps(json.loads((run / "config.json").read_text()) | {"epochs": 2})),
                        r"does not hold one whole run \(result\.json says 'baseline' for 3 epochs, config\.json 'baseline' for 2"),
    "another run's best.pt": (lambda run: torch.save({"model": {}, "epoch": 9}, run / "best.pt"),
                              r"best\.pt holds epoch 9, but result\.json's best epoch is \d"),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_is_named_and_never_scored(finished_run, tmp_path, damage):
    run = _copy(finished_run, tmp_path / "baseline")
    RunFolder(run).check_whole()
    load_trained_model(run)
    DAMAGES[damage][0](run)
    mend = r".*delete .*baseline/ and make run-all trains baseline again \(make run-all FRESH=true RUNS=baseline"
    with pytest.raises(DamagedRunFolder, match=DAMAGES[damage][1] + mend):
        load_trained_model(run)


@pytest.mark.parametrize("damage", ["truncated best.pt", "0-byte best.pt", "cut result.json"])
def test_the_pipeline_names_a_damaged_run_instead_of_skipping_it(monkeypatch, tmp_path, tiny_data, capsys, damage):
    executed = []

    def fake_execute(notebook, executed_dir, parameters):
        executed.append(notebook)
        (executed_dir / notebook).parent.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")
        write_finished_run(tmp_path / "runs" / "baseline", epochs=2)

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    monkeypatch.setattr(pipeline.signal, "signal", lambda *a: None)  # main's SIGTERM handler stays out of pytest
    argv = ["run-all", f"data_dir={tiny_data}", f"runs_dir={tmp_path / 'runs'}", f"reports_dir={tmp_path / 'reports'}", "runs=baseline"]
    assert pipeline.main(argv) == 0 and pipeline.main(argv) == 0 and executed == ["01_baseline_cnn.ipynb"], "whole: skipped"
    capsys.readouterr()
    DAMAGES[damage][0](tmp_path / "runs" / "baseline")
    assert pipeline.main(argv) == 1
    out, err = capsys.readouterr()
    assert "skipped" not in out and "Traceback" not in err and executed == ["01_baseline_cnn.ipynb"]
    assert f"ERROR: {tmp_path / 'runs' / 'baseline' / damage.split()[-1]} is damaged" in err and "FRESH=true RUNS=baseline" in err


# One writer.

HOLD = """
import sys, time
from pathlib import Path
from lib.pipeline import pipeline_locks
from lib.writer_lock import held_for_children
with held_for_children(pipeline_locks(Path(sys.argv[1]), Path(sys.argv[2]), "make run-all")):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A real process holding a pipeline's locks on tmp_path/runs and tmp_path/reports, as `make run-all` does."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "runs"), str(tmp_path / "reports")], cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline() == "held\n"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_pipeline_or_fit_on_a_locked_runs_folder_is_refused_naming_the_holder(holder, tmp_path, tiny_data, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "execute", lambda *a: pytest.fail("no notebook may start"))
    monkeypatch.setattr(pipeline.signal, "signal", lambda *a: None)
    argv = ["run-all", f"data_dir={tiny_data}", f"runs_dir={tmp_path / 'runs'}", f"reports_dir={tmp_path / 'other-reports'}"]
    assert pipeline.main(argv) == 1
    err = capsys.readouterr().err
    assert f"ERROR: runs_dir {tmp_path / 'runs'} is being written by another process: pid {holder.pid} (make run-all: `" in err
    assert f"kill {holder.pid}" in err and "Traceback" not in err
    with pytest.raises(FolderInUse, match=f"pid {holder.pid} \\(make run-all"):
        fit(_config(tiny_data, tmp_path / "runs", epochs=1))
    assert not (tmp_path / "runs" / "baseline").exists(), "refused before writing anything"


def test_the_pipelines_own_notebooks_proceed_and_a_foreign_process_does_not(tmp_path):
    """A kernel the pipeline starts inherits HISTO_WRITER_LOCKS and writes under the pipeline's lock; a
    JupyterLab kernel (no such variable) is refused."""
    child = ("import sys; from lib.training.run_folder import RunFolder\n"
             "with RunFolder(sys.argv[1]).writer(): print('writing')")  # fmt: skip
    with held_for_children(pipeline.pipeline_locks(tmp_path / "runs", tmp_path / "reports", "make run-all")):
        own = subprocess.run([sys.executable, "-c", child, str(tmp_path / "runs" / "baseline")], cwd=PROJECT_ROOT,
                             capture_output=True, text=True)  # fmt: skip
        environment = {k: v for k, v in os.environ.items() if k != "HISTO_WRITER_LOCKS"}
        foreign = subprocess.run([sys.executable, "-c", child, str(tmp_path / "runs" / "baseline")], cwd=PROJECT_ROOT,
                                 capture_output=True, text=True, env=environment)  # fmt: skip
    assert own.returncode == 0 and own.stdout == "writing\n", own.stderr
    refused = f"FolderInUse: runs_dir {tmp_path / 'runs'} is being written by another process: pid {os.getpid()}"
    assert foreign.returncode != 0 and refused in foreign.stderr


def test_two_fits_of_one_run_refuse_each_other_and_other_runs_train_beside_it(tmp_path):
    with RunFolder(tmp_path / "runs" / "baseline").writer():
        with pytest.raises(FolderInUse, match=f"run folder {tmp_path / 'runs' / 'baseline'} is being written by .*pid {os.getpid()} "
                                              r"\(training baseline"):  # fmt: skip
            with RunFolder(tmp_path / "runs" / "baseline").writer():
                pass
        with RunFolder(tmp_path / "runs" / "resnet50-10ep").writer():
            with pytest.raises(FolderInUse, match=r"being written by another process: pid \d+ \(training baseline.*pid \d+ \(training resnet50"):
                WriterLock(lock_file(tmp_path / "runs"), f"runs_dir {tmp_path / 'runs'}", "make run-all", siblings=".*.lock").acquire()


def test_a_lock_whose_process_is_gone_is_taken_over_and_said(tmp_path, capsys):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "runs"), str(tmp_path / "reports")], cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline() == "held\n"
    os.kill(process.pid, signal.SIGKILL)  # no release: its holder line stays in the lock file
    process.wait()
    with WriterLock(lock_file(tmp_path / "runs"), f"runs_dir {tmp_path / 'runs'}", "make run-all"):
        pass
    out = capsys.readouterr().out
    assert f"runs_dir {tmp_path / 'runs'}: taking over the lock {tmp_path / 'runs' / '.lock'} left by pid {process.pid} (make run-all" in out
    assert out.rstrip().endswith("which is gone")
    with WriterLock(lock_file(tmp_path / "runs"), "runs_dir", "make run-all"):
        pass
    assert "taking over" not in capsys.readouterr().out, "released in order: nothing left to take over"


def test_two_unlocked_writers_never_collide_on_a_temporary_file(tmp_path):
    """Two processes rewrite one file at the same time (each starts writing once both are ready): with a
    temporary name shared by both, one renames the other's file away and fails."""
    code = ("import sys, time; from pathlib import Path; from lib.training.run_folder import save_atomically\n"
            "Path(sys.argv[1] + '.ready-' + sys.argv[2]).touch()\n"
            "while len(list(Path(sys.argv[1]).parent.glob('*.ready-*'))) < 2: time.sleep(0.01)\n"
            "for i in range(2000): save_atomically({'writer': sys.argv[2], 'i': i}, Path(sys.argv[1]))")  # fmt: skip
    target = tmp_path / "history.json"
    writers = [subprocess.Popen([sys.executable, "-c", code, str(target), name], cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True)
               for name in "ab"]  # fmt: skip
    errors = [writer.communicate()[1] for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), errors
    assert json.loads(target.read_text())["i"] == 1999 and not list(tmp_path.glob("*.tmp"))


# SIGTERM, as a batch scheduler's time limit or `timeout` sends it.

def test_a_sigtermed_pipeline_prints_the_resume_hint_without_a_traceback(tiny_data, tmp_path):
    settings = {"data_dir": tiny_data, "runs_dir": tmp_path / "runs", "reports_dir": tmp_path / "reports", "runs": "baseline",
                "epochs": 400} | FAST  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "lib.pipeline", "run-all", *(f"{k}={v}" for k, v in settings.items())],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    last = tmp_path / "runs" / "baseline" / "last.pt"
    _wait_for(last.is_file, process, "a saved epoch", seconds=300)
    os.killpg(process.pid, signal.SIGTERM)  # as `timeout` does: the pipeline's process group, its kernel included
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, (out, err)  # the shell's status for SIGTERM, as after Ctrl-C 130
    assert "Traceback" not in err and "INTERRUPTED" in err and "01_baseline_cnn.ipynb" in err
    assert f"{last} holds " in err and "completed epoch(s) of baseline's 400. To continue it (the finished runs are skipped): " \
                                      "make run-all RESUME=true" in err, err  # fmt: skip
    assert not (tmp_path / "runs" / "baseline" / "result.json").exists()


def test_fresh_runs_a_finished_run_again_instead_of_skipping_it(monkeypatch, tmp_path, tiny_data):
    executed = []

    def fake_execute(notebook, executed_dir, parameters):
        executed.append((notebook, parameters.get("fresh")))
        (executed_dir / notebook).parent.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")
        write_finished_run(tmp_path / "runs" / "baseline", epochs=2)

    monkeypatch.setattr(pipeline, "execute", fake_execute)
    settings = {"data_dir": str(tiny_data), "runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports"), "runs": "baseline"}
    pipeline.run_all(settings)
    pipeline.run_all(settings | {"fresh": "true"})
    pipeline.run_all(settings)
    assert executed == [("01_baseline_cnn.ipynb", None), ("01_baseline_cnn.ipynb", True)]
    assert registry.run_names()[0] == "baseline"


def test_no_resume_hint_for_a_run_written_with_other_parameters(tmp_path):
    config = run_config("baseline", profile="quick", runs_dir=str(tmp_path), epochs=5)
    folder = RunFolder(config.run_dir)
    folder.path.mkdir(parents=True)
    torch.save({"epoch": 1}, folder.checkpoint_file("last"))
    folder.write_config(config)
    assert "holds 2 completed epoch(s) of baseline's 5" in pipeline.resume_hint(config)
    assert pipeline.resume_hint(run_config("baseline", profile="quick", runs_dir=str(tmp_path), epochs=7)) == "", (
        "other parameters: fit's refusal says what continues it")
