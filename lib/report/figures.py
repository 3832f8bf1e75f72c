"""Every figure the notebooks and the report show: curves, filters, confusion matrix, ROC."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")
OURS_STYLE = {"color": "tab:blue", "marker": ".", "label": "this workbook"}
ORIGINAL_STYLE = {"color": "tab:orange", "marker": "x", "linestyle": "none", "label": "original (logged epochs)"}


def plot_curves(history: list[dict], logged_epochs: list[dict] = (), title: str = ""):
    """The original's four TensorBoard curves, ours as lines and the original's logged epochs as
    crosses on the same epoch axis. Losses are sums over batches, as the original logged them."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, metric in zip(axes, METRICS):
        ax.plot([r["epoch"] for r in history], [r[metric] for r in history], **OURS_STYLE)
        if logged_epochs:
            ax.plot([r["epoch"] for r in logged_epochs], [r[metric] for r in logged_epochs], **ORIGINAL_STYLE)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        if metric.endswith("accuracy"):
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _filter_grid(weight: torch.Tensor, max_out: int, max_in: int) -> np.ndarray:
    """Filters as one grey image: a row per output channel, a column per input channel, each
    kernel scaled to its own range so that its pattern shows."""
    w = weight.detach().float().cpu()[:max_out, :max_in]
    n_out, n_in, kh, kw = w.shape
    grid = np.full((n_out * (kh + 1) - 1, n_in * (kw + 1) - 1), np.nan)
    for o in range(n_out):
        for i in range(n_in):
            k = w[o, i].numpy()
            span = k.max() - k.min()
            grid[o * (kh + 1) : o * (kh + 1) + kh, i * (kw + 1) : i * (kw + 1) + kw] = (k - k.min()) / (span + 1e-12)
    return grid


def plot_filters(layers: list[tuple[str, torch.Tensor, torch.Tensor]], max_out: int = 8, max_in: int = 8, title: str = ""):
    """Each convolution layer's filters before and after training, as grey-scale grids (as the
    original showed them): the first `max_out` output by `max_in` input channels of each layer.
    `layers`: (name, weight before, weight after)."""
    fig, axes = plt.subplots(len(layers), 2, figsize=(7, 2.6 * len(layers)), squeeze=False)
    cmap = plt.get_cmap("gray").copy()
    cmap.set_bad("white")
    for row, (name, before, after) in zip(axes, layers):
        shape = "x".join(map(str, before.shape))
        for ax, weight, when in zip(row, (before, after), ("before", "after")):
            ax.imshow(_filter_grid(weight, max_out, max_in), cmap=cmap, interpolation="nearest")
            ax.set_title(f"{name} [{shape}] {when}", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix, title: str = "Confusion matrix (test tiles)"):
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(4, 3.4))
    sns.heatmap(np.asarray(matrix), annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=["0 normal", "1 cancer"], yticklabels=["0 normal", "1 cancer"])  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_roc(labels, scores, auc: float | None, title: str = "ROC curve (test tiles)"):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}" if auc is not None else None)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    if auc is not None:
        ax.legend(loc="lower right")
    fig.tight_layout()
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
    fig, axes = plt.subplots(2, len(tiles), figsize=(1.6 * len(tiles), 3.5), squeeze=False)
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
