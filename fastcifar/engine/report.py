"""What a run tells the user: the console banner and epoch lines, env.json, summary.json, the final figures.

Takes plain values (`RunFacts`, `Outcome`, records), never the Trainer, the way torchtitan's MetricsProcessor
takes numbers: the trainer depends on this module, not the other way round. Called on rank 0 only.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from fastcifar.config import Config
from fastcifar.data.source import badge, warning
from fastcifar.engine.metrics import write_confusion
from fastcifar.engine.plots import plot_confusion, plot_curves
from fastcifar.engine.run_dir import environment, write_json
from fastcifar.provenance import device_name

SUMMARY = "summary.json"


@dataclass(frozen=True)
class RunFacts:
    """What a run is, fixed when it starts: printed in the banner and copied into summary.json."""

    cfg: Config
    num_classes: int
    class_names: list[str]
    source: str  # official | synthetic | custom (fastcifar.data.source): labelled everywhere a run reports
    synthetic: bool  # source == "synthetic", kept for readers of older summaries
    device: str  # e.g. "cpu", "cuda:0"
    world_size: int  # processes
    steps_per_epoch: int  # optimizer steps per epoch and process
    eval_counts: dict[str, int]  # images per eval split ("val", "test")
    select_metric: str  # the metric best.pt is chosen by
    distill: bool  # a KD teacher is in use


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for the final summary."""

    best_epoch: int
    best_value: float | None  # of select_metric
    stopped_epoch: int | None  # early stop, else None
    wall_s: float  # training + evaluation + checkpoint time of all epochs, across resumes
    ckpt_s: float  # of which the training loop was blocked by checkpoints (snapshot + waiting for a write)
    first_warmup_s: float | None  # the run's very first step (torch.compile, cuDNN autotune)
    resumes: int


def announce(console: Console, f: RunFacts, run_dir: Path, start_epoch: int, resumed: bool) -> None:
    """Banner: where the run goes, what it trains on what, and a loud label on synthetic data."""
    cfg, c = f.cfg, console
    verb = f"resuming at epoch {start_epoch + 1}" if resumed else "training"
    c.rule(f"[bold]{cfg.name}[/]: {verb}")
    c.print(f"run dir   {run_dir}")
    data = cfg.data
    label = f"{data.dataset} ({data.label}, {f.num_classes} classes)" if data.dataset == "cifar100" else data.dataset
    c.print(f"data      {label}, loader {data.loader}, batch {data.batch_size} x {f.world_size} process(es), "
            f"{f.steps_per_epoch} steps/epoch")
    splits = ", ".join(f"{name} {count}" for name, count in f.eval_counts.items())
    c.print(f"eval      {splits} images (gpu loader), select on {f.select_metric}"
            f"{f', {cfg.train.tta} TTA' if cfg.train.tta != 'none' else ''}")
    compiled = f"on ({cfg.train.compile_mode})" if cfg.train.compile else "off"
    c.print(f"model     {cfg.model.name} ({cfg.model.head} head) at {cfg.augment.image_size} px on {f.device}, "
            f"amp {cfg.train.amp}, compile {compiled}")
    if f.distill:
        kd = cfg.distill
        c.print(f"distill   teacher {kd.teacher} at {kd.teacher_image_size} px, T={kd.temperature}, alpha={kd.alpha}")
    if warning(f.source):
        c.print(warning(f.source))


def print_epoch(console: Console, f: RunFacts, r: dict, improved: bool) -> None:
    """One line per epoch: losses and accuracies, lr, throughput, data-wait share, time."""
    parts = [f"epoch {r['epoch'] + 1:>3}/{f.cfg.train.epochs}", f"train {r['train_loss']:.4f} {r['train_acc']:6.2%}"]
    for split in ("val", "test"):
        if r.get(f"{split}_acc") is not None:
            parts.append(f"{split} {r[f'{split}_loss']:.4f} {r[f'{split}_acc']:6.2%} top5 {r[f'{split}_top5']:6.2%}")
    parts.append(f"lr {r['lr']:.2e}")
    if r.get("img_per_s"):
        parts.append(f"{r['img_per_s']:,.0f} img/s")
    if r.get("data_wait") is not None:
        parts.append(f"wait {r['data_wait']:.0%}")
    if r.get("device_wait") is not None:  # CUDA only: the device idle between steps (engine/device_wait.py)
        parts.append(f"device idle {r['device_wait']:.0%}")
    parts.append(f"{r['train_s'] + r.get('eval_s', 0.0) + r.get('ckpt_s', 0.0):.1f}s")
    if r.get("ckpt_s"):
        parts.append(f"(checkpoint {r['ckpt_s']:.2f}s)")
    if r.get("warmup_s") is not None:
        step = "compile + first step" if f.cfg.train.compile else "first step"
        parts.append(f"warm-up: first batch {r['loader_warmup_s']:.1f}s, {step} {r['warmup_s']:.1f}s (not in img/s)")
    console.print("  ".join(parts) + (" [green]*[/]" if improved else ""), soft_wrap=True)


