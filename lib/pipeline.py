"""`make run-all` and `make report`: execute the notebooks headless with papermill.

Parameters travel one way: any settable RunConfig field (lib/config.py) given here reaches every
run notebook as a papermill parameter, converted and checked by the field's type before the first
notebook starts; a name that is no field fails, naming the accepted ones.

    make run-all [NAME=value ...] [SET="name=value ..."] [DATA=dir] [WEIGHTS=file.pth] [RUNS=a,b] [JOBS=N]
    python -m lib.pipeline run-all [name=value ...]        # the same, without make
    python -m lib.pipeline report [runs_dir=... reports_dir=...]

A make variable NAME is the field name in upper case (EPOCHS=3, TILE_SIZE=96); DATA and WEIGHTS are
shortcuts for data_dir and weights_path. Besides the fields: `runs` (a comma-separated subset of the
registry's runs; the evaluation runs only with all of them), `reports_dir`, and `jobs` (N run
notebooks at once, each with GPUs of its own where there are several, else sharing the GPU or the
CPU's cores; lib/jobs.py), with the evaluation's second_test and tta.

Each stage reruns when what it reads changed since its last successful execution, and only then.
"The lib files X imports" is X's code_closure: lib modules found by parsing imports (top-level and
inside functions), followed through the import graph.

- A run's training: its resolved config (less profile_reason, resume, fresh, runs_dir, cache_dir and
  checkpoint_every_s, data_dir relative to the project inside it, and less the weights fields for a
  network without pretrained weights), the data set, the weights file, and the lib files
  lib.training imports (config, registry, paths, metrics, data, models, weights, training; no figure,
  report sentence or door). Recorded in runs/<run>/training.fingerprint once its notebook succeeded.
- A run's notebook: its training, the notebook file, the lib files its code cells import, the
  registry. Unchanged, with its result.json there and its files whole (RunFolder.check_whole; a
  damaged run stops the pipeline by name): skipped. Changed while its training is unchanged and its
  result kept (a figure's code changed): executed with resume=True, so that `fit` returns the saved
  result without training and the notebook redraws. Otherwise, or with fresh=True: executed, it trains.
- The evaluation: its notebook, the lib files it imports, its parameters, the data set, the runs'
  training fingerprints (a run redrawn is not a run retrained) and their best.pt files' identity.
- The report (`report`): its notebook, the lib files it imports with lib/report/render.py and its
  templates, the registry, the evaluation's fingerprint, the runs' training fingerprints and
  result.json files; skipped while report.html (and report.pdf where a Chromium is installed) is there.

runs_dir and reports_dir are locked for the whole run (lib/writer_lock.py): a second pipeline, or a
notebook's fit, on them is refused by name. SIGTERM (a time limit, `timeout`) stops it as Ctrl-C does,
with the resume hint. Notebook fingerprints are kept in reports/executed/.stamps/. A failing notebook stops the pipeline
with a non-zero exit; its executed copy stays in reports/executed/ with the error shown, and the
runs that finished before it keep their results. With JOBS=N a failing run stops no other: the runs
running and those not started yet run to their end, each one's output in reports/executed/<notebook>.log,
and then one message names every failed run with its resume hint; the evaluation is not run. Ctrl-C
and SIGTERM interrupt the running kernel (every running kernel, with JOBS=N) and end with one
message: what was kept, and the command that goes on (exit 130 or 143).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from lib import paths, registry
from lib.config import BASELINE_TILE, PRETRAINED_FIELDS, ParameterError, convert, run_config, settable_fields
from lib.jobs import DevicePlan, check_devices, check_jobs, cpu_cores, processes_of, visible_gpus
from lib.paths import DEFAULT_DATA_DIR, KERNEL_NAME, NOTEBOOKS_DIR, PROJECT_ROOT, REPORTS_DIR, RUNS_DIR, pythonpath_with_project, resolve
from lib.writer_lock import FolderInUse

EVALUATION_NOTEBOOK = "06_evaluation.ipynb"
REPORT_NOTEBOOK = "07_report.ipynb"
# The pipeline's own settings, beside the run parameters.
PIPELINE_OPTIONS = {
    "runs": "registry runs to execute, comma-separated (default: all, then the evaluation)",
    "reports_dir": "where executed notebooks, the evaluation and the report go (default: reports/)",
    # The evaluation's own options (06_evaluation.ipynb's parameters of the same names).
    "second_test": "a second labelled test set in any supported layout, every run scored on it too (default auto: the generated "
                   "other-laboratory set with the generated data, none otherwise; '' for none)",
    "tta": "runs also scored with test-time augmentation, the mean over each tile's 8 flips and rotations: none, final (default) or all",
    "jobs": "run notebooks executed at once (default 1: one after another), each with devices of its own (lib/jobs.py) and its "
            "output in reports/executed/<notebook>.log; the evaluation follows once all have finished",
}
EVALUATION_OPTIONS = ("second_test", "tta")
# make variables that are shortcuts users look for; every other NAME is the field name in upper case.
# WEIGHTS is usually the file users hold (weights_path); its two words, imagenet and none, are the
# `weights` field's values, so WEIGHTS=none means that field.
MAKE_SHORTCUTS = {"DATA": "data_dir", "WEIGHTS": "weights_path"}
WEIGHTS_WORDS = ("imagenet", "none")
MAKE_OWN = {"PYTHON", "PORT", "SIZES"}  # the Makefile's own variables (the venv's Python, make lab's port, make bench-scale's sizes)


def make_command_line(makeflags: str) -> list[tuple[str, str]]:
    """The NAME=value variables given on make's command line, read from MAKEFLAGS (which make
    hands every recipe): after " -- ", separated by spaces, with spaces and backslashes in values
    escaped by a backslash. `make run-all DATA="/data/my tiles"` gives [("DATA", "/data/my tiles")]."""
    _, sep, definitions = makeflags.partition(" -- ")
    if not sep and makeflags.startswith("-- "):
        definitions = makeflags[3:]
    items, current, chars = [], [], iter(definitions)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == " ":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    # make writes a "$" of a value as "$$" there (its own escape; `make X='a$$b'` is the value a$b).
    return [(name, value.replace("$$", "$")) for name, value in (item.split("=", 1) for item in items if "=" in item)]


def parse_assignments(items: list[str], where: str) -> dict[str, str]:
    """["epochs=3", "data_dir=/x"] -> {"epochs": "3", "data_dir": "/x"}; ValueError naming a bad item."""
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"{where}: {item!r} is not name=value (e.g. epochs=3)")
        settings[name.strip()] = value
    return settings


def settings_from_make(makeflags: str) -> dict[str, str]:
    """The run parameters and pipeline options a make command line gives, as text."""
    settings: dict[str, str] = {}
    given: dict[str, str] = {}  # parameter -> how it was given, to refuse one given twice

    def put(parameter: str, value: str, how: str) -> None:
        if parameter in settings and settings[parameter] != value:
            raise ParameterError(f"{parameter} is given twice, as {given[parameter]} and as {how}; give it once")
        settings[parameter], given[parameter] = value, how

    for name, value in reversed(make_command_line(makeflags)):  # make lists the command line's variables last first
        if name in MAKE_OWN:
            continue
        if name == "SET":
            try:
                items = shlex.split(value)
            except ValueError as error:
                raise ParameterError(f"SET={value!r}: {error} (quote each value with spaces once: SET=\"title='my run' epochs=3\")") from None
            for item_name, item_value in parse_assignments(items, "SET").items():
                put(item_name, item_value, f"{item_name}={item_value!r} in SET")
        elif name == "WEIGHTS" and value.strip().lower() in WEIGHTS_WORDS:
            put("weights", value.strip().lower(), f"WEIGHTS={value}")
        elif name in MAKE_SHORTCUTS:
            put(MAKE_SHORTCUTS[name], value, f"{name}={value}")
        elif name.lower() in settable_fields() or name.lower() in PIPELINE_OPTIONS:
            put(name.lower(), value, f"{name}={value}")
        else:
            fields = [n.upper() for n in settable_fields() if n.upper() not in MAKE_SHORTCUTS]
            raise ParameterError(f"make variable {name} is no run parameter; accepted: the RunConfig fields in upper case "
                                 f"({', '.join(fields)}), {', '.join(n.upper() for n in PIPELINE_OPTIONS)}, the shortcuts "
                                 f"{', '.join(f'{k} ({v})' for k, v in MAKE_SHORTCUTS.items())}, and SET=\"name=value ...\" "
                                 "for any field by its own name")  # fmt: skip
    return settings


def checked_settings(settings: dict) -> tuple[dict, dict]:
    """(run parameters converted to their fields' types, pipeline options); ParameterError for an
    unknown name and TypeError for a value its field cannot take, both by name."""
    unknown = sorted(set(settings) - set(settable_fields()) - set(PIPELINE_OPTIONS))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(settable_fields())} "
                             f"(RunConfig, lib/config.py), and the pipeline's {', '.join(PIPELINE_OPTIONS)}")  # fmt: skip
    parameters = {name: convert(name, value) for name, value in settings.items() if name in settable_fields()}
    for name in ("data_dir", "runs_dir"):
        if name in parameters and not str(parameters[name]).strip():
            raise ParameterError(f"{name} is empty (DATA= or {name}= with no value, perhaps an unset shell variable): give a folder, "
                                 "or leave it out for the default")  # fmt: skip
    for name in ("data_dir", "runs_dir", "cache_dir", "weights_path"):
        if parameters.get(name):  # notebooks run in notebooks/: every path goes to them absolute
            parameters[name] = str(resolve(parameters[name]))
    options = {name: value for name, value in settings.items() if name in PIPELINE_OPTIONS}
    if "jobs" in options:
        options["jobs"] = check_jobs(options["jobs"])
    if options.get("tta") is not None:
        from lib.report.evaluate import TTA_CHOICES

        options["tta"] = str(options["tta"]).strip().lower()
        if options["tta"] not in TTA_CHOICES:
            raise ParameterError(f"tta={settings['tta']!r} is not one of {', '.join(TTA_CHOICES)}: which runs are also scored on the mean "
                                 "over each tile's 8 flips and right-angle rotations")  # fmt: skip
    second = str(options.get("second_test") or "").strip()
    if second and second.lower() not in ("auto", "none"):  # notebooks run in notebooks/: the path goes to them absolute
        options["second_test"] = str(resolve(second))
    return parameters, options


def _code_of(path: Path) -> bytes:
    """What a file contributes to a fingerprint: for Python, its syntax tree without docstrings
    (comments are not in it either), so that rewording a docstring or a comment, such as the module
    map in lib/__init__.py, reruns nothing; for any other file, its bytes."""
    if path.suffix != ".py":
        return path.read_bytes()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def _hash_files(paths, root: Path | None = None) -> str:
    """One digest of the files' names (relative to `root`, the project root by default) and code
    (_code_of: Python without its docstrings and comments, other files whole)."""
    root = root or PROJECT_ROOT
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(_code_of(path))
    return digest.hexdigest()


# What `fit` needs: lib/training/__init__.py and, through the import graph, everything it imports.
TRAINING_ENTRY = "lib.training"
# report() renders the executed report notebook with these besides what the notebook imports.
RENDERING_MODULES = ("lib.report.render",)
RENDERING_TEMPLATES = Path("lib") / "report" / "templates"


def _under(root: Path, path: Path) -> Path:
    """The project file `path` in the tree at `root` (a copy of the project, in tests)."""
    return root / path.relative_to(paths.PROJECT_ROOT)


def _module_file(name: str, root: Path) -> Path | None:
    """The file under `root` that module `name` ("lib.data.tiles") runs: its .py, or its
    package's __init__.py; None for a name outside lib or no module there (a class or function
    imported by name, `from lib.config import RunConfig`)."""
    parts = name.split(".")
    if parts[0] != "lib":
        return None
    base = root.joinpath(*parts)
    for path in (base.parent / f"{parts[-1]}.py", base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(tree: ast.AST, package: str = "") -> set[str]:
    """The lib module names a parsed source imports anywhere in it, at its top or inside a function
    (run when the function is called, so a dependency all the same). `from lib.x import y` gives
    lib.x and lib.x.y (the second is kept only where it is a module); relative imports are read
    from `package`, the importing module's package."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}
    return {name for name in names if name == "lib" or name.startswith("lib.")}


