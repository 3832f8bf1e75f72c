"""`make run-all JOBS=N`: the run notebooks executed N at once, each with devices of its own and its
output in a log of its own; a failure stops nothing already running; Ctrl-C interrupts every kernel."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from lib import jobs, pipeline, registry
from lib.config import ParameterError, run_config
from lib.training.run_folder import RunFolder
from tests.helpers import write_finished_run

RUN_OF = {registry.run_entry(run)["notebook"]: run for run in registry.run_names()}


class FakeNotebooks:
    """`execute` standing in for papermill: each run notebook takes `seconds`, writes its executed copy
    and a finished run folder; the evaluation writes its files. Records (notebook, start, end, parameters)."""

    def __init__(self, base: Path, seconds: float = 0.4, fail: dict | None = None):
        self.base, self.seconds, self.fail = base, seconds, fail or {}
        self.calls, self.lock = [], threading.Lock()

    def __call__(self, notebook, executed_dir, parameters):
        start = time.monotonic()
        executed_dir.mkdir(parents=True, exist_ok=True)
        (executed_dir / notebook).write_text("{}")
        if notebook == pipeline.EVALUATION_NOTEBOOK:
            for name in ("evaluation.json", "test_predictions.csv", "submission.csv"):
                (executed_dir.parent / name).write_text("new")
        else:
            time.sleep(self.seconds)
            folder = self.base / "runs" / RUN_OF[notebook]
            if notebook in self.fail:  # trained two epochs of three, then failed
                folder.mkdir(parents=True, exist_ok=True)
                torch.save({"epoch": 1}, folder / "last.pt")
                with self.lock:
                    self.calls.append((notebook, start, time.monotonic(), dict(parameters)))
                raise pipeline.NotebookFailed(f"notebooks/{notebook} failed in cell 3: {self.fail[notebook]}")
            write_finished_run(folder)
        with self.lock:
            self.calls.append((notebook, start, time.monotonic(), dict(parameters)))

    def runs(self):
        return [call for call in self.calls if call[0] != pipeline.EVALUATION_NOTEBOOK]


def settings_for(base: Path, tiny_data: Path, **more) -> dict:
    return {"data_dir": str(tiny_data), "reports_dir": str(base / "reports"), "runs_dir": str(base / "runs"), "weights": "none",
            "epochs": "3"} | more  # fmt: skip


def most_at_once(calls) -> int:
    """The largest number of the calls' [start, end] intervals that overlap at one time."""
    events = sorted([(start, 1) for _, start, _, _ in calls] + [(end, -1) for _, _, end, _ in calls], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_two_jobs_overlap_one_job_never_does_and_both_record_the_same_fingerprints(monkeypatch, tmp_path, tiny_data, capsys):
    recorded = {}
    for jobs_given in ("1", "2"):
        base = tmp_path / f"jobs{jobs_given}"
        fake = FakeNotebooks(base)
        monkeypatch.setattr(pipeline, "execute", fake)
        pipeline.run_all(settings_for(base, tiny_data, jobs=jobs_given))
        assert sorted(call[0] for call in fake.runs()) == sorted(RUN_OF), "every run executed once"
        evaluation = [call for call in fake.calls if call[0] == pipeline.EVALUATION_NOTEBOOK]
        assert len(evaluation) == 1 and evaluation[0][1] >= max(end for _, _, end, _ in fake.runs()), "the evaluation after every run"
        assert most_at_once(fake.runs()) == int(jobs_given), f"jobs={jobs_given}: at most that many at once, and that many"
        stamps = base / "reports" / "executed" / ".stamps"
        recorded[jobs_given] = {run: (RunFolder(base / "runs" / run).training_fingerprint(),
                                      (stamps / f"{registry.run_entry(run)['notebook']}.stamp").read_text()) for run in registry.run_names()}
        assert all(training and stamp for training, stamp in recorded[jobs_given].values())
        out = capsys.readouterr().out
        if jobs_given == "2":
            assert "=== 5 run notebook(s) to execute, 2 at once (jobs=2), sharing the CPU's" in out
            assert "=== baseline: started (1 of 2 at once) on the CPU, " in out and "its output in " in out
            assert len([line for line in out.splitlines() if ": done in " in line]) == 5
            for notebook in RUN_OF:  # a log per notebook, made by the job whatever `execute` writes into it
                assert (base / "reports" / "executed" / notebook.replace(".ipynb", ".log")).is_file()
        else:
            assert "at once" not in out and not list((base / "reports" / "executed").glob("*.log")), "jobs=1: as before"
        pipeline.run_all(settings_for(base, tiny_data, jobs=jobs_given))
        assert len(fake.calls) == 6, "nothing changed: every run skipped, the evaluation too"
    assert recorded["1"] == recorded["2"], "the same fingerprints and stamps, one after another or at once"
    # A run executed again one after another: its output goes to the console, and its old log goes.
    RunFolder(tmp_path / "jobs2" / "runs" / "baseline").result_file.unlink()
    pipeline.run_all(settings_for(tmp_path / "jobs2", tiny_data))
    assert sorted(path.name for path in (tmp_path / "jobs2" / "reports" / "executed").glob("*.log")) == [
        notebook.replace(".ipynb", ".log") for notebook in sorted(RUN_OF) if notebook != "01_baseline_cnn.ipynb"]


def test_a_failing_run_lets_the_others_finish_names_itself_with_resume_and_no_evaluation_runs(monkeypatch, tmp_path, tiny_data, capsys):
    fake = FakeNotebooks(tmp_path, fail={"02_resnet50_10_epochs.ipynb": "ValueError: a stand-in failure"})
    monkeypatch.setattr(pipeline, "execute", fake)
    settings = settings_for(tmp_path, tiny_data, jobs="2")
    with pytest.raises(pipeline.NotebookFailed) as failed:
        pipeline.run_all(settings)
    message = str(failed.value)
    assert message.startswith("1 of the 5 run notebook(s) failed; the others ran to their end and keep their results; the evaluation "
                              "was not run")  # fmt: skip
    assert "- resnet50-10ep: notebooks/02_resnet50_10_epochs.ipynb failed in cell 3: ValueError: a stand-in failure" in message
    assert "holds 2 completed epoch(s) of resnet50-10ep's 3. To continue it (the finished runs are skipped): make run-all RESUME=true" in message
    assert "JOBS=2" in message and "EPOCHS=3" in message, "the command repeats what was given"
    assert "its output: " in message and "02_resnet50_10_epochs.log" in message
    assert pipeline.EVALUATION_NOTEBOOK not in [call[0] for call in fake.calls]
    others = [run for run in registry.run_names() if run != "resnet50-10ep"]
    assert sorted(RUN_OF[call[0]] for call in fake.runs()) == sorted(registry.run_names()), "the runs not started yet still ran"
    for run in others:
        assert RunFolder(tmp_path / "runs" / run).training_fingerprint(), f"{run}'s result recorded as done"
    assert "=== resnet50-10ep: FAILED after " in capsys.readouterr().out

    fake.fail.clear()  # RESUME=true continues as one after another does: only the failed run, resumed, then the evaluation
    pipeline.run_all(settings | {"resume": "true"})
    assert [(call[0], call[3].get("resume")) for call in fake.calls[5:]] == [("02_resnet50_10_epochs.ipynb", True),
                                                                            (pipeline.EVALUATION_NOTEBOOK, None)]  # fmt: skip


def test_jobs_is_a_whole_number_refused_by_name_before_any_notebook(monkeypatch, tmp_path, tiny_data):
    monkeypatch.setattr(pipeline, "execute", lambda *a: pytest.fail("no notebook may start"))
    for bad in ("0", "two", "1.5", "-1", ""):
        with pytest.raises(ParameterError, match=rf"jobs={bad!r} is not a whole number of at least 1"):
            pipeline.run_all(settings_for(tmp_path, tiny_data, jobs=bad))
    assert pipeline.settings_from_make(" -- JOBS=3")["jobs"] == "3"
    assert pipeline.checked_settings({"jobs": "3"})[1] == {"jobs": 3}
    assert pipeline.main(["run-all", "jobs=x"]) == 1


def test_gpus_are_handed_out_lowest_first_a_run_waits_for_enough_and_the_cpu_split_by_jobs():
    plan = jobs.DevicePlan(3, ["0", "1", "2", "3"], cores=16, environ={})
    a, b = plan.place(cuda=True), plan.place(cuda=True, processes=2)
    assert (a.environment, b.environment) == ({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1,2"})
    assert plan.place(cuda=True, processes=2) is None, "one GPU free: a run needing two waits"
    plan.release(a)
    c = plan.place(cuda=True, processes=2)
    assert c.environment == {"CUDA_VISIBLE_DEVICES": "0,3"} and c.where == "GPUs 0,3 of its own" and plan.free_gpus() == 0
    plan.release(b)
    plan.release(c)
    assert plan.free_gpus() == 4
    # The parent's own CUDA_VISIBLE_DEVICES: GPU 0 here is the machine's GPU 6.
    assert jobs.visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "6,7,8"}) == ["6", "7"] and jobs.visible_gpus(2, {}) == ["0", "1"]
    assert jobs.DevicePlan(2, ["6", "7"], 8, {}).place(cuda=True).environment == {"CUDA_VISIBLE_DEVICES": "6"}
    one_gpu = jobs.DevicePlan(2, ["0"], cores=8, environ={})
    assert one_gpu.place(cuda=True).environment == {} and one_gpu.place(cuda=True) is not None, "one GPU: shared, never waited for"
    cpu = jobs.DevicePlan(2, [], cores=2, environ={})
    assert cpu.place(cuda=False).environment == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, "2 jobs on 2 cores: one thread each"
    assert jobs.DevicePlan(3, [], cores=16, environ={}).place(cuda=False).environment["OMP_NUM_THREADS"] == "5"
    assert jobs.DevicePlan(3, [], cores=16, environ={}).place(cuda=False, processes=2).environment["OMP_NUM_THREADS"] == "2"
    assert jobs.DevicePlan(8, [], cores=2, environ={}).place(cuda=False).environment["OMP_NUM_THREADS"] == "1", "never 0"
    kept = jobs.DevicePlan(2, [], cores=2, environ={"OMP_NUM_THREADS": "2"}).place(cuda=False)
    assert kept.environment == {"MKL_NUM_THREADS": "1"} and "OMP_NUM_THREADS=2 kept, as set in the environment" in kept.where


def test_a_placement_jobs_cannot_make_is_refused_by_name():
    configs = {"baseline": run_config("baseline", profile="quick", device="cuda:1"), "resnet50-10ep": run_config("resnet50-10ep", profile="quick")}
    with pytest.raises(ParameterError, match=r"baseline: device='cuda:1' pins it to one GPU, while JOBS=2 gives each run GPUs of its own"):
        jobs.check_devices(configs, {"baseline", "resnet50-10ep"}, 2, ["0", "1"])
    jobs.check_devices(configs, {"baseline", "resnet50-10ep"}, 1, ["0", "1"])  # one after another: cuda:1 as before
    jobs.check_devices(configs, {"baseline"}, 2, ["0"])  # one GPU, shared: cuda:N means what it always meant

    class Distributed:  # a run trained by several processes, one GPU each (RunConfig.nproc_per_node)
        device, nproc_per_node = "cuda", 3

    with pytest.raises(ParameterError, match=r"resnet50-10ep needs 3 GPUs \(nproc_per_node=3, one per process\), but 2 are visible here"):
        jobs.check_devices({"resnet50-10ep": Distributed()}, {"resnet50-10ep"}, 2, ["0", "1"])


def test_concurrent_runs_never_share_a_gpu_and_a_run_waits_for_two(monkeypatch, tmp_path, tiny_data):
    """The dispatcher with three stand-in GPUs, resnet50-100ep needing two: runs at once hold disjoint
    GPUs, and each kernel would see only its own."""
    seen, lock = [], threading.Lock()
    fake = FakeNotebooks(tmp_path, seconds=0.3)

    def recording(notebook, executed_dir, parameters):
        job = pipeline._current_job()
        visible = job.environment["CUDA_VISIBLE_DEVICES"] if job else None
        start = time.monotonic()
        fake(notebook, executed_dir, parameters)
        with lock:
            seen.append((notebook, visible, start, time.monotonic()))

    monkeypatch.setattr(pipeline, "execute", recording)
    monkeypatch.setattr(pipeline, "_cuda_runs", lambda configs, jobs_given: (set(configs), ["0", "1", "2"]))
    monkeypatch.setattr(pipeline, "processes_of", lambda config: 2 if config.run == "resnet50-100ep" else 1)
    pipeline.run_all(settings_for(tmp_path, tiny_data, jobs="3"))
    runs = [entry for entry in seen if entry[0] != pipeline.EVALUATION_NOTEBOOK]
    assert len(runs) == 5 and dict((n, v) for n, v, *_ in runs)["03_resnet50_100_epochs_plateau.ipynb"].count(",") == 1
    for i, (_, gpus_a, start_a, end_a) in enumerate(runs):
        for _, gpus_b, start_b, end_b in runs[i + 1 :]:
            if start_a < end_b and start_b < end_a:
                assert not set(gpus_a.split(",")) & set(gpus_b.split(",")), f"{gpus_a} and {gpus_b} at the same time"
    assert [v for n, v, *_ in seen if n == pipeline.EVALUATION_NOTEBOOK] == [None], "the evaluation runs as before, in the main thread"


def probe_notebooks(folder: Path) -> Path:
    """A notebooks folder holding probe.ipynb, which prints what its kernel's environment and folder are."""
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("label = 'probe'")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(
        "import os\nfor name in ('CUDA_VISIBLE_DEVICES', 'OMP_NUM_THREADS', 'HISTO_PROBE'):\n    print(name, '=', os.environ.get(name))\n"
        "print('cwd =', os.getcwd())\nprint('label =', label)")]  # fmt: skip
    notebook.metadata["kernelspec"] = {"name": pipeline.KERNEL_NAME, "language": "python", "display_name": pipeline.KERNEL_NAME}
    folder.mkdir(parents=True)
    nbformat.write(notebook, str(folder / "probe.ipynb"))
    return folder