def static_summary(f: RunFacts) -> dict:
    cfg = f.cfg
    return {
        "name": cfg.name,
        "description": cfg.description,
        "dataset": cfg.data.dataset,
        "label": cfg.data.label,
        "num_classes": f.num_classes,
        "source": f.source,  # official | synthetic | custom
        "synthetic": f.synthetic,
        "loader": cfg.data.loader,
        "device": f.device,
        "device_name": device_name(torch.device(f.device)),
        "world_size": f.world_size,
        "select_metric": f.select_metric,
        "epochs": cfg.train.epochs,
    }


def write_start(run_dir: Path, f: RunFacts) -> None:
    """env.json (provenance) and a `running` summary.json, so an unfinished run is still recognizable."""
    write_json(run_dir / "env.json", environment(torch.device(f.device)))
    write_json(run_dir / SUMMARY, {"status": "running", **static_summary(f)})


def write_final(console: Console, run_dir: Path, f: RunFacts, out: Outcome, records: list[dict], split: str,
                confusion: torch.Tensor, best_eval: dict) -> None:
    """Confusion files on the selection split with the best weights, curves.png, and the final summary.json.

    Args:
        records: every epoch record of the run (metrics.jsonl).
        split: the selection split ("val" or "test"); confusion: its int64 [C, C] matrix with the best weights.
        best_eval: `{split}_acc` etc. re-measured with best.pt.
    """
    pairs = write_confusion(confusion, f.class_names, run_dir, split)
    title = f"{f.cfg.name}: {split} split, best epoch {out.best_epoch + 1}"
    plot_confusion(confusion, f.class_names, run_dir / "confusion.png", title=title)
    plot_curves(records, run_dir / "curves.png")
    best = next((r for r in records if r["epoch"] == out.best_epoch), {})
    rates = [r["img_per_s"] for r in records if r.get("img_per_s")]
    waits = [r["data_wait"] for r in records if r.get("data_wait") is not None]
    stopped = out.stopped_epoch is not None
    device_waits = [r["device_wait"] for r in records if r.get("device_wait") is not None]
    summary = {
        "status": "early-stopped" if stopped else "done",
        **static_summary(f),
        "best_epoch": out.best_epoch,
        "best_value": out.best_value,  # of select_metric
        "best_acc": best_eval.get(f"{split}_acc"),  # accuracy on the selection split, re-measured with best.pt
        "best_test_acc": best.get("test_acc"),
        "last_test_acc": records[-1].get("test_acc") if records else None,
        "last_val_acc": records[-1].get("val_acc") if records else None,
        "epochs_done": len(records),
        "early_stopped": stopped,
        "stopped_epoch": out.stopped_epoch,
        "wall_s": out.wall_s,  # includes ckpt_s
        "ckpt_s": out.ckpt_s,  # training blocked by checkpoints: host snapshots + waits for the writer thread
        "img_per_s": statistics.median(rates) if rates else None,  # median over epochs, warm-up step excluded
        "data_wait": statistics.median(waits) if waits else None,  # host blocked in next(loader) / train time
        "device_wait": statistics.median(device_waits) if device_waits else None,  # CUDA: device idle between steps
        "compile": f.cfg.train.compile,
        "compile_s": out.first_warmup_s if f.cfg.train.compile else None,  # first step incl. torch.compile
        "warmup_s": out.first_warmup_s,
        "loader_warmup_s": records[0].get("loader_warmup_s") if records else None,  # first batch of the first epoch
        "resumes": out.resumes,
        "confusion_split": split,
        "most_confused": pairs[:5],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / SUMMARY, summary)
    acc = summary["best_acc"]
    console.print(
        f"[bold]best[/] {f.select_metric} {out.best_value:.4g} at epoch {out.best_epoch + 1}"
        + (f" ({split} acc {acc:.2%})" if acc is not None else "")
        + f"; {summary['epochs_done']} epochs in {out.wall_s:.1f}s (checkpoints {out.ckpt_s:.1f}s)"
        + f"; results in {run_dir}"
        + (f"  {badge(f.source)}" if badge(f.source) else ""),
        soft_wrap=True,
    )


def read_summary(run_dir) -> dict | None:
    path = run_dir / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None