def code_closure(entries, root: Path | None = None, sources: tuple[ast.AST, ...] = ()) -> list[Path]:
    """The lib files that importing the modules `entries` (dotted names: "lib.training") and running
    the parsed `sources` (a notebook's cells) executes, read from the tree at `root` (the project
    root by default): each module's file, the __init__.py of every package above it (importing
    lib.data.tiles runs lib/data/__init__.py, and with it all that the package imports), and, by
    the import graph, what those import, at their top or inside functions. Returns the files
    sorted; raises ModuleNotFoundError for an entry that is no lib module and SyntaxError for a
    file that does not parse."""
    root = root or PROJECT_ROOT
    for entry in entries:
        if _module_file(entry, root) is None:
            raise ModuleNotFoundError(f"{entry} is no module under {root / 'lib'}", name=entry)
    pending = set(entries).union(*(_imported_names(tree) for tree in sources))
    found: dict[str, Path] = {}
    while pending:
        name = pending.pop()
        path = _module_file(name, root)
        if name in found or path is None:
            continue
        found[name] = path
        parts = name.split(".")
        pending |= {".".join(parts[:i]) for i in range(1, len(parts))}  # the packages above it run first
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        pending |= _imported_names(ast.parse(path.read_text(), filename=str(path)), package)
    return sorted(set(found.values()))


def notebook_code(notebook: str, root: Path | None = None) -> tuple[ast.AST, ...]:
    """The notebook's code cells, parsed (IPython's magics and shell lines turned into the Python
    they run, where a cell holds any). Raises SyntaxError naming the notebook for a cell that still
    does not parse."""
    notebook_file = _under(root or PROJECT_ROOT, NOTEBOOKS_DIR / notebook)
    cells = [cell for cell in json.loads(notebook_file.read_text())["cells"] if cell["cell_type"] == "code"]
    trees = []
    for cell in cells:
        source = "".join(cell["source"])
        try:
            trees.append(ast.parse(source, filename=str(notebook_file)))
        except SyntaxError:
            from IPython.core.inputtransformer2 import TransformerManager

            trees.append(ast.parse(TransformerManager().transform_cell(source), filename=str(notebook_file)))
    return tuple(trees)


def data_fingerprint(index) -> str:
    """Identity of a data set as the runs read it (a TileIndex): its layout, every tile file's size
    and time (or zip CRC), its labels and groups; its folder relative to the project when it lies
    inside it, and its files by their names inside it (a checkout moved with its data is the same data)."""
    from lib.data import source_signature

    digest = hashlib.sha256(f"{_shown(Path(index.data_dir))}|{index.layout}|{index.label_rule}".encode())
    for source in [*index.train_paths, *index.test_paths]:
        name, *identity = source_signature(source)
        digest.update(json.dumps([name.removeprefix(str(index.data_dir)), *identity]).encode())
    digest.update(index.train_labels.tobytes())
    if index.train_groups is not None:
        digest.update("\n".join(index.train_groups).encode())
    if index.test_labels is not None:
        digest.update(index.test_labels.tobytes())
    return digest.hexdigest()