def test_a_jobs_kernel_starts_with_its_environment_in_notebooks_and_writes_to_its_log(monkeypatch, tmp_path):
    """A real kernel: what the job's environment adds reaches it, this process's environment is left
    alone, the kernel starts in notebooks/ without papermill changing this process's folder, and its
    output goes to the log, not the console."""
    monkeypatch.setattr(pipeline, "NOTEBOOKS_DIR", probe_notebooks(tmp_path / "notebooks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before, log_path, outcome = os.getcwd(), tmp_path / "probe.log", {}

    def job_thread():
        with open(log_path, "w") as log:
            pipeline._thread_job.job = pipeline._Job(log=log, environment={"CUDA_VISIBLE_DEVICES": "5", "OMP_NUM_THREADS": "1",
                                                                            "HISTO_PROBE": "its own"}, stopping=threading.Event())  # fmt: skip
            try:
                pipeline.execute("probe.ipynb", tmp_path / "executed", {"label": "given"})
            except BaseException as error:
                outcome["error"] = error

    thread = threading.Thread(target=job_thread)
    thread.start()
    thread.join(120)
    assert "error" not in outcome, outcome
    log = log_path.read_text()
    for line in ("CUDA_VISIBLE_DEVICES = 5", "OMP_NUM_THREADS = 1", "HISTO_PROBE = its own", f"cwd = {tmp_path / 'notebooks'}", "label = given",
                 "=== executing notebooks/probe.ipynb", "=== probe.ipynb done in"):  # fmt: skip
        assert line in log, log
    assert "HISTO_PROBE = its own" in (tmp_path / "executed" / "probe.ipynb").read_text()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and "HISTO_PROBE" not in os.environ and os.getcwd() == before


def test_the_workbook_ran_two_at_once_every_run_and_the_evaluation_each_with_its_own_log(executed_workbook):
    """The session's tiny workbook is made by run_all with jobs=2 (tests/conftest.py)."""
    executed = executed_workbook / "reports" / "executed"
    logs = {notebook: (executed / notebook.replace(".ipynb", ".log")).read_text() for notebook in RUN_OF}
    for notebook, log in logs.items():
        assert (executed / notebook).is_file() and RunFolder(executed_workbook / "runs" / RUN_OF[notebook]).has_result()
        assert f"=== executing notebooks/{notebook}" in log and f"=== {notebook} done in" in log, log[-2000:]
        others = [other for other in RUN_OF if other != notebook]
        assert not any(f"notebooks/{other}" in log for other in others), f"{notebook}'s log holds another notebook's output"
    assert all("epoch" in log.lower() for log in logs.values()), "each log holds its run's training output"
    assert (executed_workbook / "reports" / "evaluation.json").is_file() and (executed / pipeline.EVALUATION_NOTEBOOK).is_file()
    assert not (executed / pipeline.EVALUATION_NOTEBOOK.replace(".ipynb", ".log")).exists(), "the evaluation runs alone, as before"


def test_ctrl_c_with_two_runs_at_once_interrupts_both_kernels_and_ends_with_one_interrupted_message(tmp_path, tiny_data):
    """A real `python -m lib.pipeline run-all jobs=2` whose two run notebooks stand in for training
    (their real parameters cell, then a long sleep), stopped by SIGINT once both kernels run."""
    from tests.test_interrupts import copied_project, kernels_of

    root = copied_project(tmp_path / "project", ["print('report')"])
    for notebook in ("01_baseline_cnn.ipynb", "02_resnet50_10_epochs.ipynb"):
        path = root / "notebooks" / notebook
        original = nbformat.read(str(path), as_version=4)
        training = nbformat.v4.new_code_cell("import time\nprint('training', flush=True)\ntime.sleep(300)")
        training.pop("id")  # the notebooks' nbformat 4 minor version has no cell ids
        original.cells = [next(cell for cell in original.cells if "parameters" in cell.metadata.get("tags", [])), training]
        nbformat.write(original, str(path))
    reports = tmp_path / "reports"
    args = ["run-all", "jobs=2", "runs=baseline,resnet50-10ep", "weights=none", f"data_dir={tiny_data}", f"runs_dir={tmp_path / 'runs'}",
            f"reports_dir={reports}"]  # fmt: skip
    out_path = tmp_path / "pipeline.log"
    with open(out_path, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "lib.pipeline", *args], cwd=root, stdout=out, stderr=subprocess.STDOUT)
    logs = [reports / "executed" / name for name in ("01_baseline_cnn.log", "02_resnet50_10_epochs.log")]
    deadline = time.monotonic() + 240
    while not all(log.is_file() and "training" in log.read_text() for log in logs):
        assert process.poll() is None, out_path.read_text()
        assert time.monotonic() < deadline, out_path.read_text()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    status = process.wait(timeout=60)
    output = out_path.read_text()
    assert status == 128 + signal.SIGINT and "Traceback" not in output, output
    said = output[output.index("INTERRUPTED: "):]
    assert said.startswith("INTERRUPTED: run-all was stopped with 2 run notebook(s) executing (jobs=2):"), said
    assert "notebooks/01_baseline_cnn.ipynb was interrupted" in said and "notebooks/02_resnet50_10_epochs.ipynb was interrupted" in said
    assert said.rstrip().endswith(f"To go on: python -m lib.pipeline run-all jobs=2 runs=baseline,resnet50-10ep weights=none data_dir={tiny_data} "
                                  f"runs_dir={tmp_path / 'runs'} reports_dir={reports}"), said  # fmt: skip
    for notebook in ("01_baseline_cnn.ipynb", "02_resnet50_10_epochs.ipynb"):
        assert "KeyboardInterrupt" in (reports / "executed" / notebook).read_text(), f"{notebook}'s kernel was interrupted in its cell"
    assert not list((reports / "executed" / ".stamps").glob("0[12]_*.stamp")), "no interrupted run passes for done"
    assert kernels_of(process.pid) == [], "every kernel stops with the pipeline"


def test_two_processes_take_turns_at_one_tile_cache(tmp_path, tiny_data):
    """Runs at once decode the same data set into one cache: the second waits while the first holds
    it, and then reads what the first decoded (here the test holds it, as a run decoding would)."""
    from lib.data.cache import TileCache
    from lib.data.layouts import read_layout

    cache_dir = tmp_path / "cache"
    sources = read_layout(tiny_data).train_paths
    holder = TileCache(sources, cache_dir)
    holder.open_size(32)
    code = ("import sys, numpy as np\nfrom lib.data.cache import decode_tiles\nfrom lib.data.layouts import read_layout\n"
            f"tiles, ok, record = decode_tiles(read_layout({str(tiny_data)!r}).train_paths, 32, cache_dir={str(cache_dir)!r})\n"
            "np.save(sys.argv[1], tiles.numpy())\nprint(record.cache)")  # fmt: skip
    with holder._exclusive():
        process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tiles.npy")], cwd=pipeline.PROJECT_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        said = ""
        while "waiting for another process using the tile cache" not in said:  # it says so, then waits; or ends without waiting
            line = process.stdout.readline()
            assert line, f"it did not wait for the cache:\n{said}"
            said += line
        time.sleep(0.5)
        assert process.poll() is None, "it waits while the cache is held"
        holder.decode(np.arange(len(sources)), "decoding")  # the holder decodes every tile meanwhile
    output = said + process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert f"all {len(sources)} of the run's tiles decoded before" in output, f"it decoded none again: {output}"
    assert np.array_equal(np.load(tmp_path / "tiles.npy"), holder.tiles().numpy()), "the waiting process read the holder's tiles"
    assert json.loads((cache_dir / f"{holder.key}.json").read_text())["n"] == len(sources)
