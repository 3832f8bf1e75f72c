"""Every notebook, executed headless through papermill with tiny parameters, in pipeline order,
then the report rendered to HTML. This is the whole product on a tiny data set."""

import json
import re

import nbformat
import papermill
import pytest

from lib import registry
from lib.paths import KERNEL_NAME, NOTEBOOKS_DIR
from lib.report import render_html

# ResNet50 trains at about 3 images/s on 2 cores: a handful of tiles keeps each run short.
TINY_RUN = {"baseline": {"epochs": 2, "batch_size": 8, "subset": 0}}
TINY_RESNET = {"epochs": 1, "batch_size": 4, "subset": 40}


@pytest.fixture(scope="module")
def executed(tiny_data, tmp_path_factory):
    """Runs every notebook once; returns the folder with runs/, reports/ and executed copies."""
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
    render_html(base / "06_report.ipynb", base / "reports" / "report.html")
    return base


def _text_outputs(path) -> str:
    notebook = nbformat.read(str(path), as_version=4)
    return "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")


def test_each_run_trained_and_logged_like_the_original(executed):
    for run in registry.run_names():
        result = json.loads((executed / "runs" / run / "result.json").read_text())
        assert 0 <= result["final_valid_accuracy"] <= 1
        text = _text_outputs(executed / registry.run_entry(run)["notebook"])
        assert re.search(r"\|\| \[0/\d+\], train_loss = [\d.]+, train_accuracy = [\d.]+, valid_loss", text)
        assert "End of training, elapsed time :" in text
    weights = json.loads((executed / "runs" / "resnet50-10ep" / "result.json").read_text())["weights"]
    if not weights["pretrained"]:  # offline with no cached file: the run must say so
        assert "NOTICE" in _text_outputs(executed / "02_resnet50_10_epochs.ipynb")


def test_evaluation_writes_the_submission_and_scores(executed):
    lines = (executed / "reports" / "submission.csv").read_text().splitlines()
    assert lines[0] == "# Id,Values" and len(lines) == 25
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(1, 25)]
    assert all(line.split(",")[1] in ("0", "1") for line in lines[1:])
    assert "Example prediction, 5 items from front : [" in _text_outputs(executed / "05_evaluation.ipynb")
    evaluation = json.loads((executed / "reports" / "evaluation.json").read_text())
    assert evaluation["run"] == registry.final_run() and evaluation["metrics"]["n_test"] == 24


def test_report_html_has_no_code_embeds_its_figures_and_loads_nothing(executed):
    html = (executed / "reports" / "report.html").read_text()
    for section in ("Summary", "The runs", "Reported by the original versus measured here", "convolution filters",
                    "Evaluation on the test tiles", "Environment and provenance", "Deviations from the original"):  # fmt: skip
        assert section in html, section
    assert "from lib" not in html and "load_all(" not in html and 'class="highlight' not in html, "code cells must not appear"
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) >= 4 + 2 + 2 and all(src.startswith("data:image/png;base64,") for src in images)
    external = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?:[^"]+)"', html)
    assert external == [], external
    assert "47.92 %" in html, "the original's reported baseline figure is read from the registry"
