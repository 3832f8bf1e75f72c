"""The report's numbers: every run's saved results beside the original's reported figures.

Nothing here is typed in: measured figures come from runs/<run>/result.json and
reports/evaluation.json, reported ones from the registry. Every accuracy shown stands beside the
majority-class rate of the same tiles (what predicting one class for every tile would score).
"""

from __future__ import annotations

import json

import pandas as pd

from lib import registry
from lib.config import ORIGINAL_CROP, run_config
from lib.metrics import scores_text
from lib.paths import resolve
from lib.training.run_folder import RunFolder, RunResult


NBSP = "\u00a0"  # a space a table cell does not break at ("3 min 30 s" on one line)


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
    """Reported by the original versus measured here, one row per run, each cell "original / here";
    the majority-class rate of the validation tiles scored here beside them (the original reported none)."""
    rows = []
    for run, result in results.items():
        reported = registry.reported(run)
        s = result.summary
        rows.append({
            "run": run,
            "epochs": f"{registry.run_parameters(run, 'full')['epochs']} / {s['epochs']}",
            "final valid acc": f"{_percent(reported['final_valid_accuracy'])} / {_percent(s['final_valid_accuracy'])}",
            "best valid acc": f"{_percent(reported['best_valid_accuracy'])} / {_percent(s['best_valid_accuracy'])}",
            "majority rate of the validation tiles here": _percent(s.get("valid_majority_rate")),
            "training time": f"{_duration(reported['elapsed_s'])} / {_duration(s['elapsed_s'])}",
            "images/s here": f"{s['train_images_per_s']:.1f}",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("run")


def _floor(s: dict) -> str:
    """The majority-class rate of a run's validation tiles, as a clause (older results lack it)."""
    if s.get("valid_majority_rate") is None:
        return ""
    return f" (majority-class rate of its {s['n_valid_scored']} validation tiles: {_percent(s['valid_majority_rate'])})"


def run_figures(result: RunResult, evaluation: dict | None = None) -> str:
    """One run's measured figures as a Markdown line: validation accuracies beside their
    majority-class rate, time and speed, and (with `evaluation`) its best checkpoint's scores."""
    s, c = result.summary, result.config
    full = registry.run_parameters(c["run"], "full")
    changes = []  # the quick design's (or the user's) choices that the section's text, the original's story, does not say
    if c["augment"] != full["augment"]:
        changes.append("with rotation and flips, which the original's run did not have" if c["augment"] else "without the original's augmentation")
    if c["lr"] != _full_profile_lr(c):
        changes.append(f"learning rate {c['lr']:g}, the full profile's {_full_profile_lr(c):g}")
    if c["batch_size"] != full["batch_size"]:
        changes.append(f"batch {c['batch_size']}, the full profile's {full['batch_size']}")
    text = f"Measured here ({'; '.join(changes)}; see Deviations): final valid acc" if changes else "Measured here: final valid acc"
    text += (f" {_percent(s['final_valid_accuracy'])}, best {_percent(s['best_valid_accuracy'])} "
             f"(epoch {s['best_epoch']}){_floor(s)}, {s['epochs']} epochs in {_duration(s['elapsed_s'])}, "
             f"{s['train_images_per_s']:.1f} training images/s on {s['environment']['device']}.")  # fmt: skip
    scored = (evaluation or {}).get("runs", {}).get(s["run"])
    if scored and scored["metrics"]:
        where = "test tiles" if scored["scored_on"] == "test" else "validation split (no labelled test set)"
        text += f" Best checkpoint on the {where}: {scores_text(scored['metrics'])}."
    return text


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


def decode_test_tiles(evaluation: dict, ids: list, size: int | None = None) -> "torch.Tensor":
    """Decoded tiles (N, 3, size, size) uint8 for the given evaluated ids: test tiles, or the labelled
    tiles (ids are their paths) when the data set had no test set. `size`: the course's 256 by
    default; a run's own tile_size to show a network what it saw."""
    import dataclasses

    from lib.data import TILE_SIZE, decode_tiles, read_run_layout

    config = RunFolder(evaluation["run_dir"]).run_config()
    index = read_run_layout(dataclasses.replace(config, data_dir=evaluation["data_dir"]))
    if index.test_paths:
        by_id = dict(zip(index.test_ids, index.test_paths))
    else:
        by_id = {index.name_of(p): p for p in index.train_paths}
    tiles, _, _ = decode_tiles([by_id[str(i)] for i in ids], size or TILE_SIZE, desc="decoding the tiles shown", cache_dir=None,
                               multi_page=config.multi_page, non_square=config.non_square)  # fmt: skip
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


def _auc(value) -> str:
    return f"{value:.3f}" if value is not None else "undefined"


def _run_scores(evaluation: dict) -> dict[str, dict]:
    """{run: {"scored_on", "checkpoint", "best_epoch", "metrics"}} from evaluation.json; an older
    file without per-run scores gives the final run's alone."""
    if evaluation.get("runs"):
        return evaluation["runs"]
    if evaluation.get("metrics"):
        return {evaluation["run"]: {k: evaluation.get(k) for k in ("scored_on", "checkpoint", "best_epoch", "metrics")}}
    return {}


def _same_tiles(scores: dict[str, dict]) -> str | None:
    """"the 512 test tiles (265 of class 0, 247 of class 1)" when every run was scored on the same
    test tiles; None when they differ (each run's own validation split)."""
    scored = [s for s in scores.values() if s.get("metrics")]
    if not scored or any(s["scored_on"] != "test" for s in scored):
        return None
    counts = {tuple(s["metrics"]["class_counts"]) for s in scored}
    if len(counts) != 1:
        return None
    n0, n1 = counts.pop()
    return f"the {n0 + n1} test tiles ({n0} of class 0, {n1} of class 1)"


def runs_table(results: dict[str, RunResult], evaluation: dict) -> str:
    """The report's one table of every run, as Markdown: its validation accuracy (the original's
    metric) beside that split's majority rate, and its best checkpoint's accuracy, balanced accuracy
    and ROC-AUC on the held-out tiles beside their majority-class rate, time and speed."""
    scores = _run_scores(evaluation)
    same = _same_tiles(scores)
    where = f"on {same}" if same else "on the tiles named in each row"
    lines = [f"Every run's best checkpoint scored {where}:", "",
             "| run | epochs | best valid acc (majority rate) | accuracy | balanced accuracy | ROC-AUC | majority rate | time | images/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for run, result in results.items():
        s, m = result.summary, (scores.get(run) or {}).get("metrics")
        valid = _percent(s["best_valid_accuracy"]) + (f" ({_percent(s['valid_majority_rate'])})" if s.get("valid_majority_rate") is not None else "")
        if m:
            accuracy = _percent(m["accuracy"]) + (f" **{m['one_class']}**" if m["one_class"] else "")
            if not same:
                where = "test" if scores[run]["scored_on"] == "test" else "validation split"
                accuracy += f" ({where}, {m['n']} tiles: {m['class_counts'][0]} / {m['class_counts'][1]})"
            cells = [accuracy, _percent(m["balanced_accuracy"]), _auc(m["roc_auc"]), _percent(m["majority_rate"])]
        else:
            cells = ["not scored (no labels)", "", "", ""]
        lines.append(f"| {run} | {s['epochs']} | {valid} | " + " | ".join(cells) + f" | {_duration(s['elapsed_s']).replace(' ', NBSP)} | {s['train_images_per_s']:.1f} |")
    lines += ["", "*Valid acc* is the original's metric, the mean of batch accuracies over the full batches of the validation split "
                  "(the history keeps it so). *Majority rate*: the accuracy of predicting the more frequent class for every one of the "
                  "same tiles. *Balanced accuracy*: the mean of the two classes' recalls (0.5 for any one-class predictor)."]  # fmt: skip
    return "\n".join(lines)


def scores_table(evaluation: dict) -> pd.DataFrame:
    """Every run's best checkpoint on the held-out tiles, one row per run: what it was scored on,
    the tiles per class, accuracy beside the majority-class rate, balanced accuracy, ROC-AUC, the
    predictions per class, and a one-class predictor named."""
    rows = []
    for run, scored in _run_scores(evaluation).items():
        m = scored["metrics"]
        if not m:
            continue
        rows.append({
            "run": run,
            "scored on": "test tiles" if scored["scored_on"] == "test" else scored["scored_on"],
            "tiles (class 0 / 1)": f"{m['n']} ({m['class_counts'][0]} / {m['class_counts'][1]})",
            "accuracy": _percent(m["accuracy"]),
            "majority rate": _percent(m["majority_rate"]),
            "balanced accuracy": _percent(m["balanced_accuracy"]),
            "ROC-AUC": _auc(m["roc_auc"]),
            "predicted (0 / 1)": f"{m['predicted_counts'][0]} / {m['predicted_counts'][1]}",
            "note": m["one_class"],
        })  # fmt: skip
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).set_index("run")
    if _same_tiles(_run_scores(evaluation)):  # said once, above the table
        table = table.drop(columns=["scored on", "tiles (class 0 / 1)"])
    if not table["note"].any():
        table = table.drop(columns=["note"])
    return table


def submission_note(evaluation: dict) -> str:
    """Which submission form was written and why, as Markdown."""
    submission = evaluation.get("submission")
    if not submission:
        return "No submission file was written: the data set has no test tiles."
    left_out = f" {submission['left_out']} test tile(s) that the sample does not list were left out." if submission.get("left_out") else ""
    return (f"**Submission** ({submission['rows']} rows, from {evaluation['run']}'s best checkpoint): written in {submission['why']}; "
            f"each row holds {submission['values']}.{left_out}")  # fmt: skip


COMPARED_FIELDS = ("epochs", "batch_size", "lr", "subset", "scheduler", "augment", "valid_fraction", "seed", "model", "head", "weights")


def given_over_registry(result: RunResult) -> dict[str, tuple]:
    """The parameters a run trained with that differ from its registry profile's, {name: (registry's,
    used)}: what a user set (`make run-all EPOCHS=1`) over the registry. Tile and crop sizes count
    only where the registry fixes them (0 means "from the data", resolved when the run starts)."""
    c = result.config
    declared = run_config(c["run"], profile=result.summary["profile"])
    differ = {k: (getattr(declared, k), c[k]) for k in COMPARED_FIELDS if k in c and getattr(declared, k) != c[k]}
    for k in ("tile_size", "crop_size"):
        if getattr(declared, k) and getattr(declared, k) != c.get(k):
            differ[k] = (getattr(declared, k), c.get(k))
    return differ


def keeps_relation(results: dict[str, RunResult]) -> bool:
    """True when the ResNet50 runs' epochs still rise in registry order (the original's 10, 100, 150:
    the shortest; longer; the longest), which the quick story and the deviations rely on."""
    epochs = [r.summary["epochs"] for r in results.values() if r.config["model"] == "resnet50"]
    return all(a < b for a, b in zip(epochs, epochs[1:]))


def quick_story(results: dict[str, RunResult], evaluation: dict) -> str:
    """For the quick profile, what its runs show of the original's story and what needs the full
    profile or ImageNet weights, from the measured scores. Empty for the full profile."""
    if not any(r.summary["profile"] == "quick" for r in results.values()):
        return ""
    scores = _run_scores(evaluation)

    def auc(run):
        m = (scores.get(run) or {}).get("metrics") or {}
        return m.get("roc_auc")

    final, runs = registry.final_run(), list(results)
    resnets = [run for run in runs if results[run].config["model"] == "resnet50"]
    scratch = any(not results[run].summary["weights"]["pretrained"] for run in resnets)
    shown = []
    baseline = next((run for run in runs if results[run].config["model"] == "baseline"), None)
    if baseline and auc(baseline) is not None and auc(final) is not None:
        verb = "beats" if auc(final) > auc(baseline) + 0.01 else "does not beat"
        shown.append(f"the final ResNet50 {verb} the small baseline CNN on the held-out tiles (ROC-AUC {auc(final):.3f} against {auc(baseline):.3f})")
    if resnets and resnets[0] != final and auc(resnets[0]) is not None and auc(final) is not None:
        verb = "improve on" if auc(final) > auc(resnets[0]) + 0.01 else "do not improve on"
        shown.append(f"the longer ResNet50 runs {verb} the shortest ({resnets[0]}: {auc(resnets[0]):.3f}, {final}: {auc(final):.3f})")
    epochs = ", ".join(str(results[run].summary["epochs"]) for run in resnets)
    needs = "the full profile (a GPU)" + (" and ImageNet weights (`make weights`; these ResNet50 runs started from scratch)" if scratch else "")
    shown_text = ("; ".join(shown) + ". ") if shown else ""
    shown_text = shown_text[:1].upper() + shown_text[1:]
    if not keeps_relation(results):
        return (f"**What the quick runs show:** {shown_text}Their ResNet50 runs trained for {epochs} epochs, which does not keep the "
                f"original's relation (10, 100 and 150: the shortest; longer; the longest), so they cannot show the direction of its "
                f"story; its figures need {needs}.")  # fmt: skip
    return (f"**What the quick runs show:** {shown_text}They are the original's four runs scaled down "
            f"(ResNet50 for {epochs} epochs in place of 10, 100 and 150), so they show the direction of its story, not its figures: "
            f"the original's 96-100 % validation accuracy, run 2's swings between epochs and their damping by ReduceLROnPlateau "
            f"(whose patience, 10 epochs, is longer than these runs) need {needs}.")  # fmt: skip


def headline(results: dict[str, RunResult], evaluation: dict) -> str:
    """The summary a reader sees first, as Markdown: data, profile, device, the one table of every
    run (runs_table), the final run's held-out scores and its submission, and for the quick profile
    what its runs show (quick_story)."""
    final = results[registry.final_run()].summary
    profiles = sorted({r.summary["profile"] for r in results.values()})
    split = by_run({run: f"{r.summary['n_train']} / {r.summary['n_valid']}" for run, r in results.items()})
    device = by_run({run: _device(r.summary["environment"]) for run, r in results.items()})
    lines = [
        f"**Data set:** {final['data_origin']}, {final['n_labelled']} labelled tiles (training / validation tiles: {split}).",
        f"**Profile:** {', '.join(profiles)} ({final['profile_reason']}).",
        f"**Device:** {device}.",
        "",
        runs_table(results, evaluation),
        "",
    ]
    metrics = evaluation.get("metrics")
    scored_on = evaluation.get("scored_on", "test")
    if metrics and scored_on != "test":
        lines.append(f"**No test set; {evaluation['run']} scored on the {scored_on}:** {scores_text(metrics)}.")
    elif metrics:
        lines.append(f"**Test set** ({metrics['n_test']} tiles, {evaluation['run']}'s best checkpoint, the submission's): {scores_text(metrics)}.")
    else:
        lines.append(f"**Test set** ({evaluation['n_test']} tiles): no test labels, so the submission file is the result; "
                     "the table scores each run on its own validation split.")  # fmt: skip
    lines += ["", submission_note(evaluation)]
    story = quick_story(results, evaluation)
    if story:
        lines += ["", story]
    return "\n".join(lines)


def _full_profile_lr(config: dict) -> float:
    """The learning rate the run's full profile declares (the registry's), to set beside the one it used."""
    return registry.run_parameters(config["run"], "full").get("lr", config["lr"])


def _lr_change(config: dict) -> str:
    """", learning rate X (the full profile's: Y)" when the run trained at another rate than its full
    profile's (a quick design's or the user's), else ""."""
    full = _full_profile_lr(config)
    return f", learning rate {config['lr']:g} (the full profile's: {full:g})" if config["lr"] != full else ""


def quick_design(results: dict[str, RunResult]) -> str:
    """The sizes each run actually used, in a sentence per run (Markdown list items)."""
    crop_of, tile_of = ORIGINAL_CROP
    items = []
    for run, r in results.items():
        c, s = r.config, r.summary
        full = registry.run_parameters(run, "full")
        whole = c["augment"] and c["crop_size"] >= c["tile_size"]
        crop = ", augmented by rotation and flips, not cropped" if whole else f", cropped to {c['crop_size']} px when augmenting" if c["augment"] else ""
        if c["augment"] != full["augment"]:  # a quick design's (or the user's) choice, not the original's
            crop += " (the original: not augmented)" if c["augment"] else ", not augmented (the original: rotation, flips and crop)"
        elif c["tile_size"] != tile_of or (c["augment"] and c["crop_size"] != crop_of):
            crop += f" (the original: {tile_of}×{tile_of}{f', cropped to {crop_of}' if c['augment'] else ''})"
        batch = f"batch {c['batch_size']}" + (f" (the full profile's: {full['batch_size']})" if c["batch_size"] != full["batch_size"] else "")
        items.append(f"  - {run}: {c['tile_size']}×{c['tile_size']} px tiles{crop}; {s['n_train']} training / {s['n_valid']} validation "
                     f"tiles ({'a subset of ' + str(c['subset']) if c['subset'] else 'all'}, valid_fraction {c['valid_fraction']:g}); "
                     f"{s['epochs']} epochs (the original: {full['epochs']}), {batch}" + _lr_change(c))  # fmt: skip
    return "\n".join(items)


def deviations(results: dict[str, RunResult], evaluation: dict | None = None) -> str:
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
                     "(lib/data/synthetic.py), in the course layout and sizes. Its figures are not comparable one to one with the original's.")  # fmt: skip
    else:
        items.append(f"- **Data:** {final['data_origin']}.")
    full = {run: registry.run_parameters(run, "full") for run in results}
    short = [run for run, r in results.items() if r.summary["epochs"] != full[run]["epochs"] or r.config["subset"]
             or r.config["tile_size"] != full[run].get("tile_size", r.config["tile_size"])]  # fmt: skip
    if short:
        given = {run: given_over_registry(r) for run, r in results.items()}
        given_text = by_run({run: ", ".join(f"{k} {used} (registry: {declared})" for k, (declared, used) in g.items()) or "none"
                             for run, g in given.items()})  # fmt: skip
        source = (f"the registry's {final['profile']} values" if given_text == "none"
                  else f"the registry's {final['profile']} values, with parameters given over them: {given_text}")
        relation = ("the ResNet50 runs keep the original's relation (the shortest; longer with ReduceLROnPlateau; the longest)"
                    if keeps_relation(results) else "the ResNet50 runs do not keep the original's relation (the shortest; longer; the longest)")
        items.append(f"- **Profile `{final['profile']}`:** so that everything runs on a CPU in minutes, the runs are scaled down "
                     f"({source}); {relation}. Their accuracies are not the original's experiment. As run:\n" + quick_design(results))  # fmt: skip
    baseline = next((r for r in results.values() if r.config["model"] == "baseline"), None)
    if baseline:
        full = _full_profile_lr(baseline.config)
        rate = f"lr {baseline.config['lr']:g}" + (f", where the full profile's is {full:g}" if baseline.config["lr"] != full else "")
        items.append(f"- **Baseline optimizer:** the original does not state it; the workbook uses Adam, the later runs' optimizer ({rate}).")
    items.append("- **Predictions:** with the kept 1000-way head, accuracy and predictions take the arg-max over the two "
                 "label outputs; the original took it over all 1000, which can name a class that is neither 0 nor 1.")  # fmt: skip
    items.append("- **Scores:** the history keeps the original's validation metric (the mean of batch accuracies, over full "
                 "batches only); the workbook adds, for every run's best checkpoint rather than the final run's alone, test "
                 "accuracy, balanced accuracy and ROC-AUC, each beside the majority-class rate of the same tiles.")  # fmt: skip
    submission = (evaluation or {}).get("submission")
    if submission and submission["form"] != "course":
        items.append(f"- **Submission:** written in {submission['why']}, not the original's `# Id,Values` with hard labels.")
    return "\n".join(items)


def by_run(values: dict[str, object]) -> str:
    """The value when every run has the same, else each value after the runs that have it, in run
    order: {"a": 1, "b": 2, "c": 1} -> "a, c: 1; b: 2". A report line or table cell then describes
    every run, not only the final one."""
    groups: dict[str, list[str]] = {}
    for run, value in values.items():
        groups.setdefault(str(value), []).append(run)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{', '.join(runs)}: {value}" for value, runs in groups.items())


def _device(environment: dict) -> str:
    chip = environment["gpu"] if environment["gpu"] != "none" else environment["cpu"]
    return f"{environment['device']} ({chip})"


def environment_table(results: dict[str, RunResult]) -> pd.DataFrame:
    """Where and from what every run was made, one row per fact (a DataFrame with one column,
    "value"). A fact the runs share is given once; one they differ in is given per run (by_run), so
    the table is true of every run, not of the final one alone."""
    summaries = {run: r.summary for run, r in results.items()}
    fields = list(dict.fromkeys(key for s in summaries.values() for key in s["environment"]))
    record = {}
    for key in fields:
        if key == "recorded_at":  # one per run by nature: the span says when the results were made
            times = sorted(str(s["environment"][key]) for s in summaries.values() if s["environment"].get(key))
            record["results saved"] = "not recorded" if not times else times[0] if times[0] == times[-1] else f"{times[0]} (first run) to {times[-1]} (last)"
        else:
            record[key] = by_run({run: s["environment"].get(key, "not recorded") for run, s in summaries.items()})
    facts = {
        "data set": lambda s: f"{s['data_origin']} ({s['data_dir']})",
        "layout": lambda s: f"{s.get('data_layout', 'course')}; {s.get('label_rule', '')}",
        "split": lambda s: s["split"],
        "training / validation tiles": lambda s: f"{s['n_train']} / {s['n_valid']}",
        "input path": lambda s: s.get("input_path", ""),
        "arithmetic": lambda s: s.get("speed_settings", "fp32"),
        "profile": lambda s: s["profile"],
    }
    for name, fact in facts.items():
        record[name] = by_run({run: fact(s) for run, s in summaries.items()})
    notes = {run: "; ".join(s.get("data_notes", [])) or "none" for run, s in summaries.items()}
    if len(set(notes.values())) == 1:
        record["input notes"] = next(iter(notes.values()))
    else:  # a row per run: notes are sentences, too long to group in one cell
        for run, text in notes.items():
            record[f"input notes, {run}"] = text
    record["pretrained weights"] = ", ".join(
        f"{run}: {'yes, ' + r.summary['weights']['source'] if r.summary['weights']['pretrained'] else 'no (from scratch)'}"
        for run, r in results.items() if r.config["model"] == "resnet50"
    )  # fmt: skip
    return pd.DataFrame({"value": record})


def held_out_clause(evaluation: dict) -> str:
    """", on the 512 test tiles (265 of class 0, 247 of class 1)" when every run was scored on the
    same test tiles, else "" (the scores table then names each run's tiles)."""
    same = _same_tiles(_run_scores(evaluation))
    return f", on {same}" if same else ""
