"""Every figure the notebooks and the report show: curves, filters, confusion matrix, ROC, reliability."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")
OURS_STYLE = {"color": "tab:blue", "marker": ".", "label": "this workbook"}
ORIGINAL_STYLE = {"color": "tab:orange", "marker": "x", "linestyle": "none", "label": "original (logged epochs)"}


def plot_curves(history: list[dict], logged_epochs: list[dict] = (), title: str = "", epochs: int | None = None, note: str = ""):
    """The original's four TensorBoard curves on the run's own epoch axis (0 to epochs - 1, as both
    logs count): ours as lines, the original's logged epochs as crosses where they fall within it.
    `note` (what the original logged beyond, results.logged_beyond) is written under the axes.
    Losses are sums over batches, as the original logged them. Returns the figure."""
    epochs = epochs or len(history)
    shown = [r for r in logged_epochs if r["epoch"] < epochs]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.3))
    for ax, metric in zip(axes, METRICS):
        ax.plot([r["epoch"] for r in history], [r[metric] for r in history], **OURS_STYLE)
        if shown:
            ax.plot([r["epoch"] for r in shown], [r[metric] for r in shown], **ORIGINAL_STYLE)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch (from 0)", fontsize=9)
        ax.set_xlim(-0.5, epochs - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if metric.endswith("accuracy"):
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if note:
        fig.subplots_adjust(bottom=0.3)
        fig.text(0.01, 0.01, note, fontsize=9, style="italic")
    return fig


def plot_runs_compared(facts: dict) -> "plt.Figure":
    """Every run on one figure (`facts`: {run: lib.report.facts.RunFacts}): validation accuracy per
    epoch of each, over its own epochs, beside its validation majority rate; and, for the runs whose
    best checkpoint was scored on held-out tiles, accuracy, balanced accuracy and ROC-AUC as bars with
    each run's majority-class rate as a dashed line. Returns the figure."""
    scored = {run: f for run, f in facts.items() if f.held_out}
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(12 if scored else 6.5, 3.2), squeeze=False)
    ax = axes[0, 0]
    for k, (run, f) in enumerate(facts.items()):
        color = f"C{k}"
        ax.plot([r["epoch"] for r in f.history], [r["valid_accuracy"] for r in f.history], marker=".", color=color, label=run)
        if f.valid_majority_rate is not None:
            ax.axhline(f.valid_majority_rate, color=color, linestyle=":", linewidth=0.8)
    ax.set(title="validation accuracy per epoch (dotted: each split's majority rate)", xlabel="epoch (from 0)", ylim=(0, 1.02))
    ax.title.set_fontsize(10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if scored:
        ax = axes[0, 1]
        names, width = list(scored), 0.26
        x = np.arange(len(names))
        for k, (key, label) in enumerate((("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC-AUC"))):
            values = [scored[run].held_out.metrics.get(key) for run in names]
            bars = ax.bar(x + (k - 1) * width, [v if v is not None else 0 for v in values], width, label=label, color=f"C{k + 4}",
                          yerr=_interval_errors([scored[run].held_out.metrics for run in names], key), capsize=2,
                          error_kw={"elinewidth": 0.8, "ecolor": "0.25"})  # fmt: skip
            ax.bar_label(bars, labels=[f"{v:.2f}" if v is not None else "n/a" for v in values], fontsize=7, padding=1)
        for i, run in enumerate(names):
            ax.hlines(scored[run].held_out.metrics["majority_rate"], i - 1.5 * width, i + 1.5 * width, colors="black", linestyles="--",
                      label="majority rate" if i == 0 else None)  # fmt: skip
        where = "test tiles" if all(f.held_out.scored_on == "test" for f in scored.values()) else "held-out tiles"
        ax.set(title=f"best checkpoint on the {where} (whiskers: 95 % intervals)", xticks=x, ylim=(0, 1.3), yticks=np.arange(0, 1.01, 0.2))
        ax.set_xticklabels(names, fontsize=8)
        ax.title.set_fontsize(10)
        ax.legend(fontsize=7, loc="upper center", ncols=4, frameon=False)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _interval_errors(metrics: list[dict], key: str) -> np.ndarray | None:
    """(2, N) distances from each value down to its interval's low end and up to its high end, for
    matplotlib's yerr; None when any of them carries no interval (an older evaluation)."""
    errors = []
    for m in metrics:
        interval = (m.get("intervals") or {}).get(key) or {}
        if m.get(key) is None or interval.get("low") is None or interval.get("high") is None:
            return None
        errors.append((m[key] - interval["low"], interval["high"] - m[key]))
    return np.clip(np.array(errors).T, 0, None)


def plot_two_labs(scores: dict[str, tuple[dict, dict | None]], same: str = "same laboratory", other: str = "other laboratory"):
    """Per run, its best checkpoint's accuracy and ROC-AUC on the held-out tiles (`same`) and on the
    second test set (`other`) as points with their 95 % intervals, one panel per score; a run's
    drop between the two is the distance between its two points. `scores`: {run: (metrics on the
    held-out tiles, metrics on the second set or None)}, lib/metrics.py score_predictions' dicts
    with "intervals". Returns the figure."""
    runs = list(scores)
    fig, axes = plt.subplots(1, 2, figsize=(12, 2.9))
    y = np.arange(len(runs))[::-1]
    for ax, (key, label) in zip(axes, (("accuracy", "accuracy"), ("roc_auc", "ROC-AUC"))):
        for offset, which, name, style in ((0.12, 0, same, {"color": "tab:blue", "marker": "o"}),
                                           (-0.12, 1, other, {"color": "tab:red", "marker": "s"})):  # fmt: skip
            shown = [(yy, scores[run][which]) for yy, run in zip(y, runs) if scores[run][which] and scores[run][which].get(key) is not None]
            if not shown:
                continue
            errors = _interval_errors([m for _, m in shown], key)
            ax.errorbar([m[key] for _, m in shown], [yy + offset for yy, _ in shown], xerr=errors, linestyle="none", capsize=3,
                        label=name, **style)  # fmt: skip
        ax.set_yticks(y, runs, fontsize=8)
        ax.set_xlim(0.4 if key == "roc_auc" else 0.3, 1.0)
        ax.set_title(f"{label} (bars: 95 % intervals)", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.subplots_adjust(bottom=0.28)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncols=2, frameon=False)  # below the axes: it hides no run
    return fig


def plot_differences(comparisons: list[dict], second: str = "second set"):
    """Each compared pair of runs (lib/report/evaluate.py compare_evaluations' items), later minus
    earlier on the same tiles, as a point with its paired 95 % interval: accuracy in points on the
    left, ROC-AUC on the right, a line at 0 (no difference). A row whose interval excludes 0 is drawn
    dark, one that does not in grey. Returns the figure."""
    rows = [c for c in comparisons if c["on"] == "test"] + [c for c in comparisons if c["on"] != "test"]
    labels = [f"{c['b']} \u2212 {c['a']}" + ("" if c["on"] == "test" else f" ({second})") for c in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.8 + 0.3 * len(rows)), sharey=True)
    y = np.arange(len(rows))[::-1]
    for ax, (key, scale, unit) in zip(axes, (("accuracy", 100, "accuracy difference, points"), ("roc_auc", 1, "ROC-AUC difference"))):
        for yy, c in zip(y, rows):
            d = c.get(key) or {}
            if d.get("value") is None or d.get("low") is None:
                continue
            color = "black" if d.get("told_apart") else "0.6"
            ax.plot([scale * d["low"], scale * d["high"]], [yy, yy], color=color, linewidth=1.5)
            ax.plot([scale * d["value"]], [yy], "o", color=color, markersize=4)
        ax.axvline(0, color="tab:red", linewidth=0.8)
        ax.set_xlabel(unit, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, labels, fontsize=9)
    axes[0].set_title("later run minus earlier, on the same tiles (black: interval excludes 0)", fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def plot_stain_draws(tile: torch.Tensor, draws: torch.Tensor, captions: list[str], title: str = ""):
    """A tile (3, H, W) uint8 and its stain augmentation draws (N, 3, H, W) float in [0, 1], side by
    side, each captioned (its draw's factors). Returns the figure."""
    images = [tile.float().div(255)] + list(draws)
    fig, axes = plt.subplots(1, len(images), figsize=(1.5 * len(images), 1.9))
    for ax, image, caption in zip(axes, images, ["the tile", *captions]):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(caption, fontsize=6)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def show_figure(fig, alt: str) -> None:
    """Display a figure in the notebook with `alt` as its alternative text (the report's HTML
    template writes it into the <img>), then close it so that it is not shown a second time."""
    from IPython.display import display

    display(fig, metadata={"alt": alt})
    plt.close(fig)


def _filter_grid(weight: torch.Tensor, max_out: int, max_in: int, own_scale: bool = True) -> np.ndarray:
    """Filters as one image: a row per output channel, a column per input channel, kernels apart by
    a blank (NaN) line. `own_scale`: each kernel scaled to its own range so that its pattern shows
    (as the original showed them); otherwise the values as they are."""
    w = weight.detach().float().cpu()[:max_out, :max_in]
    n_out, n_in, kh, kw = w.shape
    grid = np.full((n_out * (kh + 1) - 1, n_in * (kw + 1) - 1), np.nan)
    for o in range(n_out):
        for i in range(n_in):
            k = w[o, i].numpy()
            if own_scale:
                k = (k - k.min()) / (k.max() - k.min() + 1e-12)
            grid[o * (kh + 1) : o * (kh + 1) + kh, i * (kw + 1) : i * (kw + 1) + kw] = k
    return grid


def plot_filters(layers: list[tuple[str, torch.Tensor, torch.Tensor]], max_out: int = 8, max_in: int = 8, title: str = ""):
    """Each convolution layer's filters in a column of three: before and after training as grey-scale
    grids (each kernel on its own scale, as the original showed them), and after minus before on a
    blue-white-red scale symmetric around 0 with its own range per layer (stated above it), so that
    what training changed shows even where before and after look alike. The first `max_out` output
    by `max_in` input channels of each layer; `layers`: (name, weight before, weight after).
    Returns the figure."""
    fig, axes = plt.subplots(3, len(layers), figsize=(1.6 * len(layers) + 0.9, 3.9), squeeze=False)
    grey, diverging = plt.get_cmap("gray").copy(), plt.get_cmap("RdBu_r").copy()
    grey.set_bad("white"), diverging.set_bad("white")
    for column, (name, before, after) in zip(axes.T, layers):
        change = (after.float() - before.float())[:max_out, :max_in]
        span = float(change.abs().max()) or 1e-12
        moved = float((after.float() - before.float()).norm() / (before.float().norm() + 1e-12))
        shape = "x".join(map(str, before.shape))
        column[0].imshow(_filter_grid(before, max_out, max_in), cmap=grey, interpolation="nearest")
        column[0].set_title(f"{name}\n[{shape}]", fontsize=8)
        column[1].imshow(_filter_grid(after, max_out, max_in), cmap=grey, interpolation="nearest")
        column[2].imshow(_filter_grid(change, max_out, max_in, own_scale=False), cmap=diverging, vmin=-span, vmax=span, interpolation="nearest")
        column[2].set_title(f"±{span:.2g}; moved {100 * moved:.1f} %", fontsize=8)
        for ax in column:
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    for ax, label in zip(axes[:, 0], ("before", "after", "after − before")):
        ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix, title: str = "Confusion matrix (test tiles)", ax=None):
    """The 2x2 confusion matrix [[true 0 predicted 0, ...], ...] as an annotated heat map; on `ax`
    when given, else in a figure of its own. Returns the figure."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(4, 3.4)) if ax is None else (ax.figure, ax)
    sns.heatmap(np.asarray(matrix), annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=["0 normal", "1 cancer"], yticklabels=["0 normal", "1 cancer"])  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_roc(labels, scores, auc: float | None, title: str = "ROC curve (test tiles)", ax=None):
    """The ROC curve of class-1 scores against 0/1 labels, the diagonal of chance dashed; on `ax`
    when given, else in a figure of its own. Returns the figure."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 3.6)) if ax is None else (ax.figure, ax)
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}" if auc is not None else None)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    if auc is not None:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_evaluation(matrix, labels, scores, auc: float | None, run: str):
    """A run's confusion matrix and, where its labels hold both classes, its ROC curve, side by side
    (one figure, half the height of two). Returns the figure."""
    with_roc = labels is not None and auc is not None
    fig, axes = plt.subplots(1, 2 if with_roc else 1, figsize=(8.5 if with_roc else 4.2, 3.3), squeeze=False)
    plot_confusion_matrix(matrix, f"Confusion matrix, {run}", ax=axes[0, 0])
    if with_roc:
        plot_roc(labels, scores, auc, f"ROC curve, {run}", ax=axes[0, 1])
    return fig


