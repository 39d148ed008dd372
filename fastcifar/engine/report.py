"""What a run tells the user: the console banner and epoch lines, env.json, summary.json, the final figures.

Called by the trainer on rank 0 only.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING

from fastcifar.engine.metrics import write_confusion
from fastcifar.engine.plots import plot_confusion, plot_curves
from fastcifar.engine.run_dir import environment, write_json
from fastcifar.provenance import device_name

if TYPE_CHECKING:
    from fastcifar.engine.trainer import Trainer

SUMMARY = "summary.json"


def announce(t: "Trainer") -> None:
    """Banner: where the run goes, what it trains on what, and a loud label on synthetic data."""
    cfg, c = t.cfg, t.console
    verb = f"resuming at epoch {t.start_epoch + 1}" if t.resumed else "training"
    c.rule(f"[bold]{cfg.name}[/]: {verb}")
    c.print(f"run dir   {t.run_dir}")
    label = f"{cfg.data.dataset} ({cfg.data.label}, {t.data.num_classes} classes)" if cfg.data.dataset == "cifar100" else cfg.data.dataset
    c.print(f"data      {label}, loader {cfg.data.loader}, batch {cfg.data.batch_size} x {t.dist.world_size} process(es), {len(t.train_loader)} steps/epoch")
    splits = ", ".join(f"{name} {count}" for name, count in t.eval_counts.items())
    c.print(f"eval      {splits} images (gpu loader), select on {t.selector.metric}{f', {cfg.train.tta} TTA' if cfg.train.tta != 'none' else ''}")
    c.print(f"model     {cfg.model.name} ({cfg.model.head} head) at {cfg.augment.image_size} px on {t.device}, amp {cfg.train.amp}, compile {'on (' + cfg.train.compile_mode + ')' if cfg.train.compile else 'off'}")
    if t.teacher is not None:
        c.print(f"distill   teacher {cfg.distill.teacher} at {cfg.distill.teacher_image_size} px, T={cfg.distill.temperature}, alpha={cfg.distill.alpha}")
    if t.data.synthetic:
        c.print("[bold black on yellow] SYNTHETIC DATA [/] this dataset is a generated stand-in: its accuracy says nothing about CIFAR.")


def print_epoch(t: "Trainer", r: dict, improved: bool) -> None:
    """One line per epoch: losses and accuracies, lr, throughput, data-wait share, time."""
    parts = [f"epoch {r['epoch'] + 1:>3}/{t.cfg.train.epochs}", f"train {r['train_loss']:.4f} {r['train_acc']:6.2%}"]
    for split in ("val", "test"):
        if r.get(f"{split}_acc") is not None:
            parts.append(f"{split} {r[f'{split}_loss']:.4f} {r[f'{split}_acc']:6.2%} top5 {r[f'{split}_top5']:6.2%}")
    parts.append(f"lr {r['lr']:.2e}")
    if r.get("img_per_s"):
        parts.append(f"{r['img_per_s']:,.0f} img/s")
    if r.get("data_wait") is not None:
        parts.append(f"wait {r['data_wait']:.0%}")
    parts.append(f"{r['train_s'] + r.get('eval_s', 0.0):.1f}s")
    if r.get("warmup_s") is not None:
        step = "compile + first step" if t.cfg.train.compile else "first step"
        parts.append(f"warm-up: first batch {r['loader_warmup_s']:.1f}s, {step} {r['warmup_s']:.1f}s (not in img/s)")
    t.console.print("  ".join(parts) + (" [green]*[/]" if improved else ""), soft_wrap=True)


def static_summary(t: "Trainer") -> dict:
    cfg = t.cfg
    return {
        "name": cfg.name,
        "description": cfg.description,
        "dataset": cfg.data.dataset,
        "label": cfg.data.label,
        "num_classes": t.data.num_classes,
        "synthetic": t.data.synthetic,
        "loader": cfg.data.loader,
        "device": str(t.device),
        "device_name": device_name(t.device),
        "world_size": t.dist.world_size,
        "select_metric": t.selector.metric,
        "epochs": cfg.train.epochs,
    }


def write_start(t: "Trainer") -> None:
    """env.json (provenance) and a `running` summary.json, so an unfinished run is still recognizable."""
    write_json(t.run_dir / "env.json", environment(t.device))
    write_json(t.run_dir / SUMMARY, {"status": "running", **static_summary(t)})


def write_final(t: "Trainer", split: str, best_eval: dict) -> None:
    """Confusion files on the selection split with the best weights, curves.png, and the final summary.json."""
    records = t.log.records()
    cm = t.confusion[split]
    pairs = write_confusion(cm, t.data.class_names, t.run_dir, split)
    plot_confusion(cm, t.data.class_names, t.run_dir / "confusion.png", title=f"{t.cfg.name}: {split} split, best epoch {t.selector.best_epoch + 1}")
    plot_curves(records, t.run_dir / "curves.png")
    best = next((r for r in records if r["epoch"] == t.selector.best_epoch), {})
    rates = [r["img_per_s"] for r in records if r.get("img_per_s")]
    waits = [r["data_wait"] for r in records if r.get("data_wait") is not None]
    summary = {
        "status": "early-stopped" if t.stopper.stopped_epoch is not None else "done",
        **static_summary(t),
        "best_epoch": t.selector.best_epoch,
        "best_value": t.selector.best,  # of select_metric
        "best_acc": best_eval.get(f"{split}_acc"),  # accuracy on the selection split, re-measured with best.pt
        "best_test_acc": best.get("test_acc"),
        "last_test_acc": records[-1].get("test_acc") if records else None,
        "last_val_acc": records[-1].get("val_acc") if records else None,
        "epochs_done": len(records),
        "early_stopped": t.stopper.stopped_epoch is not None,
        "stopped_epoch": t.stopper.stopped_epoch,
        "wall_s": t.wall_s,
        "img_per_s": statistics.median(rates) if rates else None,  # median over epochs, warm-up step excluded
        "data_wait": statistics.median(waits) if waits else None,
        "compile": t.cfg.train.compile,
        "compile_s": t.first_warmup_s if t.cfg.train.compile else None,  # first step incl. torch.compile
        "warmup_s": t.first_warmup_s,
        "loader_warmup_s": records[0].get("loader_warmup_s") if records else None,  # first batch of the first epoch
        "resumes": t.resumes,
        "confusion_split": split,
        "most_confused": pairs[:5],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(t.run_dir / SUMMARY, summary)
    acc = summary["best_acc"]
    t.console.print(
        f"[bold]best[/] {t.selector.metric} {t.selector.best:.4g} at epoch {t.selector.best_epoch + 1}"
        + (f" ({split} acc {acc:.2%})" if acc is not None else "")
        + f"; {summary['epochs_done']} epochs in {t.wall_s:.1f}s; results in {t.run_dir}"
        + ("  [bold black on yellow] SYNTHETIC DATA [/]" if t.data.synthetic else ""),
        soft_wrap=True,
    )


def read_summary(run_dir) -> dict | None:
    path = run_dir / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None
