"""The report's numbers: one table of every run, each accuracy beside its majority-class rate, a
one-class predictor named, the submission's form said, and what the quick runs show."""

import numpy as np

from lib import registry
from lib.report import results
from lib.report.facts import COMPARED_FIELDS, all_run_facts, run_facts
from lib.config import run_config
from lib.metrics import score_predictions
from lib.report.evaluate import compared_pairs
from lib.stats import compare_runs
from lib.training.run_folder import RunResult


def _result(run: str, profile: str = "quick", pretrained: bool = False, tile: int = 96) -> RunResult:
    model = "baseline" if run == "baseline" else "resnet50"
    summary = {
        "run": run, "title": run, "profile": profile, "profile_reason": f"profile {profile!r} asked for", "epochs": 3,
        "final_valid_accuracy": 0.6, "best_valid_accuracy": 0.7, "best_epoch": 1, "elapsed_s": 61.0, "train_images_per_s": 12.5,
        "n_train": 512, "n_valid": 130, "n_valid_scored": 128, "valid_majority_rate": 0.53125, "valid_class_counts": [68, 60],
        "n_labelled": 4096, "data_origin": "generated (lib/data/synthetic.py)", "data_dir": "/d", "split": "random",
        "environment": {"device": "cpu", "gpu": "none", "cpu": "2 cores"},
        "weights": {"pretrained": pretrained, "source": "/w.pth" if pretrained else "not found", "notice": "", "notes": ""},
    }  # fmt: skip
    config = {"model": model, "tile_size": 256 if model == "baseline" else tile, "crop_size": 75, "augment": model != "baseline",
              "subset": 640, "valid_fraction": 0.2, "batch_size": 32, "runs_dir": "/r", "run": run, "lr": 1e-3}  # fmt: skip
    return RunResult(config=config, history=[], summary=summary)


def _facts(runs: dict[str, RunResult], evaluation: dict | None = None):
    """The records the report writes from, computed from the (possibly just changed) results."""
    return all_run_facts(runs, evaluation)


def _evaluation(final_zero: bool) -> dict:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 90 + [1] * 10)
    runs, predicted = {}, {}
    for k, run in enumerate(registry.run_names()):
        if run == registry.final_run() and final_zero:
            predictions, scores = np.zeros(100, dtype=np.int64), np.full(100, 0.3)
        else:
            scores = np.clip(labels * 0.1 * (k + 1) + rng.uniform(0, 0.6, 100), 0, 1)
            predictions = (scores > 0.5).astype(np.int64)
        runs[run] = {"scored_on": "test", "checkpoint": f"/r/{run}/best.pt", "best_epoch": 1,
                     "metrics": {"n_test": 100, "scored_on": "test"} | score_predictions(labels, predictions, scores)}  # fmt: skip
        predicted[run] = (predictions, scores)
    # The pairs the evaluation compares, by the real paired statistics (lib/stats.py)
    names = registry.run_names()
    pairs = compared_pairs(names, {run: "baseline" if run == "baseline" else "resnet50" for run in names})
    comparisons = [{"a": a, "b": b, "on": "test", "n": 100} | compare_runs(labels, predicted[a], predicted[b]) for a, b in pairs]
    final = runs[registry.final_run()]
    submission = {"path": "/s.csv", "form": "course", "header": "# Id,Values", "values": "the predicted label, 0 or 1",
                  "why": "the original's course form", "rows": 100, "left_out": 0}  # fmt: skip
    return {"run": registry.final_run(), "n_test": 100, "scored_on": "test", "best_epoch": 1, "metrics": final["metrics"],
            "runs": runs, "submission": submission, "first_five": "Example prediction, 5 items from front : [0, 0, 0, 0, 0]",
            "comparisons": comparisons}  # fmt: skip


def test_the_summary_table_scores_every_run_beside_its_majority_rate_and_names_a_one_class_model():
    runs = {run: _result(run) for run in registry.run_names()}
    evaluation = _evaluation(final_zero=True)
    text = results.headline(_facts(runs, evaluation), evaluation)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) == 1 + len(runs), "one header and one row per run"
    assert "| best valid acc (majority rate) | accuracy | ROC-AUC | time |" in rows[0]
    final_row = next(r for r in rows if r.startswith(f"| {registry.final_run()} |"))
    assert "90.00 % **predicts class 0 for every tile** | 0.500 |" in final_row
    assert "70.00 % (53.12 %)" in final_row, "the best validation accuracy beside its split's majority rate"
    assert "scored on the 100 test tiles (90 of class 0, 10 of class 1; majority-class rate 90.00 %):" in text, "said once: the same tiles"
    assert "mean of batch accuracies" in text, "the history's metric is named"
    assert "majority-class rate 90.00 %: 90 tiles of class 0, 10 of class 1" in text and "it predicts class 0 for every tile" in text
    assert "**Submission** (100 rows" in text and "the original's course form" in text
    assert results.scores_table(_evaluation(final_zero=True)).loc[registry.final_run(), "note"] == "predicts class 0 for every tile"


