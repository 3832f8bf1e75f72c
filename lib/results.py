"""The report's numbers: every run's saved results beside the original's reported figures.

Nothing here is typed in: measured figures come from runs/<run>/result.json and
reports/evaluation.json, reported ones from the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lib import registry
from lib.paths import resolve
from lib.run_folder import RunFolder, RunResult


def _percent(value) -> str:
    return f"{100 * value:.2f} %" if registry.is_reported(value) and value is not None else "not reported"


def _duration(seconds) -> str:
    if not registry.is_reported(seconds) or seconds is None:
        return "not reported"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def load_all(runs_dir) -> dict[str, RunResult]:
    """Every registry run's saved results; a clear error names the runs that have none."""
    folders = {run: RunFolder(resolve(runs_dir) / run) for run in registry.run_names()}
    missing = [run for run, folder in folders.items() if not folder.has_result()]
    if missing:
        raise FileNotFoundError(f"no results in {resolve(runs_dir)} for: {', '.join(missing)}; run `make run-all` first")
    return {run: folder.result() for run, folder in folders.items()}


def load_evaluation(reports_dir) -> dict:
    path = resolve(reports_dir) / "evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; execute notebooks/05_evaluation.ipynb (or `make run-all`) first")
    return json.loads(path.read_text())


def load_test_scores(reports_dir) -> tuple[list[int], list[float]] | None:
    """Known test labels and class-1 scores from test_predictions.csv, or None without labels."""
    table = pd.read_csv(resolve(reports_dir) / "test_predictions.csv")
    if "label" not in table:
        return None
    return table["label"].tolist(), table["score_class1"].tolist()


