"""`make run-all` and `make report`: execute the notebooks headless with papermill.

A notebook whose inputs (itself, lib/, the registry, its parameters, the data set) are unchanged
since its last successful execution is skipped. A failing notebook stops the pipeline with a
non-zero exit; its executed copy stays in reports/executed/ with the error shown, and the runs that
finished before it keep their results.

    python -m lib.pipeline run-all [--profile auto] [--data DIR] [--device auto]
    python -m lib.pipeline report
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from lib import registry
from lib.paths import DEFAULT_DATA_DIR, EXECUTED_DIR, KERNEL_NAME, NOTEBOOKS_DIR, PROJECT_ROOT, REPORTS_DIR, RUNS_DIR, resolve

EVALUATION_NOTEBOOK = "05_evaluation.ipynb"
REPORT_NOTEBOOK = "06_report.ipynb"
STAMPS_DIR = EXECUTED_DIR / ".stamps"


def _hash_files(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_fingerprint(data_dir: Path, positive_class: str = "") -> str:
    """Identity of a data set as the runs read it: its layout, every tile file's size and time (or
    zip CRC), its labels and groups. Reading the layout here also stops a bad data set before any
    notebook starts, with the layout's own error."""
    from lib.data import read_layout, source_signature

    index = read_layout(data_dir, positive_class)
    digest = hashlib.sha256(f"{data_dir}|{index.layout}|{index.label_rule}".encode())
    for source in [*index.train_paths, *index.test_paths]:
        digest.update(json.dumps(source_signature(source)).encode())
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
        raise ValueError(f"notebooks/{notebook} has no parameter(s) {', '.join(unknown)}; it accepts: {', '.join(declared)}")


def fingerprint(notebook: str, parameters: dict, data: str, resolved_profile: str, upstream: list[str] = ()) -> str:
    code = _hash_files([NOTEBOOKS_DIR / notebook, registry.REGISTRY_FILE, *Path(PROJECT_ROOT / "lib").glob("*.py")])
    record = {"code": code, "parameters": parameters, "profile": resolved_profile, "data": data, "upstream": list(upstream)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def execute(notebook: str, output_name: str, parameters: dict) -> None:
    """Run one notebook with papermill into reports/executed/; raise with a clear message on failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    check_parameters(notebook, parameters)
    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    output = EXECUTED_DIR / output_name
    print(f"\n=== executing notebooks/{notebook} -> {output}", flush=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / notebook), str(output), parameters=parameters,
            kernel_name=KERNEL_NAME, cwd=str(NOTEBOOKS_DIR), log_output=True, progress_bar=False,
        )  # fmt: skip
    except PapermillExecutionError as error:
        raise NotebookFailed(
            f"notebooks/{notebook} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
            f"The executed notebook, with the error shown, is {output}"
        ) from None
    print(f"=== {notebook} done in {time.perf_counter() - start:.0f} s", flush=True)


class NotebookFailed(RuntimeError):
    pass


def _run_if_changed(notebook: str, output_name: str, parameters: dict, stamp: str) -> bool:
    """Execute unless the last successful execution had the same fingerprint. True if it ran."""
    stamp_file = STAMPS_DIR / (output_name + ".stamp")
    if stamp_file.is_file() and stamp_file.read_text() == stamp and (EXECUTED_DIR / output_name).is_file():
        print(f"=== {output_name}: unchanged since its last successful execution, skipped", flush=True)
        return False
    stamp_file.unlink(missing_ok=True)
    execute(notebook, output_name, parameters)
    STAMPS_DIR.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)
    return True


def ensure_data(data_dir: Path) -> None:
    """Generate the embedded default set when it is the one asked for; never touch user data."""
    if data_dir == DEFAULT_DATA_DIR:
        from lib.synthetic import generate

        start = time.perf_counter()
        generate(data_dir)
        print(f"=== data: generated default set ready at {data_dir} ({time.perf_counter() - start:.0f} s)", flush=True)
    elif not data_dir.exists():
        raise FileNotFoundError(f"DATA={data_dir} does not exist")


def run_all(profile: str, data_dir: Path, device: str, run_options: dict | None = None) -> None:
    """`run_options`: training-notebook parameters given on the command line (split, positive_class,
    skip_bad_images, precision, compile, input_pipeline)."""
    from lib.config import resolve_profile

    resolved, reason = resolve_profile(profile)
    print(f"=== {reason}", flush=True)
    ensure_data(data_dir)
    run_options = run_options or {}
    data = data_fingerprint(data_dir, run_options.get("positive_class", ""))
    parameters = {"data_dir": str(data_dir), "profile": profile, "device": device, "runs_dir": str(RUNS_DIR)}
    stamps = []
    for run in registry.run_names():
        notebook = registry.run_entry(run)["notebook"]
        training_parameters = parameters | run_options
        stamp = fingerprint(notebook, training_parameters, data, resolved)
        _run_if_changed(notebook, notebook, training_parameters, stamp)
        stamps.append(stamp)
    evaluation_parameters = parameters | {"reports_dir": str(REPORTS_DIR)}
    stamp = fingerprint(EVALUATION_NOTEBOOK, evaluation_parameters, data, resolved, upstream=stamps)
    _run_if_changed(EVALUATION_NOTEBOOK, EVALUATION_NOTEBOOK, evaluation_parameters, stamp)


def report() -> Path:
    from lib.report import render_html, render_pdf

    execute(REPORT_NOTEBOOK, REPORT_NOTEBOOK, {"runs_dir": str(RUNS_DIR), "reports_dir": str(REPORTS_DIR)})
    html = render_html(EXECUTED_DIR / REPORT_NOTEBOOK, REPORTS_DIR / "report.html")
    print(f"=== report written: {html}", flush=True)
    pdf = render_pdf(EXECUTED_DIR / REPORT_NOTEBOOK, REPORTS_DIR / "report.pdf")
    if pdf:
        print(f"=== report written: {pdf}", flush=True)
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run-all", "report"])
    parser.add_argument("--profile", default="auto", help="auto (full with CUDA, else quick), full or quick")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR), help="data directory (default: the generated set)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--split", default="", help="auto (grouped when the data names groups), random or grouped")
    parser.add_argument("--positive-class", default="", help="class-folder data: the folder labelled 1")
    parser.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable image files (counted) instead of stopping")
    parser.add_argument("--precision", default="", help="auto (bf16 on CUDA, fp32 on the CPU), fp32 or bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--input-pipeline", default="", help="tensor (the workbook's) or original (files and PIL per image)")
    args = parser.parse_args(argv)
    run_options = {k: v for k, v in (("split", args.split), ("positive_class", args.positive_class),
                                     ("skip_bad_images", args.skip_bad_images), ("precision", args.precision),
                                     ("compile", args.compile), ("input_pipeline", args.input_pipeline)) if v}  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        if args.command == "run-all":
            run_all(args.profile, resolve(args.data), args.device, run_options)
        else:
            report()
    except (NotebookFailed, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"\nERROR: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"=== {args.command} finished in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