def check_parameters(notebook: str, parameters: dict) -> None:
    """Every parameter must be one the notebook's parameters cell declares: papermill itself only
    warns about an unknown name and runs on without it."""
    import papermill

    declared = papermill.inspect_notebook(str(NOTEBOOKS_DIR / notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ParameterError(f"notebooks/{notebook} has no parameter(s) {', '.join(unknown)}; it accepts: {', '.join(declared)}")


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def training_parameters(config, weights_file: list | None) -> dict:
    """A run's resolved config as its training depends on it, with its weights file's identity (from
    preflight): less `profile_reason`, `resume` and `fresh`, which say how the config was chosen and how a
    result is reached, not what it is; less `runs_dir`, `cache_dir` and `checkpoint_every_s`, which say
    where the run and the decoded tiles live and how often it saves, not what it computes; with `data_dir`
    relative to the project when it lies inside it (a checkout moved with its data trains nothing again);
    and less the weights fields for a network that takes no pretrained weights (a weights file given to
    the ResNet50 runs does not retrain the baseline); with the stain_reference image's size and time
    when one is given (an image changed in place retrains)."""
    ignored = {"profile_reason", "resume", "fresh", "runs_dir", "cache_dir", "checkpoint_every_s"}
    ignored |= set(PRETRAINED_FIELDS) if config.model != "resnet50" else set()
    parameters = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    if config.stain_reference:  # the reference image's content shapes the tiles: a changed file retrains
        reference = Path(config.stain_reference)
        parameters["stain_reference file"] = [reference.stat().st_size, reference.stat().st_mtime_ns] if reference.is_file() else "absent"
    return parameters | {"data_dir": _shown(Path(config.data_dir)), "weights file": weights_file}


def training_fingerprint(parameters: dict, data: str, root: Path | None = None) -> str:
    """What a run's training depends on, and nothing else: its `training_parameters`, the data set's
    fingerprint, and the code that trains (code_closure of lib.training, read under `root`). A change
    to a figure, a sentence of the report or the pipeline leaves it unchanged."""
    code = _hash_files(code_closure([TRAINING_ENTRY], root), root)
    return _digest({"training code": code, "parameters": parameters, "data": data})


def fingerprint(notebook: str, parameters: dict, data: str, upstream: list[str] = (), root: Path | None = None,
                modules: tuple[str, ...] = ()) -> str:  # fmt: skip
    """What a notebook's execution depends on: its file, the lib files its code cells import (their
    code_closure, with `modules` besides), the registry, its parameters, the data set, and the
    fingerprints of what it reads (a run notebook: its run's training fingerprint), all under
    `root` (the project root by default)."""
    root = root or PROJECT_ROOT
    code = code_closure(modules, root, notebook_code(notebook, root))
    files = [_under(root, NOTEBOOKS_DIR / notebook), _under(root, registry.REGISTRY_FILE), *code]
    record = {"code": _hash_files(files, root), "parameters": parameters, "data": data, "upstream": list(upstream)}
    return _digest(record)


class SetupError(RuntimeError):
    """A part of the set-up the workbook needs is missing; the message names it and how to mend it."""


MEND_VENV = "run `make venv` (it creates .venv from requirements.txt and registers the kernel)"


def require_kernel() -> None:
    """The notebooks' Jupyter kernel must be registered and its Python must exist: `pip install -r
    requirements.txt` alone registers no kernel, and a re-created venv leaves a stale one."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        raise SetupError(f"the notebooks' Jupyter kernel {KERNEL_NAME!r} is not registered for {sys.executable}. To mend it, {MEND_VENV}; "
                         f"or, in the Python that has the workbook's packages: python -m ipykernel install --sys-prefix --name {KERNEL_NAME}") from None  # fmt: skip
    python = spec.argv[0] if spec.argv else ""
    if python and os.sep in python and not Path(python).is_file():
        raise SetupError(f"the kernel {KERNEL_NAME!r} ({spec.resource_dir}) starts {python}, which no longer exists. To mend it, {MEND_VENV}")


def require_writable(folder: Path, name: str) -> None:
    """`folder` (a parameter `name`) can be created and written to, checked before anything runs,
    so that a run is not lost at its end for want of a place to save it."""
    probe = folder / f".write-check-{os.getpid()}-{threading.get_ident()}"  # its own per thread: run notebooks start at once (JOBS)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SetupError(f"{name} {folder} is not writable ({error.strerror or error}). To mend it, choose another folder "
                         f"({name.upper()}=/a/writable/folder, or {name}=... in a notebook), or make it writable (chmod u+w, chown)") from None  # fmt: skip


def execute(notebook: str, executed_dir: Path, parameters: dict) -> None:
    """Run one notebook with papermill into `executed_dir`; raise NotebookFailed with a clear message on failure.
    Called from a job's thread (make run-all JOBS=N, _run_concurrently), its kernel starts with that
    job's devices, and its output and these lines go to the job's log file instead of the console."""
    from papermill.exceptions import PapermillExecutionError

    check_parameters(notebook, parameters)
    require_kernel()
    require_writable(executed_dir, "reports_dir")
    output = executed_dir / notebook
    _kernel_environment()
    job = _current_job()
    _tell(job, f"\n=== executing notebooks/{notebook} -> {output}")
    start = time.perf_counter()
    try:
        _papermill_stoppable(notebook, output, parameters)
    except PapermillExecutionError as error:
        raise NotebookFailed(
            f"notebooks/{notebook} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
            f"The executed notebook, with the error shown, is {output}"
        ) from None
    except (RuntimeError, OSError, ValueError) as error:  # the kernel died or could not start
        raise NotebookFailed(f"notebooks/{notebook} could not be executed: {type(error).__name__}: {error}\n"
                             f"What it ran so far is in {output}") from None  # fmt: skip
    _tell(job, f"=== {notebook} done in {time.perf_counter() - start:.0f} s")


def _kernel_environment() -> None:
    """What every notebook's kernel inherits from this process's environment, set where it differs
    (so that once the main thread has set it, a job's thread calling this writes nothing to os.environ)."""
    # The kernel imports lib/ from this checkout whatever its Python's site-packages say (the .pth that
    # `make venv` writes is not there after a plain `pip install -r requirements.txt`).
    wanted = pythonpath_with_project(os.environ.get("PYTHONPATH", ""))
    if os.environ.get("PYTHONPATH") != wanted:
        os.environ["PYTHONPATH"] = wanted
    # Kernels inherit it: papermill keeps a kernel's output as text in the executed notebook and the log,
    # where a progress bar redrawn in place piles up as fragments; lib/progress.py writes plain lines instead.
    if "HISTO_PROGRESS" not in os.environ:
        os.environ["HISTO_PROGRESS"] = "plain"


_console = threading.Lock()


def _say(line: str) -> None:
    """One line to the console, written whole: run notebooks executing at once report from their threads."""
    with _console:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@dataclass
class _Job:
    """A run notebook executing beside others (JOBS > 1), as `execute` in its thread sees it."""

    log: TextIO | None  # reports/executed/<notebook>.log, opened by its thread: its kernel's output, papermill's lines, execute's own
    environment: dict[str, str]  # what its kernel's environment adds to the pipeline's (lib/jobs.py)
    stopping: threading.Event  # set by the main thread on Ctrl-C or SIGTERM: no cell starts after it
    kernels: list = field(default_factory=list)  # its kernel managers, for the main thread to interrupt


_thread_job = threading.local()


def _current_job() -> _Job | None:
    return getattr(_thread_job, "job", None)


def _tell(job: _Job | None, line: str) -> None:
    """A line of `execute`'s: to the console, or to the job's log where it runs beside others."""
    if job is None:
        _say(line)
    else:
        job.log.write(line + "\n")
        job.log.flush()


class NotebookFailed(RuntimeError):
    pass


class NotebookInterrupted(NotebookFailed):
    """A notebook stopped by Ctrl-C or SIGTERM; the message says where and what was kept. `continues`:
    the message ends with the command that goes on (a run's resume hint), so none is added to it."""

    def __init__(self, message: str, continues: bool = False):
        super().__init__(message)
        self.continues = continues


# After Ctrl-C, how long the kernel gets to end its cell (its KeyboardInterrupt, shown in the executed
# copy) before it is killed.
KERNEL_STOP_S = 20


def _papermill_stoppable(notebook: str, output: Path, parameters: dict) -> None:
    """papermill.execute_notebook in a worker thread, so that Ctrl-C and SIGTERM reach this (the main)
    thread as KeyboardInterrupt. In the main thread nbclient takes both signals for itself: it asks the
    kernel to shut down, the running cell carries on to its end, and the notebook either finishes as if
    nothing happened or fails as "kernel died". Here the kernel is interrupted instead (the executed copy
    shows KeyboardInterrupt in the cell it stopped), given KERNEL_STOP_S to end, then killed, and
    KeyboardInterrupt is raised again. In a job's thread (JOBS > 1) papermill runs in that thread, and
    the main thread stops the kernels of all jobs (_run_concurrently). Raises what papermill raises."""
    job = _current_job()
    if job is not None:
        _papermill(notebook, output, parameters, job.kernels, job.stopping, job)
        return
    kernels, outcome = [], {}

    def work():
        try:
            _papermill(notebook, output, parameters, kernels, stopping)
        except BaseException as error:  # handed to the main thread, which raises it
            outcome["error"] = error
        finally:
            done.set()

    # An Event, not Thread.join: a join interrupted by KeyboardInterrupt marks a live thread as ended
    # (CPython before 3.13, gh-90882), and the kernel would be left running.
    done, stopping = threading.Event(), threading.Event()
    threading.Thread(target=work, name=f"papermill {notebook}", daemon=True).start()
    try:
        done.wait()
    except KeyboardInterrupt:
        stopping.set()
        _stop_kernels(kernels, done)
        raise
    if "error" in outcome:
        raise outcome["error"]


def _papermill(notebook: str, output: Path, parameters: dict, kernels: list, stopping: threading.Event, job: _Job | None = None) -> None:
    """papermill.execute_notebook, its kernel manager recorded in `kernels` and no cell started once
    `stopping` is set. For a `job`, the kernel starts with the job's environment, in notebooks/, its
    process's output and its cells' output going to the job's log rather than the console."""
    import papermill
    from jupyter_client.manager import AsyncKernelManager

    class RecordedKernelManager(AsyncKernelManager):  # papermill makes the manager; this is how we learn its kernel
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            kernels.append(self)

        async def _async_pre_start_kernel(self, **kw):
            if job is not None:  # the provisioner passes these on to the kernel's Popen
                kw |= {"env": {**os.environ, **job.environment}, "cwd": str(NOTEBOOKS_DIR), "stdout": job.log, "stderr": job.log}
            return await super()._async_pre_start_kernel(**kw)

    def refuse_after_stop(**_):  # nbclient calls it before each cell: a kernel that was starting, or between cells, gets no more
        if stopping.is_set():
            raise RuntimeError("stopped (Ctrl-C or SIGTERM) before this cell")

    if job is None:
        where = {"cwd": str(NOTEBOOKS_DIR), "log_output": True}
    else:
        # Not papermill's cwd, which changes the whole process's directory (os.chdir) under every job's
        # thread: the kernel manager starts the kernel in notebooks/ instead.
        where = {"log_output": False, "stdout_file": job.log, "stderr_file": job.log}
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / notebook), str(output), parameters=parameters, kernel_name=KERNEL_NAME, progress_bar=False,
        kernel_manager_class=RecordedKernelManager, on_cell_start=refuse_after_stop, **where,
    )  # fmt: skip


def _stop_kernels(kernels, done) -> None:
    """Interrupt the kernels' process groups (the cell raises KeyboardInterrupt, papermill writes the
    executed copy); kill them if the worker has not ended within KERNEL_STOP_S, or at once on a second
    Ctrl-C. `kernels`: the kernel managers, or a function returning those running now."""

    def send(signum):
        for manager in list(kernels() if callable(kernels) else kernels):
            group = getattr(manager.provisioner, "pgid", None)
            if group:
                try:
                    os.killpg(group, signum)
                except ProcessLookupError:  # already gone
                    pass

    try:
        send(signal.SIGINT)
        done.wait(KERNEL_STOP_S)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        pass
    if not done.is_set():
        send(signal.SIGKILL)
        done.wait(5)


def _stamp_file(notebook: str, executed_dir: Path) -> Path:
    return executed_dir / ".stamps" / (notebook + ".stamp")


def _stamp_matches(notebook: str, executed_dir: Path, stamp: str) -> bool:
    """The notebook's last successful execution had fingerprint `stamp` and its executed copy is there."""
    stamp_file = _stamp_file(notebook, executed_dir)
    return stamp_file.is_file() and stamp_file.read_text() == stamp and (executed_dir / notebook).is_file()


def _unchanged(notebook: str, executed_dir: Path, stamp: str, outputs: list[Path] = ()) -> bool:
    """True (and says so) when the notebook's last successful execution had fingerprint `stamp`
    and its executed copy and `outputs` are still there; False otherwise, forgetting that stamp."""
    stamp_file = _stamp_file(notebook, executed_dir)
    if _stamp_matches(notebook, executed_dir, stamp):
        gone = [str(path) for path in outputs if not Path(path).is_file()]
        if not gone:
            _say(f"=== {notebook}: unchanged since its last successful execution, skipped")
            return True
        _say(f"=== {notebook}: unchanged, but what it wrote is gone ({', '.join(gone)}): executing it again")
    stamp_file.unlink(missing_ok=True)  # a failure from here on must not leave the old stamp to pass for this one
    return False


def _record_stamp(notebook: str, executed_dir: Path, stamp: str) -> None:
    stamp_file = _stamp_file(notebook, executed_dir)
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)