def comparison_table(results: dict[str, RunResult]) -> pd.DataFrame:
    """Reported by the original versus measured here, one row per run, each cell "original / here"."""
    rows = []
    for run, result in results.items():
        reported = registry.reported(run)
        s = result.summary
        rows.append({
            "run": run,
            "epochs": f"{registry.run_parameters(run, 'full')['epochs']} / {s['epochs']}",
            "final valid acc": f"{_percent(reported['final_valid_accuracy'])} / {_percent(s['final_valid_accuracy'])}",
            "best valid acc": f"{_percent(reported['best_valid_accuracy'])} / {_percent(s['best_valid_accuracy'])}",
            "training time": f"{_duration(reported['elapsed_s'])} / {_duration(s['elapsed_s'])}",
            "images/s here": f"{s['train_images_per_s']:.1f}",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("run")


def run_figures(result: RunResult) -> str:
    """One run's measured figures as a Markdown line."""
    s = result.summary
    return (f"Measured here: final valid acc {_percent(s['final_valid_accuracy'])}, best {_percent(s['best_valid_accuracy'])} "
            f"(epoch {s['best_epoch']}), {s['epochs']} epochs in {_duration(s['elapsed_s'])}, "
            f"{s['train_images_per_s']:.1f} training images/s on {s['environment']['device']}.")  # fmt: skip


def choose_test_tiles(evaluation: dict, reports_dir, count: int) -> pd.DataFrame:
    """Test tiles to show: with labels, wrongly classified ones first (up to half), then correct
    ones; without labels, the first ones. Columns: id, prediction, label (or NaN), wrong."""
    table = pd.read_csv(resolve(reports_dir) / "test_predictions.csv")
    if "label" not in table:
        chosen = table.head(count).assign(label=float("nan"), wrong=False)
    else:
        table["wrong"] = table["prediction"] != table["label"]
        wrong = table[table["wrong"]].head(count // 2)
        chosen = pd.concat([wrong, table[~table["wrong"]].head(count - len(wrong))])
    return chosen.reset_index(drop=True)


def decode_test_tiles(evaluation: dict, ids: list) -> "torch.Tensor":
    """Decoded tiles (N, 3, H, W) uint8 for the given evaluated ids: test tiles, or the labelled
    tiles (ids are their paths) when the data set had no test set."""
    import dataclasses

    from lib.data import decode_tiles, read_run_layout

    config = RunFolder(evaluation["run_dir"]).run_config()
    index = read_run_layout(dataclasses.replace(config, data_dir=evaluation["data_dir"]))
    if index.test_paths:
        by_id = dict(zip(index.test_ids, index.test_paths))
    else:
        by_id = {index.name_of(p): p for p in index.train_paths}
    tiles, _, _ = decode_tiles([by_id[str(i)] for i in ids], desc="decoding the tiles shown", cache_dir=None, multi_page=config.multi_page)
    return tiles


def tile_captions(chosen: pd.DataFrame) -> list[str]:
    return [
        f"#{r.id}: pred {r.prediction}" + ("" if pd.isna(r.label) else f", true {int(r.label)}")
        for r in chosen.itertuples()
    ]


def submission_head(reports_dir, lines: int = 6) -> str:
    path = resolve(reports_dir) / "submission.csv"
    if not path.is_file():
        return f"No submission file: the data set has no test tiles to predict ({path} not written)."
    rows = path.read_text().splitlines(keepends=True)
    return f"{path.name} ({len(rows) - 1} rows), first lines:\n\n```\n{''.join(rows[:lines])}```"


def headline(results: dict[str, RunResult], evaluation: dict) -> str:
    """The summary a reader sees first, as Markdown."""
    final = results[registry.final_run()].summary
    profiles = sorted({r.summary["profile"] for r in results.values()})
    lines = [
        f"**Data set:** {final['data_origin']}, {final['n_labelled']} labelled tiles "
        f"({final['n_train']} training / {final['n_valid']} validation used by the final run).",
        f"**Profile:** {', '.join(profiles)} ({final['profile_reason']}).",
        f"**Device:** {final['environment']['device']} ({final['environment']['gpu'] if final['environment']['gpu'] != 'none' else final['environment']['cpu']}).",
        "",
        "| run | final valid acc | best valid acc | epochs | time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run, result in results.items():
        s = result.summary
        lines.append(f"| {run} | {_percent(s['final_valid_accuracy'])} | {_percent(s['best_valid_accuracy'])} | {s['epochs']} | {_duration(s['elapsed_s'])} |")
    metrics = evaluation.get("metrics")
    lines.append("")
    scored_on = evaluation.get("scored_on", "test")
    if metrics and scored_on != "test":
        auc = f"{metrics['roc_auc']:.3f}" if metrics["roc_auc"] is not None else "undefined (one class)"
        lines.append(f"**No test set; scored on the {scored_on}:** accuracy {_percent(metrics['accuracy'])}, ROC-AUC {auc}.")
    elif metrics:
        auc = f"{metrics['roc_auc']:.3f}" if metrics["roc_auc"] is not None else "undefined (one class)"
        lines.append(f"**Test set** ({metrics['n_test']} tiles, {evaluation['run']}'s best checkpoint): accuracy "
                     f"{_percent(metrics['accuracy'])}, ROC-AUC {auc}.")  # fmt: skip
    else:
        lines.append(f"**Test set** ({evaluation['n_test']} tiles): no test labels, so predictions only (the submission file).")
    return "\n".join(lines)


def deviations(results: dict[str, RunResult]) -> str:
    """What differs from the original, as Markdown, read from what the runs actually did."""
    final = results[registry.final_run()].summary
    items = []
    resnets = {run: r for run, r in results.items() if r.config["model"] == "resnet50"}
    scratch = [run for run, r in resnets.items() if not r.summary["weights"]["pretrained"]]
    if scratch:
        items.append(f"- **No ImageNet weights:** {', '.join(scratch)} trained ResNet50 from scratch "
                     f"({results[scratch[0]].summary['weights']['source']}); the original fine-tuned ImageNet weights.")  # fmt: skip
    pretrained = [run for run in resnets if run not in scratch]
    if pretrained:
        files = sorted({resnets[run].summary["weights"]["source"] for run in pretrained})
        notes = sorted({resnets[run].summary["weights"].get("notes", "") for run in pretrained} - {""})
        items.append(f"- **Pretrained weights:** {', '.join(pretrained)} started from {', '.join(files)}"
                     + (f" ({'; '.join(notes)})" if notes else "") + "; the original started from torchvision's ImageNet weights.")  # fmt: skip
    if "generated" in final["data_origin"]:
        items.append("- **Data:** the course data is not public; these runs use the generated H&E-like tile set "
                     "(lib/synthetic.py), in the course layout and sizes. Its figures are not comparable one to one with the original's.")  # fmt: skip
    else:
        items.append(f"- **Data:** {final['data_origin']}.")
    short = [run for run, r in results.items() if r.summary["epochs"] != registry.run_parameters(run, "full")["epochs"] or r.config["subset"]]
    if short:
        items.append(f"- **Profile `{final['profile']}`:** {', '.join(short)} ran with fewer epochs and/or a subset of the tiles "
                     "(the registry's quick values) so that everything runs on a CPU; their accuracies are not the original's experiment.")  # fmt: skip
    items.append("- **Baseline optimizer:** the original does not state it; the workbook uses Adam (lr 1e-3) as in the later runs.")
    items.append("- **Predictions:** with the kept 1000-way head, accuracy and predictions take the arg-max over the two "
                 "label outputs; the original took it over all 1000, which can name a class that is neither 0 nor 1.")  # fmt: skip
    return "\n".join(items)


def environment_table(results: dict[str, RunResult]) -> pd.DataFrame:
    final = results[registry.final_run()].summary
    record = dict(final["environment"])
    record["data set"] = f"{final['data_origin']} ({final['data_dir']})"
    record["layout"] = f"{final.get('data_layout', 'course')}; {final.get('label_rule', '')}"
    record["split"] = f"{final['split']}; {final['n_train']} training / {final['n_valid']} validation tiles"
    record["input path"] = final.get("input_path", "")
    record["arithmetic"] = final.get("speed_settings", "fp32")
    for k, note in enumerate(final.get("data_notes", [])):
        record[f"input note {k + 1}"] = note
    record["profile"] = final["profile"]
    record["pretrained weights"] = ", ".join(
        f"{run}: {'yes, ' + r.summary['weights']['source'] if r.summary['weights']['pretrained'] else 'no (from scratch)'}"
        for run, r in results.items() if r.config["model"] == "resnet50"
    )  # fmt: skip
    return pd.DataFrame({"value": record})