def use_print_quality() -> None:
    """Figures as PNG at twice the screen resolution (about 200 dpi): sharp on paper and in PDF."""
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("retina")


def plot_tiles(tiles: torch.Tensor, captions: list[str], wrong: list[bool] | None = None, columns: int = 8, title: str = ""):
    """A grid of tiles (N, 3, H, W) uint8 with a caption over each; `wrong` ones framed in red."""
    rows = int(np.ceil(len(tiles) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.75 * rows), squeeze=False)
    wrong = wrong or [False] * len(tiles)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, caption, is_wrong in zip(axes.flat, tiles, captions, wrong):
        ax.imshow(tile.permute(1, 2, 0).numpy())
        ax.set_title(caption, fontsize=7, color="red" if is_wrong else "black")
        if is_wrong:
            ax.axis("on")
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red"), spine.set_linewidth(2.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_feature_maps(tile: torch.Tensor, maps: dict[str, torch.Tensor], per_stage: int = 8, title: str = ""):
    """One tile (3, H, W) float and its activations after each stage: the first `per_stage` channels."""
    fig, axes = plt.subplots(len(maps), per_stage + 1, figsize=(1.4 * (per_stage + 1), 1.5 * len(maps)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(tile.permute(1, 2, 0).numpy())
    axes[0, 0].set_title("input", fontsize=8)
    for row, (stage, activation) in zip(axes, maps.items()):
        row[1].set_title(stage, fontsize=8, loc="left")
        for ax, channel in zip(row[1:], activation[:per_stage]):
            ax.imshow(channel.numpy(), cmap="viridis")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_grad_cam(tiles: torch.Tensor, cams: torch.Tensor, captions: list[str], wrong: list[bool], title: str = ""):
    """Tiles (N, 3, H, W) uint8 with their Grad-CAM heat maps laid over them."""
    fig, axes = plt.subplots(2, len(tiles), figsize=(1.6 * len(tiles), 3.3), squeeze=False)
    for k, (tile, cam, caption, is_wrong) in enumerate(zip(tiles, cams, captions, wrong)):
        image = tile.permute(1, 2, 0).numpy()
        axes[0, k].imshow(image)
        axes[0, k].set_title(caption, fontsize=7, color="red" if is_wrong else "black")
        axes[1, k].imshow(image)
        axes[1, k].imshow(cam.numpy(), cmap="jet", alpha=0.45)
        axes[0, k].axis("off"), axes[1, k].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reliability(calib: dict, title: str = ""):
    """The reliability diagram (Niculescu-Mizil & Caruana 2005) of lib.stats.calibration's dict: for
    each bin with tiles, the observed fraction of class 1 as a bar over the bin and a point at the
    bin's mean predicted probability, the diagonal of perfect calibration dashed, ECE and MCE under
    the title; below, the tiles per bin, so that a bar resting on a handful of tiles shows as such.
    Returns the figure."""
    bins = calib["bins"]
    filled = [b for b in bins if b["count"]]
    fig, (ax, counts_ax) = plt.subplots(2, 1, figsize=(3.6, 3.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    ax.bar([b["lower"] for b in filled], [b["observed"] for b in filled], [b["upper"] - b["lower"] for b in filled],
           align="edge", color="tab:blue", alpha=0.3, edgecolor="tab:blue", label="per bin")  # fmt: skip
    ax.plot([b["mean_predicted"] for b in filled], [b["observed"] for b in filled], "o", color="tab:blue", markersize=4,
            label="at its mean prediction")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), ylabel="observed fraction of class 1")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    heading = title or f"Reliability, {calib['n']:,} tiles in {calib['n_bins']} bins"
    ax.set_title(f"{heading}\nECE {calib['ece']:.3f}, MCE {calib['mce']:.3f}", fontsize=10)
    counts_ax.bar([b["lower"] for b in bins], [b["count"] for b in bins], [b["upper"] - b["lower"] for b in bins], align="edge",
                  color="grey", edgecolor="white")  # fmt: skip
    counts_ax.set(xlabel="predicted probability of class 1 (cancer)", ylabel="tiles")
    counts_ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    fig.tight_layout()
    return fig