def _run_if_changed(notebook: str, executed_dir: Path, parameters: dict, stamp: str, outputs: list[Path] = (),
                    redraw: str = "", replaces: list[Path] = ()) -> bool:  # fmt: skip
    """Execute unless the last successful execution had the same fingerprint and its `outputs`
    (a run's result.json, the evaluation's) are still there. `redraw`, a line saying why, executes
    it with resume=True: its run's training is unchanged and its result kept, so `fit` returns
    that result without training and the notebook redraws around it. `replaces`: files the notebook
    writes, removed (and said) before it starts. True if it ran."""
    if _unchanged(notebook, executed_dir, stamp, outputs):
        return False
    if redraw:
        _say(redraw)
        parameters = parameters | {"resume": True}
    _remove_outputs(notebook, replaces, "before it runs again")
    if _current_job() is None:  # its output goes to the console: a log an earlier JOBS=N run left would pass for this execution's
        _log_file(executed_dir, notebook).unlink(missing_ok=True)
    execute(notebook, executed_dir, parameters)
    _record_stamp(notebook, executed_dir, stamp)
    return True


def _remove_outputs(notebook: str, files: list[Path], when: str = "") -> list[Path]:
    """Remove those of `files` that exist, saying so (`when`; else the caller says it); returns them.
    A notebook stopped midway (Ctrl-C, SIGTERM, a crash, a failing cell) must leave none of its last
    execution's outputs beside those it had already rewritten: removed before it starts, none is left
    even where no handler runs (SIGKILL, a power cut)."""
    removed = [path for path in files if path.is_file()]
    for path in removed:
        path.unlink()
    if removed and when:
        _say(f"=== {notebook}: {', '.join(_shown(path) for path in removed)} removed {when}, so that a stop midway leaves no mix of "
             "old and new")  # fmt: skip
    return removed