def test_quick_story_reads_the_measured_scores_and_names_what_needs_more():
    runs = {run: _result(run) for run in registry.run_names()}
    evaluation = _evaluation(final_zero=False)
    story = results.quick_story(_facts(runs, evaluation), evaluation)
    # Every claim rests on a paired comparison: 100 tiles with 10 of class 1 tell these runs apart from nothing.
    assert story.startswith("**What the quick runs show:** The final ResNet50 is not told apart from the small baseline CNN (ROC-AUC ")
    assert "paired 95 % interval" in story and "beats" not in story and "improve on" not in story
    assert "resnet50-100ep, is not told apart from the shortest, resnet50-10ep" in story
    assert "ImageNet weights (`make weights`" in story and "need the full profile (a GPU)" in story
    zero_evaluation = _evaluation(final_zero=True)
    zero = results.quick_story(_facts(runs, zero_evaluation), zero_evaluation)
    assert "The final ResNet50 ranks the held-out tiles worse than the small baseline CNN (ROC-AUC \u2212" in zero, "its interval excludes 0"
    pretrained = {run: _result(run, pretrained=True) for run in registry.run_names()}
    assert "ImageNet weights" not in results.quick_story(_facts(pretrained, evaluation), evaluation)
    assert results.quick_story(_facts({run: _result(run, profile="full") for run in registry.run_names()}, evaluation), evaluation) == ""


def test_deviations_state_the_quick_design_and_a_competition_submission():
    runs = {run: _result(run) for run in registry.run_names()}
    evaluation = _evaluation(final_zero=False)
    text = results.deviations(_facts(runs, evaluation), evaluation)
    assert ("- resnet50-10ep: 96×96 px tiles, cropped to 75 px when augmenting (the original: 256×256, cropped to 200); "
            "512 training / 130 validation tiles") in text
    assert "3 epochs (the original: 10), batch 32 (the full profile's: 100)" in text and "Submission:" not in text
    assert "- baseline: 256×256 px tiles; 512 training" in text, "the original's tile: nothing to add"
    runs["baseline"].config |= {"augment": True, "crop_size": 256}
    runs["resnet50-10ep"].config["augment"] = False
    design = results.quick_design(_facts(runs))
    assert "- baseline: 256×256 px tiles, augmented by rotation and flips, not cropped (the original: not augmented); 512" in design
    assert "- resnet50-10ep: 96×96 px tiles, not augmented (the original: rotation, flips and crop); 512" in design
    runs["baseline"].config["augment"] = False
    runs["resnet50-10ep"].config["augment"] = True
    assert "learning rate" not in text and "optimizer (lr 0.001)." in text, "the full profile's rate: nothing to say"
    runs["baseline"].config["lr"] = 3e-4
    text = results.deviations(_facts(runs, evaluation), evaluation)
    assert "batch 32 (the full profile's: 64), learning rate 0.0003 (the full profile's: 0.001)" in text, "read from the run"
    assert "optimizer (lr 0.0003, where the full profile's is 0.001)." in text
    evaluation["submission"] |= {"form": "competition", "why": "the data set's own competition form, from its sample_submission.csv"}
    assert "- **Submission:** written in the data set's own competition form" in results.deviations(_facts(runs, evaluation), evaluation)
    table = results.scores_table(evaluation)
    assert list(table.index) == registry.run_names() and {"accuracy", "majority rate", "balanced accuracy", "ROC-AUC"} <= set(table.columns)
    assert "scored on" not in table.columns and "note" not in table.columns, "said once above the table; no one-class model"
    assert results.held_out_clause(evaluation) == ", on the 100 test tiles (90 of class 0, 10 of class 1)"


