"""`evaluate(target)`: score a finished run's best checkpoint (or any fastcifar checkpoint) on one split."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fastcifar.config import from_dict
from fastcifar.data.source import label as source_label
from fastcifar.engine.build import eval_augment, model_from_checkpoint
from fastcifar.engine.checkpoint import BEST, load_checkpoint, resolve_checkpoint
from fastcifar.engine.distributed import resolve_device
from fastcifar.engine.inputs import data_info, eval_loader, split_indices
from fastcifar.engine.precision import autocast
from fastcifar.engine.step import eval_pass, summarize_eval
from fastcifar.errors import FastcifarError


def evaluate(
    target: str | os.PathLike,
    split: str = "test",
    tta: bool = False,
    loader: str | None = None,
    root: str | None = None,
    device: str | None = None,
    console: Console | None = None,
) -> dict:
    """Rebuild the model from the checkpoint's saved config, load its evaluation weights, score one split.

    Args:
        target: a run directory (its best.pt is used) or a checkpoint file (best.pt / last.pt).
        split: "test", "val" (the run's held-out part of train; needs data.val_split > 0) or "train".
        tta: also average the softmax of each image's mirror.
        loader: loader to read with (default "gpu": resident and exact).
        root: data root, if the data moved since training (default: the run's data.root / $FASTCIFAR_ROOT).
        device: "auto" (default), "cpu", "cuda", "cuda:N".
        console: where the table is printed (default stdout).

    Returns:
        {"split", "acc", "top5", "loss" (plain CE of the logits, no margin), "images", "epoch", "checkpoint",
        "tta", "synthetic", "source"}; acc and top5 are fractions in [0, 1].
    """
    if split not in ("test", "val", "train"):
        raise FastcifarError(f"Unknown split '{split}'; evaluate test, val or train.")
    path = resolve_checkpoint(target, BEST)
    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    if root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)))
    dev = resolve_device(device or "auto")
    info = data_info(cfg)
    model = model_from_checkpoint(state, str(path), dev, num_classes=info.num_classes)
    if split == "val":
        indices = split_indices(cfg, info.train_count)[1]
        if indices is None:
            raise FastcifarError(
                f"Run '{path.parent}' held out no validation images (data.val_split: 0); evaluate split test or train."
            )
        data = eval_loader(cfg, "train", dev, indices, loader=loader or "gpu")
    else:
        data = eval_loader(cfg, split, dev, loader=loader or "gpu")
    prepare = eval_augment(cfg, info).eval_batch  # as the trainer evaluates: same resize, dtype and autocast
    sums = eval_pass(model, data, prepare, autocast(dev, cfg.train.amp), info.num_classes, tta=tta)
    scores = summarize_eval(sums, split)
    result = {
        "split": split,
        "acc": scores[f"{split}_acc"],
        "top5": scores[f"{split}_top5"],
        "loss": scores[f"{split}_loss"],
        "images": int(sums["count"]),
        "epoch": int(state["epoch"]),
        "checkpoint": str(path),
        "tta": tta,
        "synthetic": info.synthetic,
        "source": info.source,  # official | synthetic | custom
    }
    _print(result, cfg.name, console or Console())
    return result


def _print(r: dict, name: str, console: Console) -> None:
    table = Table(
        title=f"{name}: {Path(r['checkpoint']).name} (epoch {r['epoch'] + 1}) on {r['split']}"
        f"{' + flip TTA' if r['tta'] else ''}"
    )
    for column in ("images", "top-1", "top-5", "loss", "data"):
        table.add_column(column, justify="right")
    table.add_row(f"{r['images']:,}", f"{r['acc']:.2%}", f"{r['top5']:.2%}", f"{r['loss']:.4f}",
                  source_label(r["source"], styled=True))
    console.print(table)