def _shown(path: Path) -> str:
    """`path` as the user reads it: relative to the project root when it lies below it."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def ensure_data(data_dir: Path) -> None:
    """Generate the embedded default set (and its other-laboratory test set) when it is the one asked
    for; never touch user data."""
    if data_dir == DEFAULT_DATA_DIR:
        from lib.data.synthetic import default_other_lab, ensure_default

        start = time.perf_counter()
        ensure_default(data_dir)
        print(f"=== data: generated default set ready at {data_dir}, its other-laboratory test set at {default_other_lab(data_dir)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    else:
        require_data(data_dir)


def require_data(data_dir: Path) -> None:
    """A user's data_dir must exist (the default set is generated when missing); checked before the
    pipeline takes its locks, so a typo is named first. Raises FileNotFoundError naming it."""
    if data_dir != DEFAULT_DATA_DIR and not data_dir.exists():
        raise FileNotFoundError(f"data_dir {data_dir} does not exist (DATA= or data_dir=; relative paths are read from {PROJECT_ROOT})")


def _selected_runs(options: dict) -> list[str]:
    if not options.get("runs"):
        return registry.run_names()
    runs = [name.strip() for name in str(options["runs"]).split(",") if name.strip()]
    unknown = [name for name in runs if name not in registry.run_names()]
    if unknown:
        raise ParameterError(f"runs={options['runs']!r}: no run(s) {', '.join(unknown)} in the registry; it has {', '.join(registry.run_names())}")
    return [name for name in registry.run_names() if name in runs]


def preflight(configs) -> dict[str, list | None]:
    """What can fail inside a notebook, checked for every run before the first one starts, so that a
    typo does not cost the runs before it: the device and the processes each run asks for
    (nproc_per_node: one GPU each), each run's stain_reference image (read as the
    run will read it), and each ResNet50 run's weights (the file read and checked as the run will read
    it). Returns, per run, the weights file's identity (path, size, time) for the run's fingerprint: a
    file that appears or changes reruns the run."""
    from lib.data import read_stain_reference
    from lib.models import build_resnet50
    from lib.training.distributed import check_processes
    from lib.training.speed import resolve_device
    from lib.weights import imagenet_cache_file

    identities, checked = {}, set()
    for config in configs:
        resolve_device(config.device)
        check_processes(config)  # several processes on one GPU: refused by name
        if config.stain_reference:
            read_stain_reference(config.stain_reference)  # raises, naming the file and the parameter
        identities[config.run] = None
        if config.model != "resnet50" or config.weights == "none":
            continue
        path = Path(config.weights_path) if config.weights_path else imagenet_cache_file()
        key = (config.head, str(path), config.weights_strict)
        if key not in checked:
            build_resnet50(config.head, config.weights, config.weights_path, config.weights_strict)  # raises, naming the file
            checked.add(key)
        identities[config.run] = [str(path), *([path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else ["absent"])]
    return identities


def resume_hint(config, settings: dict | None = None) -> str:
    """What to do after a run notebook failed or was stopped: when its folder holds a last.pt of an
    unfinished run written with these parameters, the make command that continues it, with the
    parameters this one was given (`settings`, by field or option name), else "" (a run written with
    other parameters: `fit`'s own message says what continues it)."""
    from lib.training.loop import changed_parameters
    from lib.training.run_folder import RunFolder

    folder = RunFolder(config.run_dir)
    if config.resume or not folder.checkpoint_file("last").is_file() or folder.has_result():
        return ""
    try:
        done = int(folder.load_checkpoint("last", lazily=True)["epoch"]) + 1  # epochs count from 0 in the log lines
        # The sizes 0 leaves to the data are resolved in fit (config.json holds them): 0 here differs from no saved size.
        resolved = {name for name in ("tile_size", "crop_size") if getattr(config, name) == 0}
        if folder.config_file.is_file() and changed_parameters(folder.read_config(), config, also_ignore=resolved):
            return ""
    except Exception:  # a damaged last.pt or config.json: no hint here; resuming it names the problem
        return ""
    given = " ".join(f"{name.upper()}={shlex.quote(str(value))}" for name, value in (settings or {}).items()
                     if name not in ("resume", "fresh"))  # fmt: skip
    return (f"\n{folder.checkpoint_file('last')} holds {done} completed epoch(s) of {config.run}'s {config.epochs}. To continue it "
            f"(the finished runs are skipped): make run-all RESUME=true{' ' + given if given else ''}")


FIXED_INPUT_FIELDS = ("tile_size", "crop_size")  # what the baseline CNN's fixed input decides for itself


def parameters_for(run: str, parameters: dict) -> tuple[dict, str]:
    """The parameters given to every run, less those this run's model cannot take, and a line
    saying which were left out and why ("" when none). The baseline CNN takes 256x256 tiles only,
    so a `tile_size` or `crop_size` given to all runs (`make run-all TILE_SIZE=96`) reaches the other
    runs and not it; given to its notebook alone, the notebook refuses it by name."""
    fixed = {k: parameters[k] for k in FIXED_INPUT_FIELDS if k in parameters}
    if not fixed or run_config(run, **{k: v for k, v in parameters.items() if k not in fixed}).model != "baseline":
        return parameters, ""
    given = " ".join(f"{k}={v}" for k, v in fixed.items())
    return ({k: v for k, v in parameters.items() if k not in fixed},
            f"=== {run}: {given} applies to the other runs, not this one: the baseline CNN takes {BASELINE_TILE}x{BASELINE_TILE} "
            "tiles only (its first linear layer is sized for them), so it keeps its own tile and crop")  # fmt: skip


def pipeline_locks(runs_dir: Path, reports_dir: Path, purpose: str) -> list:
    """The writer locks a pipeline holds for its whole run (lib/writer_lock.py): runs_dir's (any fit
    there, in JupyterLab or another pipeline, refuses while it is held; naming those already training
    when it is refused) and reports_dir's."""
    from lib.writer_lock import WriterLock, lock_file

    return [WriterLock(lock_file(runs_dir), f"runs_dir {runs_dir}", purpose, siblings=".*.lock"),
            WriterLock(lock_file(reports_dir), f"reports_dir {reports_dir}", purpose)]  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's time limit, `timeout`, kill): stops the pipeline as Ctrl-C does."""


@dataclass
class _RunStep:
    """A run as run_all executes it: its notebook, what the notebook is given, and the fingerprints
    that decide whether it is skipped, redrawn or executed."""

    run: str
    config: object  # its RunConfig
    notebook: str
    given: dict  # the parameters its notebook gets
    training: str  # its training fingerprint
    stamp: str  # its notebook's fingerprint
    folder: object  # its RunFolder
    redraw: str  # the line saying why it is redrawn, or "" when it is not


def _prepare_run(run: str, config, per_run: tuple[dict, str], weights_file: list | None, data: str, executed_dir: Path) -> _RunStep:
    """Everything run_all does for a run before its notebook: its training and notebook fingerprints,
    whether it is redrawn, `fresh` forgetting its stamp, a run that passes for done checked whole
    (raises DamagedRunFolder, by name), and the parameters its model cannot take said."""
    from lib.training.run_folder import RunFolder

    notebook = registry.run_entry(run)["notebook"]
    # `resume` says how to reach a run's result, not what it is: `make run-all RESUME=true` after an
    # interruption skips the finished runs and continues the interrupted one.
    training = training_fingerprint(training_parameters(config, weights_file), data)
    stamp = fingerprint(notebook, {}, data, upstream=[training])
    folder = RunFolder(config.run_dir)
    redraw = ""
    if folder.has_result() and folder.training_fingerprint() == training:
        redraw = (f"=== {notebook}: training unchanged since its last run; re-executing it to redraw from "
                  f"{_shown(folder.path)} without training")  # fmt: skip
    if config.fresh:  # asked to train again from the beginning: neither skipped nor redrawn
        _stamp_file(notebook, executed_dir).unlink(missing_ok=True)
        redraw = ""
    elif folder.has_result() and (redraw or _stamp_matches(notebook, executed_dir, stamp)):
        folder.check_whole()  # skipped or redrawn, it passes for done: a damaged or partial run stops here, by name
    given, left_out = per_run
    if left_out:
        _say(left_out)
    return _RunStep(run, config, notebook, given, training, stamp, folder, redraw)


def _execute_run(step: _RunStep, executed_dir: Path, settings: dict) -> None:
    """A run's notebook executed unless unchanged (with resume=True where only its drawing changed),
    and its training fingerprint recorded once it succeeded. Raises NotebookFailed, and
    NotebookInterrupted on Ctrl-C or SIGTERM, each with the command that continues the run where its
    last.pt allows (resume_hint)."""
    try:
        if _run_if_changed(step.notebook, executed_dir, step.given, step.stamp, outputs=[step.folder.result_file], redraw=step.redraw):
            step.folder.record_training_fingerprint(step.training)
    except NotebookFailed as error:
        raise NotebookFailed(f"{error}{resume_hint(step.config, settings)}") from None
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the kernel stops with the pipeline; what it saved stays
        hint = resume_hint(step.config, settings)
        raise NotebookInterrupted(f"notebooks/{step.notebook} {_stopped_how(stop)}{hint}", continues=bool(hint)) from None


def _stopped_how(stop: BaseException) -> str:
    return "was stopped by SIGTERM (a time limit, `timeout` or kill)" if isinstance(stop, Terminated) else "was interrupted"


def _cuda_runs(configs: dict, jobs: int) -> tuple[set[str], list[str]]:
    """With JOBS > 1: the runs whose device is CUDA, and the GPUs this process sees, by the names a
    kernel's CUDA_VISIBLE_DEVICES gives them (lib/jobs.py); with JOBS=1, neither is needed."""
    if jobs == 1:
        return set(), []
    import torch

    from lib.training.speed import resolve_device

    cuda = {run for run, config in configs.items() if resolve_device(config.device).type == "cuda"}
    return cuda, visible_gpus(torch.cuda.device_count() if cuda else 0)


class _JobLogs(logging.Filter):
    """papermill's own lines (its logger) from a job's thread go to that job's log, not the console."""

    def __init__(self):
        super().__init__()
        self.logs: dict[int, TextIO] = {}  # thread ident -> its job's log

    def filter(self, record: logging.LogRecord) -> bool:
        log = self.logs.get(record.thread)
        if log is None:
            return True
        log.write(record.getMessage() + "\n")
        log.flush()
        return False


def _log_file(executed_dir: Path, notebook: str) -> Path:
    return executed_dir / f"{Path(notebook).stem}.log"


def _run_concurrently(steps: list[_RunStep], executed_dir: Path, settings: dict, jobs: int, cuda_runs: set[str], gpus: list[str]) -> None:
    """Execute the run notebooks of `steps` that changed, `jobs` at once, in registry order, each in a
    thread of its own that calls `execute` (_execute_run, as one after another) with a kernel of its
    own: its devices from a DevicePlan (lib/jobs.py; a run on CUDA waits until enough GPUs are free),
    its output in reports/executed/<notebook>.log, and a line here as it starts, finishes or fails.
    A run that fails stops nothing: those running and those not started yet run to their end, and
    then NotebookFailed names every failed run with its resume hint. Ctrl-C or SIGTERM interrupts
    every running kernel (killed after KERNEL_STOP_S), starts no other, and raises
    NotebookInterrupted naming what was interrupted, what finished and what did not start."""
    todo = [step for step in steps if not _unchanged(step.notebook, executed_dir, step.stamp, outputs=[step.folder.result_file])]
    if not todo:
        return
    from jupyter_client.connect import LocalPortCache
    from jupyter_client.provisioning import KernelProvisionerFactory

    executed_dir.mkdir(parents=True, exist_ok=True)  # the logs' folder, before the first notebook makes it
    _kernel_environment()  # set here, once, before any job's thread reads os.environ
    LocalPortCache.instance(), KernelProvisionerFactory.instance()  # process-wide singletons: made here, not raced for by threads
    at_once = min(jobs, len(todo))
    plan = DevicePlan(at_once, gpus, cpu_cores())
    _say(f"=== {len(todo)} run notebook(s) to execute, {at_once} at once (jobs={jobs}), {plan.describe()}; each one's output goes to "
         f"{_shown(_log_file(executed_dir, '<notebook>'))}, and a line here as each starts and ends; then the evaluation")  # fmt: skip
    pending, running, started, ended = deque(todo), {}, [], []  # ended: (step, error or None, seconds, whether the stop had come)
    changed, idle, stopping = threading.Condition(), threading.Event(), threading.Event()
    idle.set()
    logs = _JobLogs()

    def work(step: _RunStep, job: _Job, placement) -> None:
        began, error = time.perf_counter(), None
        try:
            job.log = open(_log_file(executed_dir, step.notebook), "w", buffering=1)
            logs.logs[threading.get_ident()] = job.log
            _thread_job.job = job
            _execute_run(step, executed_dir, settings)
        except BaseException as caught:  # reported by the main thread
            error = caught
        finally:
            _thread_job.job = None
            logs.logs.pop(threading.get_ident(), None)
            if job.log is not None:
                job.log.close()
            with changed:
                running.pop(step.run)
                plan.release(placement)
                ended.append((step, error, time.perf_counter() - began, stopping.is_set()))
                if not running:
                    idle.set()
                changed.notify_all()

    def say_ended(step: _RunStep, error: BaseException | None, seconds: float) -> None:
        executed, log = _shown(executed_dir / step.notebook), _shown(_log_file(executed_dir, step.notebook))
        if error is None:
            _say(f"=== {step.run}: done in {seconds:.0f} s ({executed}, its output in {log})")
        else:
            _say(f"=== {step.run}: FAILED after {seconds:.0f} s: {str(error).splitlines()[0] if str(error) else type(error).__name__}; "
                 f"the executed notebook is {executed}, its output {log}")  # fmt: skip

    papermill_log = logging.getLogger("papermill")
    papermill_log.addFilter(logs)
    reported = 0
    try:
        try:
            with changed:
                while pending or running:
                    while pending and len(running) < jobs:
                        step = pending[0]
                        placement = plan.place(step.run in cuda_runs, processes_of(step.config))
                        if placement is None:  # too few GPUs free: it waits, and the runs after it wait behind it (in order)
                            break
                        pending.popleft()
                        job = _Job(log=None, environment=placement.environment, stopping=stopping)
                        running[step.run] = job
                        started.append(step)
                        idle.clear()
                        processes = processes_of(step.config)
                        under = f", {processes} processes under torchrun" if processes > 1 else ""
                        _say(f"=== {step.run}: started ({len(running)} of {at_once} at once{under}) on {placement.where}: notebooks/{step.notebook} "
                             f"-> {_shown(executed_dir / step.notebook)}, its output in {_shown(_log_file(executed_dir, step.notebook))}")  # fmt: skip
                        threading.Thread(target=work, args=(step, job, placement), name=f"run {step.run}", daemon=True).start()
                    if not running:  # every GPU is free, yet the next run found too few: check_devices refuses such a run first
                        raise RuntimeError(f"{pending[0].run} cannot be placed on the {len(gpus)} GPU(s) here, which check_devices "
                                           "(lib/jobs.py) should have refused before any run started: a fault of the workbook")  # fmt: skip
                    changed.wait()
                    for step, error, seconds, _ in ended[reported:]:
                        say_ended(step, error, seconds)
                    reported = len(ended)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: every running kernel is interrupted; what they saved stays
            stopping.set()
            not_started = [step.run for step in pending]
            pending.clear()
            _stop_kernels(lambda: [manager for job in list(running.values()) for manager in job.kernels], idle)
            with changed:
                done = [step.run for step, error, *_ in ended if error is None]
                failed = {step.run: error for step, error, _, after in ended if error is not None and not after}
            interrupted = [step for step in started if step.run not in done and step.run not in failed]
            hints = {step.run: resume_hint(step.config, settings) for step in interrupted}
            said = [f"notebooks/{step.notebook} {_stopped_how(stop)}{hints[step.run]}" for step in interrupted]
            said += [f"{run} had failed before: {error}" for run, error in failed.items()]
            kept = f"; {', '.join(done)} finished and {'is' if len(done) == 1 else 'are'} kept" if done else ""
            waiting = f"; not started: {', '.join(not_started)}" if not_started else ""
            raise NotebookInterrupted(f"run-all was stopped with {len(interrupted)} run notebook(s) executing (jobs={jobs}){kept}{waiting}:\n"
                                      + "\n".join(said), continues=any(hints.values())) from None  # fmt: skip
    finally:
        papermill_log.removeFilter(logs)
    failures = [(step, error) for step, error, *_ in ended if error is not None]
    expected = (NotebookFailed, SetupError, FileNotFoundError, FileExistsError, ValueError, TypeError, FolderInUse)
    for _, error in failures:
        if not isinstance(error, expected):  # a fault of the code, not of a run: its traceback, as one after another
            raise error
    if failures:
        listed = "\n".join(f"- {step.run}: " + str(error).replace("\n", "\n  ") + f"\n  its output: {_shown(_log_file(executed_dir, step.notebook))}"
                           for step, error in failures)  # fmt: skip
        others = "; the others ran to their end and keep their results" if len(failures) < len(todo) else ""
        raise NotebookFailed(f"{len(failures)} of the {len(todo)} run notebook(s) failed{others}; the evaluation was not run (it scores "
                             f"every run):\n{listed}")  # fmt: skip


def run_all(settings: dict | None = None) -> None:
    """Execute the registry's run notebooks, then the evaluation, with `settings` (run parameters
    by field name, as text or typed, and pipeline options). Every run's config is built and checked
    before the first notebook starts, and the data set's layout is read, so a bad parameter or data
    set fails at once. runs_dir and reports_dir are locked for the whole run: another pipeline, or a
    notebook's fit, on them is refused, and this one is refused (FolderInUse, naming the holder) while
    another holds them. A finished run is checked whole (RunFolder.check_whole) before it is skipped
    or redrawn; a damaged one stops the pipeline (DamagedRunFolder, naming the file and what to do).
    The option `jobs` (N > 1) executes the run notebooks N at once (_run_concurrently); a placement
    JOBS cannot make (too few GPUs, a run pinned to cuda:N) is refused by name (ParameterError) first."""
    from lib.data import read_run_layout
    from lib.writer_lock import held_for_children

    parameters, options = checked_settings(settings or {})
    runs = _selected_runs(options)
    per_run = {run: parameters_for(run, parameters) for run in runs}
    configs = {run: run_config(run, **given) for run, (given, _) in per_run.items()}  # every parameter checked here, by name
    first = configs[runs[0]]
    print(f"=== {first.profile_reason}", flush=True)
    executed_dir = resolve(options.get("reports_dir") or REPORTS_DIR) / "executed"
    require_kernel()
    for folder, name in ((Path(first.runs_dir), "runs_dir"), (executed_dir.parent, "reports_dir"),
                         *([(Path(first.cache_dir), "cache_dir")] if first.cache_dir else [])):  # fmt: skip
        require_writable(folder, name)
    require_data(Path(first.data_dir))
    second = str(options.get("second_test") or "")
    if second and second.lower() not in ("auto", "none"):  # read now, before hours of training, not after them
        if not Path(second).exists():
            raise FileNotFoundError(f"second_test {second} does not exist (SECOND_TEST= or second_test=: a second labelled test set in any "
                                    f"supported layout; relative paths are read from {PROJECT_ROOT}; '' for none)")  # fmt: skip
        from lib.data.layouts import LayoutError
        from lib.report.evaluate import second_test_tiles

        try:
            second_test_tiles(first, second)
        except (LayoutError, ValueError) as error:
            message = str(error) if str(error).startswith("second_test=") else f"second_test={second}: {error}"
            raise ParameterError(f"{message} (SECOND_TEST= or second_test=; '' for none)") from None
    with held_for_children(pipeline_locks(Path(first.runs_dir), executed_dir.parent, "make run-all")):
        ensure_data(Path(first.data_dir))
        data = data_fingerprint(read_run_layout(first))
        weights = preflight(configs.values())
        jobs = options.get("jobs", 1)
        cuda_runs, gpus = _cuda_runs(configs, jobs)
        check_devices(configs, cuda_runs, jobs, gpus)
        steps = []
        for run, config in configs.items():
            steps.append(_prepare_run(run, config, per_run[run], weights.get(run), data, executed_dir))
            if jobs == 1:  # one after another, as each is prepared
                _execute_run(steps[-1], executed_dir, settings)
        if jobs > 1:
            _run_concurrently(steps, executed_dir, settings, jobs, cuda_runs, gpus)
        # The evaluation scores the best checkpoints: one trained again (fresh=True) with the same fingerprint is another file.
        trainings = [[step.training, _file_identity(step.folder.checkpoint_file("best"))] for step in steps]
        if runs != registry.run_names():
            print(f"=== evaluation not run: it scores the final run with all runs done, and runs={','.join(runs)} was asked for", flush=True)
            return
        evaluation_parameters = {"runs_dir": first.runs_dir, "reports_dir": str(executed_dir.parent)} | (
            {"device": parameters["device"]} if "device" in parameters else {}) | {
            name: str(options[name]) for name in EVALUATION_OPTIONS if options.get(name) is not None}  # fmt: skip
        second = second_test_identity(options.get("second_test"), first)
        # The evaluation scores the runs' best checkpoints: their training decides them, not how their notebooks draw.
        stamp = fingerprint(EVALUATION_NOTEBOOK, evaluation_parameters, data, upstream=[*trainings, second])
        evaluate_runs(executed_dir, evaluation_parameters, stamp)


# What the evaluation notebook writes into reports_dir: one evaluation's files, never mixed with another's.
EVALUATION_OUTPUTS = ("evaluation.json", "test_predictions.csv", "predictions.csv", "submission.csv")


def second_test_identity(second_test, config) -> str:
    """The data fingerprint of the second test set the evaluation will score (its `second_test`
    option resolved as the evaluation resolves it), or "none": a changed set is scored again.
    Raises FileNotFoundError naming a second test set that is not there."""
    from lib.data import read_run_layout
    from lib.report.evaluate import resolve_second_test

    where = resolve_second_test(second_test, config.data_dir)
    if where is None:
        return "none"
    if not where.exists():
        raise FileNotFoundError(f"second_test={second_test or 'auto'}: {where} does not exist (a second labelled test set in any "
                                "supported layout; SECOND_TEST='' for none)")  # fmt: skip
    return data_fingerprint(read_run_layout(dataclasses.replace(config, data_dir=str(where))))


def evaluate_runs(executed_dir: Path, parameters: dict, stamp: str) -> None:
    """The evaluation step: its notebook executed unless unchanged (`stamp`). The last evaluation's
    outputs are removed before it starts, and whatever it wrote before a stop or a failure is removed
    after, so the outputs in reports_dir are those of one finished evaluation or none. Raises
    NotebookInterrupted on Ctrl-C or SIGTERM, NotebookFailed when a cell fails."""
    outputs = [executed_dir.parent / name for name in EVALUATION_OUTPUTS]
    try:
        _run_if_changed(EVALUATION_NOTEBOOK, executed_dir, parameters, stamp, outputs=outputs[:1], replaces=outputs)
    except KeyboardInterrupt:
        removed = _remove_outputs(EVALUATION_NOTEBOOK, outputs)
        raise NotebookInterrupted(f"notebooks/{EVALUATION_NOTEBOOK} was interrupted; the runs' results are kept; "
                                  f"{_unfinished(removed)}") from None  # fmt: skip
    except NotebookFailed as error:
        raise NotebookFailed(f"{error}\n{_unfinished(_remove_outputs(EVALUATION_NOTEBOOK, outputs))}") from None


def _unfinished(removed: list[Path]) -> str:
    """What an evaluation stopped midway left: nothing, with what of it was removed."""
    return (f"what it had written ({', '.join(path.name for path in removed)}) is removed, " if removed else "") + (
        f"so {', '.join(EVALUATION_OUTPUTS)} are absent until an evaluation finishes")


def _file_identity(path: Path) -> list:
    """[size, time] of a file, or ["absent"]: tells a file rewritten since (by a notebook run by hand) from the one recorded."""
    return [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else ["absent"]


def report_inputs(runs_dir: Path, reports_dir: Path) -> list:
    """What the report reads besides its code and the registry, as recorded on disk: each registry run's
    training fingerprint and its result.json's identity (a run trained outside the pipeline has no
    fingerprint, and its result.json tells it apart), the evaluation's fingerprint and its
    evaluation.json's identity."""
    from lib.training.run_folder import RunFolder

    runs = {run: RunFolder(runs_dir / run) for run in registry.run_names()}
    evaluation_stamp = _stamp_file(EVALUATION_NOTEBOOK, reports_dir / "executed")
    return [*([run, folder.training_fingerprint(), _file_identity(folder.result_file)] for run, folder in runs.items()),
            ["evaluation", evaluation_stamp.read_text() if evaluation_stamp.is_file() else None,
             _file_identity(reports_dir / "evaluation.json")]]  # fmt: skip


def report(settings: dict | None = None) -> Path:
    """Execute the report notebook over the runs' saved results and render HTML (and PDF, where a
    Chromium is installed), unless nothing it reads changed since it last did and the reports it
    wrote are still there. Returns the HTML report's path."""
    from lib.report.render import find_chromium

    settings = dict(settings or {})
    unknown = sorted(set(settings) - {"runs_dir", "reports_dir"})
    if unknown:
        raise ParameterError(f"the report takes runs_dir and reports_dir only, not {', '.join(unknown)} (run parameters go to run-all)")
    runs_dir = resolve(convert("runs_dir", settings.pop("runs_dir")) if "runs_dir" in settings else RUNS_DIR)
    reports_dir = resolve(settings.pop("reports_dir", None) or REPORTS_DIR)
    executed_dir = reports_dir / "executed"
    parameters = {"runs_dir": str(runs_dir), "reports_dir": str(reports_dir)}
    from lib.training.run_folder import RunFolder

    for run in registry.run_names():  # the report stands on whole runs: a damaged one is named, even when nothing else changed
        if RunFolder(runs_dir / run).has_result():
            RunFolder(runs_dir / run).check_whole()
    templates = sorted(path for path in (PROJECT_ROOT / RENDERING_TEMPLATES).rglob("*") if path.is_file())
    stamp = fingerprint(REPORT_NOTEBOOK, parameters, "", upstream=[*report_inputs(runs_dir, reports_dir), _hash_files(templates)],
                        modules=RENDERING_MODULES)  # fmt: skip
    chromium = find_chromium()
    html, pdf = reports_dir / "report.html", reports_dir / "report.pdf"
    if _unchanged(REPORT_NOTEBOOK, executed_dir, stamp, outputs=[html, *([pdf] if chromium else [])]):
        print(f"=== report unchanged: {html}{f' and {pdf}' if chromium else ''} kept", flush=True)
        return html
    try:
        execute(REPORT_NOTEBOOK, executed_dir, parameters)
    except KeyboardInterrupt:
        kept = " and ".join(_shown(path) for path in (html, pdf) if path.is_file())
        raise NotebookInterrupted(f"notebooks/{REPORT_NOTEBOOK} was interrupted; "
                                  + (f"{kept} are the last report's, untouched" if kept else "no report was written")) from None
    render_report(executed_dir / REPORT_NOTEBOOK, html, pdf, chromium)
    _record_stamp(REPORT_NOTEBOOK, executed_dir, stamp)  # only once both are written: a failed rendering renders again
    return html


STALE_PDF = "report.stale.pdf"


def render_report(executed: Path, html: Path, pdf: Path, chromium: str | None) -> Path | None:
    """report.html and report.pdf from the executed report notebook, as one document. The new HTML
    replaces the old once it is whole, and the old PDF is first renamed report.stale.pdf (kept, but by
    a name that cannot pass for the new report's), so that no stop at any point (Ctrl-C, SIGTERM, a
    crash, a full disk) leaves an old PDF beside a new HTML; a new PDF removes the stale one. Returns
    the PDF written, or None where render_pdf said why there is none. Raises NotebookInterrupted on
    Ctrl-C or SIGTERM, saying what was written."""
    from lib.report.render import render_html, render_pdf

    stale, before, set_aside = pdf.with_name(STALE_PDF), _file_identity(html), pdf.is_file()
    if set_aside:
        os.replace(pdf, stale)
    try:
        render_html(executed, html)  # written whole or not at all
    except BaseException as error:
        if set_aside and _file_identity(html) == before:  # the old HTML stands: its PDF goes back beside it
            os.replace(stale, pdf)
        if isinstance(error, KeyboardInterrupt):
            raise NotebookInterrupted(f"rendering {_shown(html)} was interrupted; the last report is kept as it was") from None
        raise
    print(f"=== report written: {html}", flush=True)
    aside = f"; the last report's PDF is set aside as {_shown(stale)}" if stale.is_file() else ""
    try:
        written = render_pdf(executed, pdf, chromium)
    except KeyboardInterrupt:
        raise NotebookInterrupted(f"printing {_shown(pdf)} was interrupted: {_shown(html)} is written and the PDF not{aside}") from None
    if written:
        stale.unlink(missing_ok=True)
        print(f"=== report written: {written}", flush=True)
    elif aside:
        print(f"=== {pdf.name} not written{aside}: it is not the report in {html.name}", flush=True)
    return written


def stop_on_signals() -> tuple[list[int], dict]:
    """SIGTERM (a batch scheduler's stop, `kill`) takes Ctrl-C's path: both raise KeyboardInterrupt in
    the main thread, so every stage ends as after Ctrl-C (the kernel interrupted, outputs kept or set
    aside, one line saying so). Ctrl-C is left alone where the caller ignores it (nohup, a background
    job). Returns the signals received, in order (for the exit status), and the handlers replaced (for
    restore_signals)."""
    received: list[int] = []

    def stop(signum, frame):
        received.append(signum)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt

    replaced = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        replaced[signal.SIGINT] = signal.signal(signal.SIGINT, stop)
    return received, replaced


def restore_signals(replaced: dict) -> None:
    for signum, handler in replaced.items():
        signal.signal(signum, handler)


def again_command(command: str, settings: dict, from_make: bool) -> str:
    """The command line that runs `command` again with the same `settings` (field and option names):
    `make report EPOCHS=3` for make, `python -m lib.pipeline report epochs=3` otherwise. Repeating
    them matters: without them the runs' parameters differ and they train again."""
    if from_make:
        return " ".join(["make", command, *(f"{name.upper()}={shlex.quote(str(value))}" for name, value in settings.items())])
    return " ".join(["python -m lib.pipeline", command, *(shlex.quote(f"{name}={value}") for name, value in settings.items())])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run-all", "report") or any(a.startswith("-") and a != "--from-make" for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
    started = time.perf_counter()
    received, replaced = stop_on_signals()
    settings: dict = {}
    try:
        settings = settings_from_make(os.environ.get("MAKEFLAGS", "")) if "--from-make" in rest else {}
        settings |= parse_assignments([a for a in rest if a != "--from-make"], "python -m lib.pipeline")
        if command == "run-all":
            run_all(settings)
        else:
            if "--from-make" in rest:  # make report runs run-all first with the same variables: the report takes its folders
                folders_given = {k: v for k, v in settings.items() if k in ("runs_dir", "reports_dir")}
            else:
                folders_given = settings
            from lib.writer_lock import held_for_children

            folders = [resolve(convert("runs_dir", folders_given["runs_dir"]) if "runs_dir" in folders_given else RUNS_DIR),
                       resolve(folders_given.get("reports_dir") or REPORTS_DIR)]  # fmt: skip
            with held_for_children(pipeline_locks(*folders, "make report")):  # no run may change while the report reads it
                report(folders_given)
    except (NotebookInterrupted, KeyboardInterrupt) as error:
        stopped = str(error) if isinstance(error, NotebookInterrupted) else f"{command} was interrupted; the stages that finished are kept"
        go_on = ""
        if not getattr(error, "continues", False):  # else it ends with the command that continues the interrupted run
            again = again_command(command, settings, "--from-make" in rest)
            go_on = f"\nTo go on: {again}" if "\n" in stopped else f". To go on: {again}"
        print(f"\nINTERRUPTED: {stopped}{go_on}", file=sys.stderr, flush=True)
        return 128 + (received[-1] if received else signal.SIGINT)  # the shell's status for a process a signal stopped
    except (NotebookFailed, SetupError, FileNotFoundError, FileExistsError, ValueError, TypeError, FolderInUse) as error:
        print(f"\nERROR: {error}", file=sys.stderr, flush=True)
        return 1
    except ModuleNotFoundError as error:
        print(f"\nERROR: the Python package {error.name!r} is missing from {sys.executable}: the workbook's packages live in "
              f".venv. To mend it, {MEND_VENV} and use make (`make run-all`) or .venv/bin/python -m lib.pipeline; or "
              "install them into this Python with `pip install -r requirements.txt`", file=sys.stderr, flush=True)  # fmt: skip
        return 1
    finally:
        restore_signals(replaced)
    print(f"=== {command} finished in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
