"""Shared fixtures: a tiny generated data set in the course layout, made once per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Decoded-tile caches of the tests' throwaway data sets go to a temporary folder, not data/cache;
# set before lib is imported, and inherited by the notebooks' kernels.
os.environ["HISTO_TILE_CACHE"] = tempfile.mkdtemp(prefix="histo-tile-cache-")
atexit.register(shutil.rmtree, os.environ["HISTO_TILE_CACHE"], ignore_errors=True)  # decoded throwaway tiles, gone with the session
sys.path.insert(0, str(PROJECT_ROOT))  # so that `import lib` works however pytest is started

from lib import pipeline  # noqa: E402
from lib.report.render import render_html  # noqa: E402
from lib.data.synthetic import OtherLabSpec, SyntheticSpec, generate, generate_other_lab  # noqa: E402

TINY_SPEC = SyntheticSpec(n_train=96, n_test=24, seed=11)
SEED_EPOCHS = PROJECT_ROOT.parent / "shared" / "seed" / "reported_epochs.csv"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """96 labelled and 24 test tiles, 256x256, in the course layout, with test labels."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", TINY_SPEC, workers=2)


@pytest.fixture(scope="session")
def resnet50_weights_file(tmp_path_factory) -> Path:
    """A ResNet50 state dict as a user would hold one (torchvision's architecture, random weights:
    nothing can be downloaded here), saved from DataParallel so its keys carry `module.`."""
    import torch
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "resnet50-user.pth"
    torch.save({f"module.{k}": v for k, v in torchvision.models.resnet50().state_dict().items()}, path)
    return path


# ResNet50 trains at about 3 images/s on 2 cores: a handful of tiles keeps each run short.
TINY_WORKBOOK = {"profile": "quick", "device": "cpu", "seed": "0", "epochs": "1", "batch_size": "4", "subset": "40"}


@pytest.fixture(scope="session")
def executed_workbook(tiny_data, resnet50_weights_file, tmp_path_factory):
    """The whole product on the tiny set, through `make run-all`'s own path (lib/pipeline.run_all:
    every parameter as text, as make gives it, with a ResNet50 weights file as WEIGHTS=, a tiny
    other-laboratory set as SECOND_TEST=, and two run notebooks at once, JOBS=2), then the
    report notebook executed and rendered to HTML. Runs once; returns the folder with runs/ and
    reports/ (executed notebooks in reports/executed/)."""
    base = tmp_path_factory.mktemp("workbook")
    # A second test set: new tissue stained as another laboratory stains, as the generated default data brings one.
    other_lab = generate_other_lab(base / "tiny-other-lab", OtherLabSpec(n_test=16, seed=11), workers=2)
    pipeline.run_all(TINY_WORKBOOK | {"data_dir": str(tiny_data), "runs_dir": str(base / "runs"), "reports_dir": str(base / "reports"),
                                      "weights_path": str(resnet50_weights_file), "second_test": str(other_lab), "jobs": "2"})  # fmt: skip
    executed = base / "reports" / "executed"
    pipeline.execute(pipeline.REPORT_NOTEBOOK, executed, {"runs_dir": str(base / "runs"), "reports_dir": str(base / "reports")})
    render_html(executed / pipeline.REPORT_NOTEBOOK, base / "reports" / "report.html")  # the PDF has its own tests
    return base
