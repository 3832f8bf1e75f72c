"""The report's sentences and tables, written from each run's facts (lib/report/facts.py) beside the
original's reported figures.

Nothing here is typed in: measured figures come from the runs' records and reports/evaluation.json,
reported ones from the registry. Every accuracy shown stands beside the majority-class rate of the
same tiles (what predicting one class for every tile would score). How a run differs from the
original's (full) profile is RunFacts.from_full, said here in each place's words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lib import registry
from lib.config import ORIGINAL_CROP
from lib.metrics import interval_text, scores_text
from lib.paths import resolve
from lib.report.facts import RunFacts, all_run_facts
from lib.training.run_folder import RunFolder, RunResult

if TYPE_CHECKING:
    import torch

NBSP = "\u00a0"  # a space a table cell does not break at ("3 min 30 s" on one line)


def _percent(value) -> str:
    if value is None:
        return "\u2014"  # nothing to report: a run the original did not make
    return f"{100 * value:.2f} %" if registry.is_reported(value) else "not reported"


def _duration(seconds) -> str:
    if seconds is None:
        return "\u2014"
    if not registry.is_reported(seconds):
        return "not reported"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def names(runs: list[str]) -> str:
    """Runs named in a sentence: "a", "a and b", "a, b and c"."""
    return runs[0] if len(runs) == 1 else f"{', '.join(runs[:-1])} and {runs[-1]}"


def load_all(runs_dir) -> dict[str, RunResult]:
    """Every registry run's saved results; FileNotFoundError naming the runs that have none."""
    folders = {run: RunFolder(resolve(runs_dir) / run) for run in registry.run_names()}
    missing = [run for run, folder in folders.items() if not folder.has_result()]
    if missing:
        raise FileNotFoundError(f"no results in {resolve(runs_dir)} for: {', '.join(missing)}; run `make run-all` first")
    return {run: folder.result() for run, folder in folders.items()}


def load_facts(runs_dir, evaluation: dict) -> dict[str, RunFacts]:
    """Every registry run's facts (RunFacts), computed once from its folder and the evaluation;
    FileNotFoundError as load_all."""
    return all_run_facts(load_all(runs_dir), evaluation)


def load_evaluation(reports_dir) -> dict:
    """reports_dir/evaluation.json; FileNotFoundError saying how to make it."""
    path = resolve(reports_dir) / "evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; execute notebooks/06_evaluation.ipynb (or `make run-all`) first")
    return json.loads(path.read_text())


def load_test_scores(reports_dir) -> tuple[list[int], list[float]] | None:
    """Known test labels and class-1 scores from test_predictions.csv, or None without labels."""
    table = pd.read_csv(resolve(reports_dir) / "test_predictions.csv")
    if "label" not in table:
        return None
    return table["label"].tolist(), table["score_class1"].tolist()