def test_summary_and_environment_describe_every_run_not_the_final_one_alone():
    runs = {run: _result(run) for run in registry.run_names()}
    baseline = runs["baseline"].summary
    baseline |= {"n_train": 3686, "n_valid": 410, "data_notes": ["tile_size 256: the data set's own"],
                 "environment": {"device": "cuda", "gpu": "H200", "cpu": "2 cores", "recorded_at": "2026-01-01 10:00:00 UTC"}}  # fmt: skip
    evaluation = _evaluation(final_zero=False)
    text = results.headline(_facts(runs, evaluation), evaluation)
    resnets = ", ".join(run for run in registry.run_names() if run != "baseline")
    assert f"(training / validation tiles: baseline: 3686 / 410; {resnets}: 512 / 130)." in text
    assert f"**Device:** baseline: cuda (H200); {resnets}: cpu (2 cores)." in text
    table = results.environment_table(_facts(runs))["value"]
    provenance = results.provenance_table(_facts(runs))["value"]
    assert provenance["training / validation tiles"] == f"baseline: 3686 / 410; {resnets}: 512 / 130"
    assert table["device"] == f"baseline: cuda; {resnets}: cpu" and table["cpu"] == "2 cores", "shared facts once"
    assert provenance["results saved"] == "2026-01-01 10:00:00 UTC", "when the runs that recorded a time saved their results"
    notes = results.input_notes(_facts(runs))
    assert notes == "- baseline: tile_size 256: the data set's own", "a run's own note under it; a run without notes says nothing"
    same = {run: _result(run) for run in registry.run_names()}
    assert "(training / validation tiles: 512 / 130)." in results.headline(_facts(same, evaluation), evaluation)
    assert results.input_notes(_facts(same)) == "None: every run read its tiles as they were."
    for r in same.values():
        r.summary["data_notes"] = ["subset: 640 of the 4096 labelled tiles drawn (seed 0)"]
    assert results.input_notes(_facts(same)) == "- every run: subset: 640 of the 4096 labelled tiles drawn (seed 0)", "shared: once"
    assert results.by_run({"a": 1, "b": 2, "c": 1}) == "a, c: 1; b: 2" and results.by_run({"a": 1, "b": 1}) == "1"


def test_a_runs_figures_say_what_it_did_otherwise_than_the_original():
    runs = {run: _result(run) for run in registry.run_names()}
    for run, r in runs.items():
        r.config["batch_size"] = registry.run_parameters(run, "full")["batch_size"]
    assert results.run_figures(run_facts(runs["baseline"])).startswith("Measured here: final valid acc 60.00 %")
    runs["baseline"].config |= {"augment": True, "crop_size": 256, "lr": 1e-4, "batch_size": 32}
    assert results.run_figures(run_facts(runs["baseline"])).startswith(
        "Measured here (with rotation and flips, which the original's run did not have; learning rate 0.0001, the full profile's "
        "0.001; batch 32, the full profile's 64; see Deviations): final valid acc 60.00 %")
    runs["resnet50-10ep"].config["augment"] = False
    assert results.run_figures(run_facts(runs["resnet50-10ep"])).startswith("Measured here (without the original's augmentation; see Deviations):")


def test_parameters_given_over_the_registry_are_named_and_a_broken_relation_is_not_claimed():
    runs = {run: _result(run) for run in registry.run_names()}
    for run, r in runs.items():  # as the registry's quick profile declares them
        declared = run_config(run, profile="quick")
        r.config |= {k: getattr(declared, k) for k in COMPARED_FIELDS} | {"tile_size": declared.tile_size or 256}
        r.summary["epochs"] = declared.epochs
    assert all(results.given_over_registry(f) == {} for f in _facts(runs).values())
    evaluation = _evaluation(final_zero=False)
    assert "(the registry's quick values); the ResNet50 runs keep the original's relation" in results.deviations(_facts(runs), evaluation)
    assert "so they show the direction of its story" in results.quick_story(_facts(runs, evaluation), evaluation)
    for r in runs.values():  # make run-all EPOCHS=1
        r.config["epochs"] = r.summary["epochs"] = 1
    assert results.given_over_registry(run_facts(runs["resnet50-10ep"])) == {"epochs": (3, 1)}
    text = results.deviations(_facts(runs), evaluation)
    assert "with parameters given over them: baseline: epochs 1 (registry: 12); resnet50-10ep: epochs 1 (registry: 3);" in text
    assert "the ResNet50 runs do not keep the original's relation" in text and "runs keep the original's relation" not in text
    story = results.quick_story(_facts(runs, evaluation), evaluation)
    assert "trained for 1, 1, 1 epochs, which does not keep the original's relation" in story and "so they show the direction" not in story
    assert "so they cannot show the direction of its story" in story


