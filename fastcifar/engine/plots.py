"""PNG figures of a run: training curves and the confusion matrix (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fastcifar import atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict], path: str | os.PathLike) -> None:
    """Loss, accuracy and learning rate per epoch, from metrics.jsonl records, to one PNG (written atomically).

    Series a record lacks (no val split, eval skipped that epoch) are simply not drawn there.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    epochs = [r["epoch"] + 1 for r in records]  # 1-based on the axis, as printed in the console
    panels = (
        (axes[0], "loss", ("train_loss", "val_loss", "test_loss")),
        (axes[1], "top-1 accuracy", ("train_acc", "val_acc", "test_acc")),
        (axes[2], "learning rate (end of epoch)", ("lr",)),
    )
    for ax, title, keys in panels:
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, records) if r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(cm: torch.Tensor, class_names: list[str], path: str | os.PathLike, title: str = "") -> None:
    """Row-normalized confusion matrix (share of each true class) as a PNG; class names on the axes up to 30 classes."""
    plt = _pyplot()
    cm = cm.detach().cpu().double()
    shares = cm / cm.sum(dim=1, keepdim=True).clamp_min(1)  # [C, C], rows sum to 1
    n = cm.shape[0]
    side = min(4 + 0.35 * n, 24)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    if n <= 12:  # counts are readable only on small matrices
        for t in range(n):
            for p in range(n):
                ax.text(p, t, int(cm[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if shares[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: str | os.PathLike) -> None:
    with atomic.atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
