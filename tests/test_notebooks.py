"""Every notebook, executed headless through papermill with tiny parameters, in pipeline order,
then the report rendered to HTML. This is the whole product on a tiny data set."""

import json
import re

import nbformat

from lib import registry


def _text_outputs(path) -> str:
    notebook = nbformat.read(str(path), as_version=4)
    return "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")


def _executed(base, notebook):
    return base / "reports" / "executed" / notebook


def test_each_run_trained_and_logged_like_the_original(executed_workbook):
    for run in registry.run_names():
        result = json.loads((executed_workbook / "runs" / run / "result.json").read_text())
        assert 0 <= result["final_valid_accuracy"] <= 1
        text = _text_outputs(_executed(executed_workbook, registry.run_entry(run)["notebook"]))
        assert re.search(r"\|\| \[0/\d+\], train_loss = [\d.]+, train_accuracy = [\d.]+, valid_loss", text)
        assert "End of training, elapsed time :" in text
        assert "beside a majority-class rate of" in text and "Predicting one class for every tile reaches these accuracies" in text
        assert 0.5 <= result["valid_majority_rate"] <= 1 and sum(result["valid_class_counts"]) == result["n_valid_scored"]
        assert {"config.json", "split.csv", "history.json", "initial.pt", "best.pt", "last.pt"} <= {p.name for p in (executed_workbook / "runs" / run).iterdir()}


def test_a_weights_file_given_to_make_reaches_every_resnet50_run_and_the_report(executed_workbook, resnet50_weights_file):
    for run in registry.run_names():
        result = json.loads((executed_workbook / "runs" / run / "result.json").read_text())
        if json.loads((executed_workbook / "runs" / run / "config.json").read_text())["model"] != "resnet50":
            continue
        assert result["weights"]["pretrained"] is True and result["weights"]["source"] == str(resnet50_weights_file), run
        assert "'module.' prefix of every key removed" in result["weights"]["notes"]
        assert "NOTICE" not in _text_outputs(_executed(executed_workbook, registry.run_entry(run)["notebook"]))
    html = (executed_workbook / "reports" / "report.html").read_text()
    assert f"resnet50-stain: yes, {resnet50_weights_file.name}" in html, "the provenance table names the file"
    assert str(resnet50_weights_file.parent) not in html, "by its name, not where it lies on this machine"
    assert "Pretrained weights:" in html and "No ImageNet weights" not in html, "the deviations say so"


def test_evaluation_writes_the_submission_and_scores(executed_workbook):
    lines = (executed_workbook / "reports" / "submission.csv").read_text().splitlines()
    assert lines[0] == "# Id,Values" and len(lines) == 25
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(1, 25)]
    assert all(line.split(",")[1] in ("0", "1") for line in lines[1:])
    assert "Example prediction, 5 items from front : [" in _text_outputs(_executed(executed_workbook, "06_evaluation.ipynb"))
    evaluation = json.loads((executed_workbook / "reports" / "evaluation.json").read_text())
    assert evaluation["run"] == registry.final_run() and evaluation["metrics"]["n_test"] == 24
    assert evaluation["submission"]["form"] == "course" and evaluation["submission"]["rows"] == 24
    # Every run's best checkpoint is scored on the same test tiles, beside their majority-class rate.
    assert list(evaluation["runs"]) == registry.run_names()
    for run, scored in evaluation["runs"].items():
        metrics = scored["metrics"]
        assert scored["scored_on"] == "test" and metrics["n"] == 24 and sum(metrics["class_counts"]) == 24, run
        assert 0.5 <= metrics["majority_rate"] <= 1 and 0 <= metrics["balanced_accuracy"] <= 1, run
    text = _text_outputs(_executed(executed_workbook, "06_evaluation.ipynb"))
    assert all(f"{run}, best checkpoint" in text for run in registry.run_names()) and "majority-class rate" in text