def comparison_table(facts: dict[str, RunFacts]) -> pd.DataFrame:
    """Reported by the original versus measured here, one row per run, each cell "original / here";
    the majority-class rate of the validation tiles scored here beside them (the original reported none)."""
    rows = []
    for run, f in facts.items():
        reported = f.original
        if beyond_original(f):  # nothing to set beside it: the original has no such run
            reported = {"final_valid_accuracy": None, "best_valid_accuracy": None, "elapsed_s": None}
        rows.append({
            "run": run,
            "epochs": f"{f.full_epochs} / {f.epochs}",
            "final valid acc": f"{_percent(reported['final_valid_accuracy'])} / {_percent(f.final_valid_accuracy)}",
            "best valid acc": f"{_percent(reported['best_valid_accuracy'])} / {_percent(f.best_valid_accuracy)}",
            "majority rate of the validation tiles here": _percent(f.valid_majority_rate),
            "training time": f"{_duration(reported['elapsed_s'])} / {_duration(f.elapsed_s)}",
            "images/s here": f"{f.images_per_s:.1f}",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("run")


def _floor(f: RunFacts) -> str:
    """The majority-class rate of a run's validation tiles, as a clause (older results lack it)."""
    if f.valid_majority_rate is None:
        return ""
    return f" (majority-class rate of its {f.n_valid_scored} validation tiles: {_percent(f.valid_majority_rate)})"


def run_figures(f: RunFacts) -> str:
    """One run's measured figures as a Markdown line: validation accuracies beside their
    majority-class rate, time and speed, and its best checkpoint's held-out scores when evaluated."""
    differ = f.from_full
    changes = []  # the quick design's (or the user's) choices that the section's text, the original's story, does not say
    if "augment" in differ:
        changes.append("with rotation and flips, which the original's run did not have" if f.augment else "without the original's augmentation")
    if "lr" in differ:
        changes.append(f"learning rate {f.lr:g}, the full profile's {differ['lr'].full:g}")
    if "batch_size" in differ:
        changes.append(f"batch {f.batch_size}, the full profile's {differ['batch_size'].full}")
    text = f"Measured here ({'; '.join(changes)}; see Deviations): final valid acc" if changes else "Measured here: final valid acc"
    text += (f" {_percent(f.final_valid_accuracy)}, best {_percent(f.best_valid_accuracy)} (epoch {f.best_epoch}){_floor(f)}, "
             f"{f.epochs} epochs in {_duration(f.elapsed_s)}, {f.images_per_s:.1f} training images/s "
             f"on {f.environment.get('device', 'cpu')}.")  # fmt: skip
    if f.held_out:
        where = "test tiles" if f.held_out.scored_on == "test" else "validation split (no labelled test set)"
        text += f" Best checkpoint on the {where}: {scores_text(f.held_out.metrics, with_method=False)}."
    return text


def run_section(f: RunFacts) -> str:
    """A run's part of the report's body, as Markdown: its heading, why the original made it (the
    registry's), what the original reported and what it measured here."""
    return f"### {f.title}\n\n{f.why}\n\nOriginal: {f.original['summary']}. {run_figures(f)}"


def weights_notices(facts: dict[str, RunFacts]) -> str:
    """What the networks started from, where it is not what the original did, as Markdown: one
    sentence per outcome, naming every run it holds for (said once, not once per run). "" when every
    run did as the original."""
    groups: dict[tuple, list[str]] = {}
    for run, f in facts.items():
        if f.weights.notice:
            groups.setdefault((f.weights.pretrained, f.weights.source, f.weights.notes), []).append(run)
    lines = []
    for (pretrained, source, notes), runs in groups.items():
        f = facts[runs[0]]
        if f.weights.not_found:
            lines.append(f"*{names(runs)} trained ResNet50 from scratch: its ImageNet weights were not found offline "
                         f"({source.removeprefix('not found at ')}), unlike the original, which started from them. `make weights` "
                         "downloads them once; `make run-all WEIGHTS=file.pth` starts from a file of one's own.*")  # fmt: skip
        elif not pretrained:
            lines.append(f"*{names(runs)} trained from scratch ({source}), unlike the original, which started from ImageNet weights.*")
        else:
            lines.append(f"*{names(runs)} started from pretrained weights in {source}: {notes}.*")
    return "\n\n".join(lines)


def logged_beyond(f: RunFacts) -> str:
    """What the original logged beyond this run's epochs (its curves show only the epochs both
    have), as a sentence; "" when nothing lies beyond. Epochs count from 0, as both logs do."""
    logged = f.original.get("logged_epochs") or []
    if not logged:
        return "The original's write-up logged no epochs of this run."
    beyond = [r for r in logged if r["epoch"] >= f.epochs]
    if not beyond:
        return ""
    first, last = beyond[0]["epoch"], beyond[-1]["epoch"]
    accuracies = [r["valid_accuracy"] for r in beyond]
    span = f"{min(accuracies):.2f}" if min(accuracies) == max(accuracies) else f"{min(accuracies):.2f} to {max(accuracies):.2f}"
    where = f"epochs {first} to {last} of its {f.full_epochs}" if first != last else f"epoch {first} of its {f.full_epochs}"
    lead = (f"The original logged {len(beyond)} more epochs beyond this run's {f.epochs}" if len(beyond) < len(logged)
            else f"The original logged {len(beyond)} epochs, all beyond this run's {f.epochs}")  # fmt: skip
    return f"{lead} ({where}; validation accuracy {span} there)."


def curves_alt(f: RunFacts) -> str:
    """Alt text of a run's curves: what they show, and what the original's crosses and note add."""
    logged = [r["epoch"] for r in f.original.get("logged_epochs") or [] if r["epoch"] < f.epochs]
    span = (f"epochs {logged[0]} to {logged[-1]}" if len(logged) > 1 else f"epoch {logged[0]}") if logged else ""
    crosses = f", with the original's logged {span} as crosses" if logged else ""
    epochs = f"{f.epochs} epochs (0 to {f.epochs - 1})" if f.epochs != 1 else "1 epoch (epoch 0)"
    return (f"Training and validation loss and accuracy per epoch of {f.run}, {epochs} as lines{crosses}. "
            + logged_beyond(f)).strip()  # fmt: skip


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


def decode_test_tiles(evaluation: dict, ids: list, size: int | None = None, runs_dir=None) -> "torch.Tensor":
    """Decoded tiles (N, 3, size, size) uint8 for the given evaluated ids: test tiles, or the labelled
    tiles (ids are their paths) when the data set had no test set. `size`: the course's 256 by
    default; a run's own tile_size to show a network what it saw. `runs_dir`: where the evaluated run
    lives now (a runs folder moved since the evaluation); by default where the evaluation found it."""
    import dataclasses

    from lib.data import TILE_SIZE, decode_tiles, read_run_layout

    folder = RunFolder(Path(runs_dir) / evaluation["run"] if runs_dir else evaluation["run_dir"])
    config = folder.run_config()  # its data_dir read as where the data lies now (RunFolder.read_config)
    data_dir = evaluation["data_dir"] if Path(evaluation["data_dir"]).exists() else config.data_dir
    index = read_run_layout(dataclasses.replace(config, data_dir=data_dir))
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
        return "No submission file: the data set has no test tiles to predict (submission.csv not written)."
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


def _with_interval(m: dict, key: str) -> str:
    """A score with its 95 % interval in brackets: "82.03 % [78.71, 85.16]", "0.908 [0.882, 0.932]"."""
    if m.get(key) is None:
        return "undefined" if key == "roc_auc" else "\u2014"
    if key == "roc_auc":
        return f"{m[key]:.3f}{interval_text(m, key, 1, 3)}"
    return f"{100 * m[key]:.2f} %{interval_text(m, key)}"


def second_set_name(evaluation: dict) -> str | None:
    """What the second test set is, in words, from evaluation.json ("the other laboratory's 512 test
    tiles"), or None when the evaluation scored none."""
    second = (evaluation or {}).get("second_test")
    if not second:
        return None
    return str(second.get("scored_on") or "second test set")


def runs_table(facts: dict[str, RunFacts], evaluation: dict) -> str:
    """The report's one table of every run, as Markdown: its validation accuracy (the original's
    metric) beside that split's majority rate, its best checkpoint's accuracy and ROC-AUC on the
    held-out tiles with their 95 % intervals, and, where a second test set was scored (another
    laboratory's stain), the same two there; time. Every run scored on the same tiles: their
    majority-class rate is said once above the table; otherwise each row gives its tiles and rate.
    Balanced accuracy is in the evaluation's table (scores_table)."""
    scores = _run_scores(evaluation)
    same = _same_tiles(scores)
    second = second_set_name(evaluation)
    method = next(((f.held_out.metrics.get("intervals") or {}).get("method") for f in facts.values() if f.held_out), None)
    rates = sorted({f.held_out.metrics["majority_rate"] for f in facts.values() if f.held_out})
    second_rates = sorted({f.held_out.second["majority_rate"] for f in facts.values() if f.held_out and f.held_out.second})
    where = f"on {same[:-1]}; majority-class rate {_percent(rates[0])})" if same and len(rates) == 1 else "on the tiles named in each row"
    if second:
        where += f" and on the {second}" + (f" (majority-class rate {_percent(second_rates[0])})" if len(second_rates) == 1 else "")
    head = "| run | epochs | best valid acc (majority rate) | accuracy | ROC-AUC |"
    rule = "| --- | --- | --- | --- | --- |"
    if not same:
        head, rule = head + " majority rate |", rule + " --- |"
    if second:
        head += " second set: accuracy | second set: ROC-AUC |"
        rule += " --- | --- |"
    lines = [f"Every run's best checkpoint scored {where}" + ("; in brackets, 95 % intervals:" if method else ":"), "",
             head + " time |", rule + " --- |"]  # fmt: skip
    for run, f in facts.items():
        m = f.held_out.metrics if f.held_out else None
        valid = _percent(f.best_valid_accuracy) + (f" ({_percent(f.valid_majority_rate)})" if f.valid_majority_rate is not None else "")
        if m:
            accuracy = _with_interval(m, "accuracy") + (f" **{m['one_class']}**" if m["one_class"] else "")
            if not same:
                where = "test" if f.held_out.scored_on == "test" else "validation split"
                accuracy += f" ({where}, {m['n']} tiles: {m['class_counts'][0]} / {m['class_counts'][1]})"
            cells = [accuracy, _with_interval(m, "roc_auc")] + ([] if same else [_percent(m["majority_rate"])])
        else:
            cells = ["not scored (no labels)", ""] + ([] if same else [""])
        if second:
            other = f.held_out.second if f.held_out else None
            cells += [_with_interval(other, "accuracy"), _with_interval(other, "roc_auc")] if other else ["", ""]
        time = _duration(f.elapsed_s).replace(" ", NBSP)
        lines.append(f"| {run} | {f.epochs} | {valid} | " + " | ".join(cells) + f" | {time} |")
    lines += ["", "*Valid acc* is the original's metric, the mean of batch accuracies over the full batches of the validation split "
                  "(the history keeps it so). *Majority rate*: the accuracy of predicting the more frequent class for every one of the "
                  "same tiles. Balanced accuracy (the mean of the two classes' recalls) is in the evaluation's table."
                  + (f" *Intervals*: {method}." if method else "")]  # fmt: skip
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
            "accuracy": _with_interval(m, "accuracy"),
            "majority rate": _percent(m["majority_rate"]),
            "balanced accuracy": _with_interval(m, "balanced_accuracy"),
            "ROC-AUC": _with_interval(m, "roc_auc"),
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


def given_over_registry(f: RunFacts) -> dict[str, tuple]:
    """The parameters a run trained with that differ from its registry profile's, {name: (registry's,
    used)}: what a user set (`make run-all EPOCHS=1`) over the registry. Tile and crop sizes count
    only where the registry fixes them (0 means "from the data", resolved when the run starts)."""
    return f.given_over


def beyond_original(f: RunFacts) -> bool:
    """Whether a run goes beyond the original project (the registry's reported table says so): it
    has no reported figures to compare with and no place in the original's story."""
    return bool(f.original.get("beyond_original"))


def _resnets(facts: dict[str, RunFacts], beyond: bool = True) -> list[str]:
    """The ResNet50 runs in registry order; without the runs beyond the original unless `beyond`."""
    return [run for run, f in facts.items() if f.model == "resnet50" and (beyond or not beyond_original(f))]


def keeps_relation(facts: dict[str, RunFacts]) -> bool:
    """True when the ResNet50 runs' epochs still rise in registry order (the original's 10, 100, 150:
    the shortest; longer; the longest), which the quick story and the deviations rely on."""
    epochs = [facts[run].epochs for run in _resnets(facts, beyond=False)]
    return all(a < b for a, b in zip(epochs, epochs[1:]))


def _auc_difference(c: dict) -> str:
    auc = c.get("roc_auc") or {}
    if auc.get("value") is None or auc.get("low") is None:
        return "ROC-AUC difference undefined"
    return f"ROC-AUC {_signed(auc['value'], 1, 3)} [{_signed(auc['low'], 1, 3)}, {_signed(auc['high'], 1, 3)}], paired 95 % interval"


def quick_story(facts: dict[str, RunFacts], evaluation: dict) -> str:
    """For the quick profile, what its runs show of the original's story and what needs the full
    profile or ImageNet weights, from the measured scores. Empty for the full profile."""
    if not any(f.profile == "quick" for f in facts.values()):
        return ""

    def auc(run):
        return facts[run].held_out.metrics.get("roc_auc") if run in facts and facts[run].held_out else None

    final, resnets = registry.final_run(), _resnets(facts, beyond=False)
    scratch = any(not facts[run].weights.pretrained for run in resnets)
    shown = []
    baseline = next((run for run, f in facts.items() if f.model == "baseline"), None)
    # Each claim rests on a paired comparison on the same tiles (the evaluation's), never on two point figures.
    if baseline and _comparison(evaluation, baseline, final, "test"):
        c = _comparison(evaluation, baseline, final, "test")
        told = (c.get("roc_auc") or {}).get("told_apart")
        verb = ("ranks the held-out tiles better than" if c["roc_auc"]["value"] > 0 else "ranks the held-out tiles worse than") if told else \
            "is not told apart from"
        shown.append(f"the final ResNet50 {verb} the small baseline CNN ({_auc_difference(c)})")
    if len(resnets) > 1 and _comparison(evaluation, resnets[0], resnets[1], "test"):
        c = _comparison(evaluation, resnets[0], resnets[1], "test")
        told = (c.get("roc_auc") or {}).get("told_apart")
        verb = ("improves on" if c["roc_auc"]["value"] > 0 else "falls below") if told else "is not told apart from"
        shown.append(f"the first longer ResNet50 run, {resnets[1]}, {verb} the shortest, {resnets[0]} ({_auc_difference(c)})")
    epochs = ", ".join(str(facts[run].epochs) for run in resnets)
    needs = "the full profile (a GPU)" + (" and ImageNet weights (`make weights`; these ResNet50 runs started from scratch)" if scratch else "")
    shown_text = ("; ".join(shown) + ". ") if shown else ""
    shown_text = shown_text[:1].upper() + shown_text[1:]
    if not keeps_relation(facts):
        return (f"**What the quick runs show:** {shown_text}Their ResNet50 runs trained for {epochs} epochs, which does not keep the "
                f"original's relation (10, 100 and 150: the shortest; longer; the longest), so they cannot show the direction of its "
                f"story; its figures need {needs}.")  # fmt: skip
    return (f"**What the quick runs show:** {shown_text}They are the original's four runs scaled down "
            f"(ResNet50 for {epochs} epochs in place of 10, 100 and 150), so they show the direction of its story, not its figures: "
            f"the original's 96-100 % validation accuracy, run 2's swings between epochs and their damping by ReduceLROnPlateau "
            f"(whose patience, 10 epochs, is longer than these runs) need {needs}.")  # fmt: skip


def headline(facts: dict[str, RunFacts], evaluation: dict) -> str:
    """The summary a reader sees first, as Markdown: data, profile, device, the one table of every
    run (runs_table), the final run's held-out scores and its submission, and for the quick profile
    what its runs show (quick_story)."""
    final = facts[registry.final_run()]
    profiles = sorted({f.profile for f in facts.values()})
    split = by_run({run: f"{f.n_train} / {f.n_valid}" for run, f in facts.items()})
    device = by_run({run: f.device for run, f in facts.items()})
    data_set = by_run({run: f.data_set for run, f in facts.items()})
    lines = [
        f"**Data set:** {final.data_origin} in {data_set}, {final.n_labelled} labelled tiles (training / validation tiles: {split}).",
        f"**Profile:** {', '.join(profiles)} ({final.profile_reason}).",
        f"**Device:** {device}.",
        "",
        runs_table(facts, evaluation),
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
    story = quick_story(facts, evaluation)
    if story:
        lines += ["", story]
    return "\n".join(lines)


def _lr_change(f: RunFacts) -> str:
    """", learning rate X (the full profile's: Y)" when the run trained at another rate than its full
    profile's (a quick design's or the user's), else ""."""
    lr = f.from_full.get("lr")
    return f", learning rate {f.lr:g} (the full profile's: {lr.full:g})" if lr else ""


def quick_design(facts: dict[str, RunFacts]) -> str:
    """The sizes each run actually used, in a sentence per run (Markdown list items), each saying
    where it differs from the original's."""
    crop_of, tile_of = ORIGINAL_CROP
    items = []
    for run, f in facts.items():
        differ = f.from_full
        crop = (", augmented by rotation and flips, not cropped" if f.augment and f.crop_size is None
                else f", cropped to {f.crop_size} px when augmenting" if f.augment else "")  # fmt: skip
        if "augment" in differ:  # a quick design's (or the user's) choice, not the original's
            crop += " (the original: not augmented)" if f.augment else ", not augmented (the original: rotation, flips and crop)"
        elif "tile_size" in differ or (f.augment and "crop_size" in differ):
            crop += f" (the original: {tile_of}×{tile_of}{f', cropped to {crop_of}' if f.augment else ''})"
        batch = f"batch {f.batch_size}" + (f" (the full profile's: {differ['batch_size'].full})" if "batch_size" in differ else "")
        items.append(f"  - {run}: {f.tile_size}×{f.tile_size} px tiles{crop}; {f.n_train} training / {f.n_valid} validation "
                     f"tiles ({'a subset of ' + str(f.subset) if f.subset else 'all'}, valid_fraction {f.valid_fraction:g}); "
                     f"{f.epochs} epochs (the original: {f.full_epochs}), {batch}" + _lr_change(f))  # fmt: skip
    return "\n".join(items)


def deviations(facts: dict[str, RunFacts], evaluation: dict | None = None) -> str:
    """What differs from the original, as Markdown, read from what the runs actually did."""
    final = facts[registry.final_run()]
    items = []
    resnets = _resnets(facts)
    scratch = [run for run in resnets if not facts[run].weights.pretrained]
    if scratch:
        items.append(f"- **No ImageNet weights:** {names(scratch)} trained ResNet50 from scratch "
                     f"({facts[scratch[0]].weights.source}); the original fine-tuned ImageNet weights.")  # fmt: skip
    pretrained = [run for run in resnets if run not in scratch]
    if pretrained:
        files = sorted({facts[run].weights.source for run in pretrained})
        notes = sorted({facts[run].weights.notes for run in pretrained} - {""})
        items.append(f"- **Pretrained weights:** {names(pretrained)} started from {', '.join(files)}"
                     + (f" ({'; '.join(notes)})" if notes else "") + "; the original started from torchvision's ImageNet weights.")  # fmt: skip
    if "generated" in final.data_origin:
        items.append("- **Data:** the course data is not public; these runs use the generated H&E-like tile set "
                     "(lib/data/synthetic.py), in the course layout and sizes. Its figures are not comparable one to one with the original's.")  # fmt: skip
    else:
        items.append(f"- **Data:** {final.data_origin}.")
    short = [run for run, f in facts.items() if f.epochs != f.full_epochs or f.subset or "tile_size" in f.from_full]
    if short:
        given_text = by_run({run: ", ".join(f"{k} {used} (registry: {declared})" for k, (declared, used) in f.given_over.items()) or "none"
                             for run, f in facts.items()})  # fmt: skip
        source = (f"the registry's {final.profile} values" if given_text == "none"
                  else f"the registry's {final.profile} values, with parameters given over them: {given_text}")
        relation = ("the ResNet50 runs keep the original's relation (the shortest; longer with ReduceLROnPlateau; the longest)"
                    if keeps_relation(facts) else "the ResNet50 runs do not keep the original's relation (the shortest; longer; the longest)")
        items.append(f"- **Profile `{final.profile}`:** so that everything runs on a CPU in minutes, the runs are scaled down "
                     f"({source}); {relation}. Their accuracies are not the original's experiment. As run:\n" + quick_design(facts))  # fmt: skip
    baseline = next((f for f in facts.values() if f.model == "baseline"), None)
    if baseline:
        lr = baseline.from_full.get("lr")
        rate = f"lr {baseline.lr:g}" + (f", where the full profile's is {lr.full:g}" if lr else "")
        items.append(f"- **Baseline optimizer:** the original does not state it; the workbook uses Adam, the later runs' optimizer ({rate}).")
    items.append("- **Predictions:** with the kept 1000-way head, accuracy and predictions take the arg-max over the two "
                 "label outputs; the original took it over all 1000, which can name a class that is neither 0 nor 1.")  # fmt: skip
    items.append("- **Scores:** the history keeps the original's validation metric (the mean of batch accuracies, over full "
                 "batches only); the workbook adds, for every run's best checkpoint rather than the final run's alone, test "
                 "accuracy, balanced accuracy and ROC-AUC, each beside the majority-class rate of the same tiles.")  # fmt: skip
    beyond = [run for run, f in facts.items() if beyond_original(f)]
    if beyond:
        items.append(f"- **Beyond the original:** {names(beyond)} (stain colour augmentation) and "
                     f"{'the ' + second_set_name(evaluation or {}) if second_set_name(evaluation or {}) else 'a second test set (none scored here)'} "
                     "are this workbook's additions; so are the 95 % intervals "
                     "on every score and the paired comparisons of runs on the same tiles.")  # fmt: skip
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


# The environment record's entries that say where a result came from rather than what ran it.
PROVENANCE_KEYS = ("recorded_at", "workbook_commit")


def environment_table(facts: dict[str, RunFacts]) -> pd.DataFrame:
    """The machine and software every run ran on, one row per fact (a DataFrame with one column,
    "value"). A fact the runs share is given once; one they differ in is given per run (by_run), so
    the table is true of every run, not of the final one alone."""
    fields = list(dict.fromkeys(key for f in facts.values() for key in f.environment if key not in PROVENANCE_KEYS))
    record = {key: by_run({run: f.environment.get(key, "not recorded") for run, f in facts.items()}) for key in fields}
    record["arithmetic"] = by_run({run: f.arithmetic for run, f in facts.items()})
    record["input path"] = by_run({run: f.input_path for run, f in facts.items()})
    record["processes"] = by_run({run: f.processes for run, f in facts.items()})
    return pd.DataFrame({"value": record})


def provenance_table(facts: dict[str, RunFacts]) -> pd.DataFrame:
    """Where every run's results came from, one row per fact (a DataFrame with one column, "value"):
    the workbook's commit, when the results were saved, the data set in the project's words, its
    layout and split, the run folders and the weights the ResNet50 runs started from."""
    times = sorted(str(f.environment["recorded_at"]) for f in facts.values() if f.environment.get("recorded_at"))
    record = {
        "workbook_commit": by_run({run: f.environment.get("workbook_commit", "not recorded") for run, f in facts.items()}),
        # one time per run by nature: the span says when the results were made
        "results saved": ("not recorded" if not times else times[0] if times[0] == times[-1]
                          else f"{times[0]} (first run) to {times[-1]} (last)"),
        "profile": by_run({run: f.profile for run, f in facts.items()}),
        "data set": by_run({run: f"{f.data_origin} ({f.data_set})" for run, f in facts.items()}),
        "layout": by_run({run: f"{f.data_layout}; {f.label_rule}" for run, f in facts.items()}),
        "split": by_run({run: f.split for run, f in facts.items()}),
        "training / validation tiles": by_run({run: f"{f.n_train} / {f.n_valid}" for run, f in facts.items()}),
        "run folders": ", ".join(f.folder for f in facts.values()),
    }  # fmt: skip
    weights = {run: f"yes, {f.weights.source}" if f.weights.pretrained else "no (from scratch)"
               for run, f in facts.items() if f.model == "resnet50"}
    if weights:
        groups: dict[str, list[str]] = {}
        for run, value in weights.items():
            groups.setdefault(value, []).append(run)
        record["pretrained weights"] = "; ".join(f"{', '.join(runs)}: {value}" for value, runs in groups.items())
    return pd.DataFrame({"value": record})


def as_lines(table: pd.DataFrame) -> str:
    """A one-column table of facts (environment_table, provenance_table) as compact Markdown, one
    "**name:** value" item per fact separated by " · ": a page holds a dozen facts in a few lines
    where a table gave each its own row."""
    return " · ".join(f"**{name}:** {value}" for name, value in table["value"].items())


def input_notes(facts: dict[str, RunFacts]) -> str:
    """What reading each run's tiles noted (sizes brought, subsets drawn), as a Markdown list: each
    note once, after the runs that made it ("every run" when all did). The decoded-tile cache's
    bookkeeping (which file, how many tiles decoded now) is said in one line: it changes nothing of
    what a run saw."""
    runs_of: dict[str, list[str]] = {}
    cached = []
    for run, f in facts.items():
        for note in f.data_notes:
            if note.startswith("decoded tiles:"):
                cached.append(run)
            else:
                runs_of.setdefault(note, []).append(run)
    every = len(facts) > 1

    def who(runs):
        return "every run" if every and len(runs) == len(facts) else ", ".join(runs)

    lines = [f"- {who(runs)}: {note}" for note, runs in runs_of.items()]
    if cached:
        lines.append(f"- {who(cached)}: tiles decoded once into the decoded-tile cache (cache_dir) and read from it")
    return "\n".join(lines) or "None: every run read its tiles as they were."


def held_out_clause(evaluation: dict) -> str:
    """", on the 512 test tiles (265 of class 0, 247 of class 1)" when every run was scored on the
    same test tiles, else "" (the scores table then names each run's tiles)."""
    same = _same_tiles(_run_scores(evaluation))
    return f", on {same}" if same else ""


def filters_title(facts: dict[str, RunFacts], runs: list[str]) -> str:
    """The filter figure's title: "baseline after 12 epochs and resnet50-150ep after 7 epochs"."""
    return " and ".join(f"{run} after {facts[run].epochs} epoch{'s' if facts[run].epochs != 1 else ''}" for run in runs)


# --- Alt text: what each figure shows, for a reader who cannot see it ---------------------------------


def compared_alt(facts: dict[str, RunFacts]) -> str:
    scored = [run for run, f in facts.items() if f.held_out]
    text = f"Validation accuracy per epoch of {names(list(facts))} on one axis, each over its own epochs"
    if scored:
        text += (f"; beside it, the best checkpoint's accuracy, balanced accuracy and ROC-AUC of {names(scored)} on the held-out tiles "
                 "as bars, with each run's majority-class rate as a dashed line")  # fmt: skip
    return text + "."


def filters_alt(f: RunFacts, layers: list[str], shown: str) -> str:
    return (f"Convolution filters of {f.run} ({', '.join(layers)}; {shown}) in three rows: before training, after its {f.epochs} "
            f"epoch{'s' if f.epochs != 1 else ''}, each kernel on its own grey scale, and the difference after minus before on a blue-white-red scale symmetric "
            "around 0, with its own range per layer stated above it.")  # fmt: skip


def feature_maps_alt(tile_id, stages: list[str], per_stage: int) -> str:
    return f"Test tile #{tile_id} and the first {per_stage} channels of the trained baseline's activations after {names(stages)}."


def grad_cam_alt(run: str, n: int, wrong: int) -> str:
    return (f"{n} test tiles, {wrong} of them wrongly classified and framed in red, each above its Grad-CAM heat map from {run}'s last "
            "residual block: red where the network's predicted class drew most on the tile.")  # fmt: skip


def evaluation_alt(run: str, matrix, auc) -> str:
    (tn, fp), (fn, tp) = matrix
    roc = f" and its ROC curve (AUC {auc:.3f}) against the diagonal of chance" if auc is not None else ""
    return (f"Confusion matrix of {run}'s best checkpoint on the test tiles: {tn} normal tiles predicted normal, {fp} predicted cancer; "
            f"{fn} cancer tiles predicted normal, {tp} predicted cancer{roc}.")  # fmt: skip


def tiles_alt(chosen: pd.DataFrame) -> str:
    wrong = int(chosen["wrong"].sum())
    return (f"A grid of {len(chosen)} test tiles, each captioned with its id, predicted label and (where known) true label; "
            f"{wrong} wrongly classified ones come first, framed and captioned in red.")


# --- Comparisons on the same tiles: a difference is called one only when its interval excludes 0 ---


def _signed(value: float, scale: float, digits: int) -> str:
    return f"{scale * value:+.{digits}f}".replace("-", "\u2212")


def _tiles_named(c: dict, evaluation: dict | None = None) -> str:
    if c["on"] == "second":
        second = (evaluation or {}).get("second_test") or {}
        return f"the {c['n']} tiles of the {second.get('scored_on') or 'second test set'}"
    return f"the same {c['n']} held-out tiles"


def comparison_sentence(c: dict, evaluation: dict | None = None) -> str:
    """One pair of runs compared on the same tiles (lib/report/evaluate.py compare_evaluations' item),
    later minus earlier, as a sentence: the accuracy difference in points with its paired 95 %
    interval and McNemar's exact p (the tiles only one of them got right), the ROC-AUC difference with
    its paired interval, each called a difference only when its interval excludes 0 (and, for
    accuracy, McNemar's p is below 0.05), and otherwise said not to be told apart on these tiles."""
    a, b, acc, auc = c["a"], c["b"], c["accuracy"], c.get("roc_auc")
    mc = acc.get("mcnemar", {})
    acc_text = (f"accuracy {_signed(acc['value'], 100, 2)} points [{_signed(acc['low'], 100, 2)}, {_signed(acc['high'], 100, 2)}], "
                f"McNemar's exact p = {mc.get('p_value', float('nan')):.3g} ({mc.get('b', 0)} tiles right with {a} only, "
                f"{mc.get('c', 0)} with {b} only)")  # fmt: skip
    acc_verdict = (f"{b} is {'more' if acc['value'] > 0 else 'less'} accurate" if acc.get("told_apart")
                   else "their accuracies are not told apart on these tiles")  # fmt: skip
    text = f"**{b} against {a}** on {_tiles_named(c, evaluation)}: {acc_text}: {acc_verdict}"
    if auc and auc.get("value") is not None:
        auc_verdict = (f"{b} ranks the tiles {'better' if auc['value'] > 0 else 'worse'}" if auc.get("told_apart")
                       else "not told apart")  # fmt: skip
        text += (f"; ROC-AUC {_signed(auc['value'], 1, 3)} [{_signed(auc['low'], 1, 3)}, {_signed(auc['high'], 1, 3)}]: "
                 f"{auc_verdict}")
    return text + "."


def comparison_lines(comparisons: list[dict], evaluation: dict | None = None) -> list[str]:
    """comparison_sentence of every compared pair, the held-out tiles' first, then the second test
    set's; with the methods said once at the end. [] without comparisons."""
    if not comparisons:
        return []
    ordered = [c for c in comparisons if c["on"] == "test"] + [c for c in comparisons if c["on"] != "test"]
    lines = [comparison_sentence(c, evaluation) for c in ordered]
    methods = sorted({c["accuracy"].get("method", "") for c in comparisons} | {(c.get("roc_auc") or {}).get("method", "") for c in comparisons})
    methods = [m for m in methods if m]
    if methods:
        lines.append("*Differences are later minus earlier run, in brackets their paired 95 % intervals: " + "; ".join(methods) + ".*")
    return lines


# --- Another laboratory's stain, calibration, test-time augmentation ---------------------------------


def two_labs_scores(facts: dict[str, RunFacts]) -> dict[str, tuple[dict, dict | None]]:
    """{run: (its scores on the held-out tiles, on the second test set or None)} of the scored runs,
    for figures.plot_two_labs."""
    return {run: (f.held_out.metrics, f.held_out.second) for run, f in facts.items() if f.held_out}


def _comparison(evaluation: dict, a: str, b: str, on: str) -> dict | None:
    return next((c for c in evaluation.get("comparisons") or [] if c["a"] == a and c["b"] == b and c["on"] == on), None)


def two_labs_text(facts: dict[str, RunFacts], evaluation: dict) -> str:
    """What another laboratory's stain does to every run, as Markdown: each run's ROC-AUC on the
    held-out tiles and on the second set, then, for each run beyond the original, its second-set
    ROC-AUC against the final run's with the paired interval, called a gain only when it excludes 0."""
    second = second_set_name(evaluation)
    if not second:
        return ("No second test set was scored (`SECOND_TEST=` names one in any supported layout; the generated data brings "
                "another laboratory's).")  # fmt: skip
    drops = []
    for run, (same, other) in two_labs_scores(facts).items():
        if other and same.get("roc_auc") is not None and other.get("roc_auc") is not None:
            drops.append(f"{run} {same['roc_auc']:.3f} \u2192 {other['roc_auc']:.3f}")
    lines = [(f"ROC-AUC on the held-out tiles \u2192 on the {second}: " + "; ".join(drops) + ". A run's two figures are of different "
              "tiles (other tissue as well as another stain), so no paired test applies to them: read their intervals, and the paired "
              "comparisons of runs on the second set below and in the table above.") if drops else ""]
    final = registry.final_run()
    for run, f in facts.items():
        if not beyond_original(f) or run == final:
            continue
        for on in ("second", "test"):
            c = _comparison(evaluation, final, run, on)
            if c:
                lines.append(comparison_sentence(c, evaluation))
    return "\n\n".join(line for line in lines if line)


def two_labs_alt(facts: dict[str, RunFacts], evaluation: dict) -> str:
    scores = two_labs_scores(facts)
    return (f"Accuracy and ROC-AUC of {names(list(scores))}, each as two points with 95 % interval bars: on the held-out tiles "
            f"(blue circles) and on the {second_set_name(evaluation) or 'second test set'} (red squares).")  # fmt: skip


def compared(evaluation: dict, tta: bool = False) -> list[dict]:
    """evaluation.json's comparisons of two runs (tta False), or of runs' test-time-augmented
    predictions against their plain ones (tta True; lib/report/evaluate.py TTA_SUFFIX names them)."""
    from lib.report.evaluate import TTA_SUFFIX

    return [c for c in evaluation.get("comparisons") or [] if c["b"].endswith(TTA_SUFFIX) == tta]


def verdict(c: dict) -> str:
    """A compared pair's verdict in words: what its intervals tell apart, or that nothing is."""
    acc, auc = c["accuracy"], c.get("roc_auc") or {}
    if acc.get("mcnemar", {}).get("n_discordant", 1) == 0 and auc.get("value") == 0 and auc.get("low") == auc.get("high") == 0:
        return "the same predictions"  # one best checkpoint (the same seed and epochs), or two that agree on every tile
    said = []
    if acc.get("told_apart"):
        said.append("more accurate" if acc["value"] > 0 else "less accurate")
    if auc.get("told_apart"):
        said.append("ranks better" if auc["value"] > 0 else "ranks worse")
    return ", ".join(said) if said else "not told apart"


def comparisons_table(comparisons: list[dict], evaluation: dict | None = None) -> str:
    """Pairs of runs compared on the same tiles as a Markdown table, one row per pair and set of
    tiles: later minus earlier, the accuracy difference in points with its paired 95 % interval and
    McNemar's exact p, the ROC-AUC difference with its paired interval, and the verdict (verdict: a
    difference is named only where its interval excludes 0); the tiles and methods said once below
    it. "" without comparisons."""
    if not comparisons:
        return ""
    lines = ["| later \u2212 earlier | tiles | accuracy, points | McNemar p | ROC-AUC | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for c in [c for c in comparisons if c["on"] == "test"] + [c for c in comparisons if c["on"] != "test"]:
        acc, auc, mc = c["accuracy"], c.get("roc_auc") or {}, c["accuracy"].get("mcnemar", {})
        auc_text = (f"{_signed(auc['value'], 1, 3)} [{_signed(auc['low'], 1, 3)}, {_signed(auc['high'], 1, 3)}]"
                    if auc.get("value") is not None and auc.get("low") is not None else "undefined")  # fmt: skip
        lines.append(f"| {c['b']} \u2212 {c['a']} | {'held-out' if c['on'] == 'test' else 'second set'} | {_signed(acc['value'], 100, 2)} "
                     f"[{_signed(acc['low'], 100, 2)}, {_signed(acc['high'], 100, 2)}] | {mc.get('p_value', float('nan')):.3g} | {auc_text} | "
                     f"**{verdict(c)}** |")  # fmt: skip
    sets = {c["on"]: c["n"] for c in comparisons}
    tiles = ", ".join(f"the {n} held-out tiles" if on == "test" else f"the {second_set_name(evaluation or {}) or f'second test set ({n} tiles)'}"
                      for on, n in sets.items())  # fmt: skip
    lines += ["", f"*Later minus earlier on the same tiles: {tiles}; in brackets, paired 95 % intervals ({_methods_short(comparisons)}). "
                  "A difference is named only where its interval excludes 0 (for accuracy, with McNemar's exact p below 0.05 too).*"]
    return "\n".join(lines)


def _methods_short(comparisons: list[dict]) -> str:
    """The comparisons' methods in a clause, read from their own method sentences (lib/stats.py)."""
    accuracy = {c["accuracy"].get("method", "") for c in comparisons}
    auc = {(c.get("roc_auc") or {}).get("method", "") for c in comparisons}
    grouped = any("group" in m for m in accuracy | auc)
    resamples = sorted({c["accuracy"].get("n_resamples") for c in comparisons if c["accuracy"].get("n_resamples")})
    said = [f"accuracy: paired percentile bootstrap{' of groups' if grouped else ''}"
            + (f", {resamples[0]:,} resamples" if len(resamples) == 1 else "") + ", and McNemar's exact test"]
    if any("DeLong" in m for m in auc):
        said.append("ROC-AUC: DeLong's paired variance" + (" (tiles without groups)" if grouped else ""))
    if any("bootstrap" in m for m in auc):
        said.append("ROC-AUC: paired bootstrap of groups")
    return "; ".join(said)


def differences_text(evaluation: dict) -> str:
    """Every pair of runs compared on the same tiles, as a Markdown table (comparisons_table);
    test-time augmentation's comparisons are left to tta_text."""
    pairs = compared(evaluation)
    if not pairs:
        return "No runs were compared on the same labelled tiles (the evaluation found no labels to score them on)."
    return comparisons_table(pairs, evaluation)


def calibration_text(f: RunFacts) -> str:
    """The final run's calibration in a sentence: its expected calibration error over the bins, and
    the largest gap, with what they mean."""
    c = f.held_out.calibration if f.held_out else None
    if not c:
        return f"{f.run}'s calibration was not measured (no labelled held-out tiles)."
    return (f"**Calibration of {f.run}** on the held-out tiles: expected calibration error {c['ece']:.3f} over {c['n_bins']} equal bins of "
            f"the predicted probability of class 1 (the bin-weighted mean gap between the predicted probability and how often the "
            f"tiles were of class 1; 0 for a perfectly calibrated model), largest gap in a bin {c['mce']:.3f}. "
            + (c.get("method", "")[:1].upper() + c.get("method", "")[1:])).strip()


def tta_text(evaluation: dict) -> str:
    """Test-time augmentation against the plain prediction, for each run it was asked for, as
    Markdown (comparison_sentence: paired intervals and McNemar's test); "" when none was."""
    pairs = compared(evaluation, tta=True)
    if not pairs:
        return ""
    return ("**Test-time augmentation** (the mean probability over each tile's 8 flips and right-angle rotations) against the plain "
            "prediction of the same run:\n\n" + comparisons_table(pairs, evaluation))  # fmt: skip


def calibration_alt(f: RunFacts) -> str:
    c = f.held_out.calibration if f.held_out else None
    if not c:
        return ""
    return (f"Reliability diagram of {f.run}: for each of {c['n_bins']} bins of the predicted probability of class 1, the fraction of "
            f"tiles that were of class 1, against the diagonal of perfect calibration; expected calibration error {c['ece']:.3f}.")


def differences_alt(evaluation: dict) -> str:
    pairs = compared(evaluation)
    told = [c for c in pairs if verdict(c) != "not told apart"]
    return (f"{len(pairs)} comparisons of two runs on the same tiles, each the later run's accuracy (left, in points) and ROC-AUC "
            f"(right) minus the earlier's, as a point with its paired 95 % interval beside a red line at 0; {len(told)} of them "
            "exclude 0 and are drawn black, the others grey.")  # fmt: skip
