"""Shared fixtures: a tiny generated data set in the course layout, made once per test session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Decoded-tile caches of the tests' throwaway data sets go to a temporary folder, not data/cache;
# set before lib is imported, and inherited by the notebooks' kernels.
os.environ["HISTO_TILE_CACHE"] = tempfile.mkdtemp(prefix="histo-tile-cache-")
sys.path.insert(0, str(PROJECT_ROOT))  # so that `import lib` works however pytest is started

import papermill  # noqa: E402

from lib import registry  # noqa: E402
from lib.paths import KERNEL_NAME, NOTEBOOKS_DIR  # noqa: E402
from lib.report import render_html  # noqa: E402
from lib.synthetic import SyntheticSpec, generate  # noqa: E402

TINY_SPEC = SyntheticSpec(n_train=96, n_test=24, seed=11)
SEED_EPOCHS = PROJECT_ROOT.parent / "shared" / "seed" / "reported_epochs.csv"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """96 labelled and 24 test tiles, 256x256, in the course layout, with test labels."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", TINY_SPEC, workers=2)


# ResNet50 trains at about 3 images/s on 2 cores: a handful of tiles keeps each run short.
TINY_RUN = {"baseline": {"epochs": 2, "batch_size": 8, "subset": 0}}
TINY_RESNET = {"epochs": 1, "batch_size": 4, "subset": 40}


@pytest.fixture(scope="session")
def executed_workbook(tiny_data, tmp_path_factory):
    """The whole product on the tiny set: every notebook executed headless through papermill in
    pipeline order, then the report rendered to HTML. Runs once; returns the folder with runs/, reports/ and executed copies."""
    base = tmp_path_factory.mktemp("workbook")
    common = {"data_dir": str(tiny_data), "device": "cpu"}
    for run in registry.run_names():
        params = common | {"profile": "quick", "runs_dir": str(base / "runs"), "seed": 0} | TINY_RUN.get(run, TINY_RESNET)
        notebook = registry.run_entry(run)["notebook"]
        papermill.execute_notebook(str(NOTEBOOKS_DIR / notebook), str(base / notebook), parameters=params,
                                   kernel_name=KERNEL_NAME, cwd=str(NOTEBOOKS_DIR), progress_bar=False)  # fmt: skip
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / "05_evaluation.ipynb"), str(base / "05_evaluation.ipynb"),
        parameters=common | {"runs_dir": str(base / "runs"), "reports_dir": str(base / "reports")},
        kernel_name=KERNEL_NAME, cwd=str(NOTEBOOKS_DIR), progress_bar=False,
    )  # fmt: skip
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / "06_report.ipynb"), str(base / "06_report.ipynb"),
        parameters={"runs_dir": str(base / "runs"), "reports_dir": str(base / "reports")},
        kernel_name=KERNEL_NAME, cwd=str(NOTEBOOKS_DIR), progress_bar=False,
    )  # fmt: skip
    render_html(base / "06_report.ipynb", base / "reports" / "report.html")  # the PDF has its own tests
    return base


