"""A missing or broken part of the set-up says what to do: one message naming the part and the
command that mends it, no traceback, and nothing already produced touched."""

import json
import os
import subprocess
import sys

import pytest

from lib import pipeline
from lib.paths import PROJECT_ROOT


def _run(command, **env):
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=os.environ | env)


def test_an_unregistered_kernel_names_itself_and_make_venv(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "KERNEL_NAME", "histo-workbook-nowhere")
    with pytest.raises(pipeline.SetupError, match=r"kernel 'histo-workbook-nowhere' is not registered .*make venv.*ipykernel install --sys-prefix"):
        pipeline.run_all({"reports_dir": str(tmp_path)})


def test_a_kernel_whose_python_is_gone_says_so(monkeypatch, tmp_path):
    kernel = tmp_path / "kernels" / "histo-stale"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({"argv": [str(tmp_path / "old-venv" / "bin" / "python"), "-m", "ipykernel_launcher"],
                                                    "display_name": "stale", "language": "python"}))  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setattr(pipeline, "KERNEL_NAME", "histo-stale")
    with pytest.raises(pipeline.SetupError, match=r"starts .*old-venv/bin/python, which no longer exists.*make venv"):
        pipeline.require_kernel()


def test_folders_that_cannot_be_written_are_named_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "execute", lambda *a: pytest.fail("nothing may run"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(pipeline.SetupError, match=rf"runs_dir {blocker}/runs is not writable .*RUNS_DIR=/a/writable/folder"):
        pipeline.run_all({"runs_dir": str(blocker / "runs"), "reports_dir": str(tmp_path / "reports")})
    with pytest.raises(pipeline.SetupError, match=r"reports_dir .* is not writable"):
        pipeline.run_all({"runs_dir": str(tmp_path / "runs"), "reports_dir": str(blocker / "reports")})


def test_without_the_workbooks_packages_the_pipeline_says_how_to_get_them():
    # -S: a Python without site-packages, as `python3 -m lib.pipeline` outside the venv often is.
    done = _run([sys.executable, "-S", "-m", "lib.pipeline", "run-all"])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is missing from" in done.stderr and "make venv" in done.stderr and "pip install -r requirements.txt" in done.stderr


def test_a_data_path_with_spaces_reaches_the_pipeline_whole(tmp_path):
    wanted = tmp_path / "my tiles" / "set 1"
    done = _run(["make", "--no-print-directory", "run-all", f"DATA={wanted}", f"REPORTS_DIR={tmp_path / 'reports'}",
                 f"RUNS_DIR={tmp_path / 'runs'}"])  # fmt: skip
    assert done.returncode != 0 and f"data_dir {wanted} does not exist" in done.stderr and "Traceback" not in done.stderr
    wanted.mkdir(parents=True)
    done = _run(["make", "--no-print-directory", "run-all", f"DATA={wanted}", f"REPORTS_DIR={tmp_path / 'reports'}",
                 f"RUNS_DIR={tmp_path / 'runs'}"])  # fmt: skip
    assert done.returncode != 0 and f"{wanted}: is empty" in done.stderr, done.stderr  # found, read, and its layout judged