def test_a_notice_for_several_runs_is_said_once_naming_them():
    runs = {run: _result(run) for run in registry.run_names()}
    resnets = [run for run in registry.run_names() if run != "baseline"]
    for run in resnets:
        runs[run].summary["weights"] |= {"source": "not found at /root/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth",
                                         "notice": f"NOTICE: ImageNet weights were not found offline; {run} trains from scratch."}  # fmt: skip
    facts = _facts(runs)
    text = results.weights_notices(facts)
    assert text.count("trained ResNet50 from scratch") == 1 and "NOTICE" not in text
    assert text.startswith(f"*{results.names(resnets)} trained ResNet50 from scratch: its ImageNet weights were not found")
    assert all("not found" not in results.run_section(f) for f in facts.values()), "not repeated under each run"
    runs[resnets[0]].summary["weights"] = {"pretrained": True, "source": "/home/alice/resnet50-user.pth", "notes": "head left out",
                                           "notice": "Pretrained weights from /home/alice/resnet50-user.pth: head left out."}  # fmt: skip
    text = results.weights_notices(_facts(runs))
    assert f"*{resnets[0]} started from pretrained weights in resnet50-user.pth: head left out.*" in text
    assert f"*{results.names(resnets[1:])} trained ResNet50 from scratch" in text
    assert results.weights_notices(_facts({run: _result(run) for run in registry.run_names()})) == "", "nothing to say"


def test_the_report_names_no_path_of_the_machine():
    """Records hold absolute paths (the data set in the project and outside it, the tile cache by its
    hash, the torch cache under the home folder, run folders): the report's text names them relative
    to the project or by their own names."""
    import re
    from pathlib import Path

    import torch

    from lib.paths import PROJECT_ROOT
    from lib.report.facts import _ABSOLUTE_PATH

    torch_file = Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-0676ba61.pth"
    runs = {run: _result(run) for run in registry.run_names()}
    for k, (run, r) in enumerate(runs.items()):
        outside = k % 2 == 1  # half the runs read the project's data set, half one outside it
        data_dir = "/home/alice/slides/pcam-tiles" if outside else str(PROJECT_ROOT / "data" / "synthetic")
        r.config["runs_dir"] = str(PROJECT_ROOT / "runs")
        r.summary |= {
            "data_dir": data_dir, "data_origin": f"user data at {data_dir}" if outside else "generated (lib/data/synthetic.py)",
            "label_rule": f"labels from {data_dir}/train_labels.csv by position", "input_path": "host memory (0.01 GiB)",
            "data_notes": [f"decoded tiles: wrote {PROJECT_ROOT}/data/cache/0a1b2c3d4e5f6789-64.npy: 640 of the run's 640 tiles decoded",
                           f"images directly in {data_dir} are in no class folder and were left out: {data_dir}/x.png"],
            "environment": r.summary["environment"] | {"platform": "Linux-6.1-x86_64", "recorded_at": "2026-01-01 10:00:00 UTC"},
        }  # fmt: skip
        if r.config["model"] == "resnet50":
            notice = f"NOTICE: ImageNet weights for ResNet50 were not found offline ({torch_file}); this run trains from scratch."
            r.summary["weights"] = {"pretrained": False, "source": f"not found at {torch_file}", "notes": "", "notice": notice}
        r.history = [{"epoch": 0, "train_loss": 1.0, "train_accuracy": 0.5, "valid_loss": 1.0, "valid_accuracy": 0.5}]
    evaluation = _evaluation(final_zero=False)
    facts = _facts(runs, evaluation)
    texts = [results.headline(facts, evaluation), results.weights_notices(facts), results.deviations(facts, evaluation),
             results.input_notes(facts), results.environment_table(facts).to_string(), results.provenance_table(facts).to_string(),
             results.comparison_table(facts).to_string(), results.compared_alt(facts)]  # fmt: skip
    texts += [results.run_section(f) + results.curves_alt(f) + results.filters_alt(f, ["conv1"], "all") for f in facts.values()]
    text = "\n".join(texts)
    for machine in (str(PROJECT_ROOT), str(Path.home()), "/home/alice", torch.hub.get_dir(), "0a1b2c3d4e5f6789"):
        assert machine not in text, machine
    assert _ABSOLUTE_PATH.findall(text) == [], "no absolute path of any kind"
    assert "generated (lib/data/synthetic.py) in data/synthetic" not in text or "data/synthetic" in text
    assert "(data/synthetic)" in text and "user data at pcam-tiles (pcam-tiles)" in text, "the project's data by its path, other data by its folder"
    assert "the decoded-tile cache" in text and "the torch cache's resnet50-0676ba61.pth" in text
    assert "runs/baseline" in text and re.search(r"labels from pcam-tiles/train_labels\.csv", text)