def test_evaluation_gives_intervals_comparisons_the_second_set_and_test_time_augmentation(executed_workbook):
    evaluation = json.loads((executed_workbook / "reports" / "evaluation.json").read_text())
    assert evaluation["second_test"]["n"] == 16 and "tiny-other-lab" in evaluation["second_test"]["scored_on"]
    for run, scored in evaluation["runs"].items():
        for metrics in (scored["metrics"], scored["second"]["metrics"]):
            for name in ("accuracy", "balanced_accuracy", "roc_auc"):
                interval = metrics["intervals"][name]
                assert interval is None or interval["low"] <= metrics[name] <= interval["high"], (run, name)
            assert "2,000 resamples" in metrics["intervals"]["method"]
        assert scored["second"]["n"] == 16 and scored["calibration"]["n"] == 24
        assert (scored["tta"] is not None) == (run == registry.final_run()), "TTA=final: the final run alone"
    pairs = {(c["a"], c["b"], c["on"]) for c in evaluation["comparisons"]}
    assert ("resnet50-150ep", "resnet50-stain", "second") in pairs and ("baseline", "resnet50-stain", "test") in pairs
    assert ("resnet50-150ep", "resnet50-150ep with test-time augmentation", "test") in pairs
    assert all("told_apart" in c["accuracy"] and "p_value" in c["accuracy"]["mcnemar"] for c in evaluation["comparisons"])
    rows = (executed_workbook / "reports" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "run,set,id,label,prediction,score_class1,tta_score_class1"
    assert len(rows) == 1 + len(registry.run_names()) * (24 + 16)
    text = _text_outputs(_executed(executed_workbook, "06_evaluation.ipynb"))
    assert "against resnet50-150ep" in text and ("not told apart" in text or "more accurate" in text or "less accurate" in text)


def test_report_html_has_no_code_embeds_its_figures_and_loads_nothing(executed_workbook):
    html = (executed_workbook / "reports" / "report.html").read_text()
    for section in ("Summary", "The runs", "Reported by the original versus measured here", "Convolution filters before and after training",
                    "Feature maps of one test tile through the baseline", "Grad-CAM of the final ResNet50",
                    "Evaluation on the test tiles", "submission.csv (24 rows), first lines", "# Id,Values",
                    "All runs compared", "Appendix", "Environment", "Provenance", "Input notes", "workbook_commit",
                    "Deviations from the original", "Are the differences real?", "Another laboratory's stain",
                    "McNemar's exact p", "expected calibration error", "Test-time augmentation", "Beyond the original"):  # fmt: skip
        assert section in html, section
    assert "from lib" not in html and "load_all(" not in html and 'class="highlight' not in html, "code cells must not appear"
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    # curves per run, all runs compared, two laboratories, filters of two runs in one, feature maps, Grad-CAM, confusion matrix
    # beside ROC, reliability diagram, tile grid
    assert len(images) >= 5 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 and all(src.startswith("data:image/png;base64,") for src in images)
    external = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?:[^"]+)"', html)
    assert external == [], external
    assert "47.92 %" in html, "the original's reported baseline figure is read from the registry"
    for words in ("balanced accuracy", "majority rate", "majority-class rate", "mean of batch accuracies", "What the quick runs show",
                  "course form", "Profile <code>quick</code>"):  # fmt: skip
        assert words in html, words


def test_report_names_nothing_of_the_machine_and_describes_every_figure(executed_workbook, tiny_data, resnet50_weights_file, tmp_path, caplog):
    """The runs and data of the tiny workbook lie in temporary folders and the tile cache under
    HISTO_TILE_CACHE: the report names them relative to the project or by their own names. Every
    figure carries alt text saying what it shows, so nbconvert has none to make up."""
    import logging
    import os
    from pathlib import Path

    from lib.paths import PROJECT_ROOT
    from lib.report.render import render_html

    html = (executed_workbook / "reports" / "report.html").read_text()
    for path in (executed_workbook, tiny_data, resnet50_weights_file.parent, os.environ["HISTO_TILE_CACHE"], PROJECT_ROOT, Path.home()):
        assert f"{path}/" not in html and f"{path}<" not in html and f"{path} " not in html, path
    assert not re.search(r"[0-9a-f]{8,}-\d+\.npy", html), "no cache file by its hash"
    images = re.findall(r"<img\b[^>]*>", html)
    assert images and all(re.search(r'\salt="[^"]{20,}"', image) for image in images), [image[-200:] for image in images]
    assert "No description has been provided" not in html
    assert "Training and validation loss and accuracy per epoch of resnet50-10ep, 1 epoch (epoch 0)" in html
    with caplog.at_level(logging.WARNING):
        render_html(executed_workbook / "reports" / "executed" / "07_report.ipynb", tmp_path / "report.html")
    assert "Alternative text is missing" not in caplog.text
