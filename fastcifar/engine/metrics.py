"""Per-epoch records (metrics.jsonl + metrics.csv), the confusion matrix and its most-confused pairs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import torch

from fastcifar import atomic

JSONL = "metrics.jsonl"
CSV = "metrics.csv"


class MetricsLog:
    """Append one record per epoch to `metrics.jsonl` (every key) and `metrics.csv` (the `fields` columns).

    Each append is flushed and fsynced, so the files always end on a whole record. A resumed run first
    calls `truncate(start_epoch)`: rows of an epoch that was logged but not checkpointed before a crash
    are dropped, and the rerun of that epoch writes them again.

    Args:
        run_dir: the run folder.
        fields: CSV columns in order; keys a record lacks are left empty (e.g. no eval that epoch).
    """

    def __init__(self, run_dir: str | os.PathLike, fields: list[str]):
        self.jsonl = Path(run_dir) / JSONL
        self.csv = Path(run_dir) / CSV
        self.fields = list(fields)

    def append(self, record: dict) -> None:
        line = json.dumps(_plain(record)) + "\n"
        _append(self.jsonl, line)
        new = not self.csv.exists() or self.csv.stat().st_size == 0
        _append(self.csv, _csv_text([record], self.fields, header=new))

    def truncate(self, before_epoch: int) -> None:
        """Keep only records with `epoch < before_epoch` in both files (rewritten atomically)."""
        rows = [r for r in read_jsonl(self.jsonl) if r["epoch"] < before_epoch]
        atomic.write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        atomic.write_text(self.csv, _csv_text(rows, self.fields, header=True))

    def records(self) -> list[dict]:
        return read_jsonl(self.jsonl)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete records of a metrics.jsonl ([] when missing); a torn last line (crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _csv_text(rows: list[dict], fields: list[str], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return buffer.getvalue()


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _plain(record: dict) -> dict:
    """JSON-safe copy: tensors become numbers, NaN/inf become None (JSON has no NaN)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


# ---------------------------------------------------------------------------- confusion


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true, predicted) pairs.

    Args:
        preds: int64 [N] predicted class, any device.
        labels: int64 [N] true class, same device.
        num_classes: C.

    Returns:
        int64 [C, C] on the input's device; row = true class, column = prediction.
    """
    flat = labels.long() * num_classes + preds.long()  # [N] in [0, C*C)
    # scatter_add_ into a static [C*C]: bincount would read max(flat) on the host to size its output (a sync on CUDA)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat)).view(num_classes, num_classes)


def most_confused(cm: torch.Tensor, class_names: list[str], k: int = 10) -> list[dict]:
    """The `k` largest off-diagonal cells: which true class is most often taken for which other class.

    Returns:
        [{"true", "predicted", "count", "share"}], largest count first; share = count / images of the true class.
    """
    cm = cm.detach().cpu().long()
    off = cm.clone()
    off.fill_diagonal_(0)
    totals = cm.sum(dim=1)
    count = int((off > 0).sum())
    values, flat = off.flatten().topk(min(k, count)) if count else (torch.empty(0), torch.empty(0, dtype=torch.long))
    pairs = []
    for value, index in zip(values.tolist(), flat.tolist()):
        true, pred = divmod(index, cm.shape[1])
        pairs.append({"true": class_names[true], "predicted": class_names[pred], "count": int(value),
                      "share": value / max(int(totals[true]), 1)})
    return pairs


def write_confusion(
    cm: torch.Tensor, class_names: list[str], run_dir: str | os.PathLike, split: str, k: int = 20
) -> list[dict]:
    """Write confusion.csv (rows = true class) and most_confused.txt; return the top pairs."""
    run_dir = Path(run_dir)
    cm = cm.detach().cpu().long()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm.tolist()):
        writer.writerow([name, *row])
    atomic.write_text(run_dir / "confusion.csv", buffer.getvalue())
    pairs = most_confused(cm, class_names, k)
    accuracy = cm.diag().sum().item() / max(cm.sum().item(), 1)
    lines = [
        f"most confused pairs on the {split} split ({int(cm.sum())} images, top-1 {accuracy:.2%}); "
        f"share = of the true class",
        "",
    ]
    lines += [f"{p['count']:6d}  {p['share']:6.1%}  {p['true']} -> {p['predicted']}" for p in pairs]
    atomic.write_text(run_dir / "most_confused.txt", "\n".join(lines) + "\n")
    return pairs


# ---------------------------------------------------------------------------- TensorBoard


class TensorBoard:
    """Per-epoch scalars as TensorBoard events under RUN/tb, when `torch.utils.tensorboard` imports; else nothing.

    Args:
        run_dir: the run folder.
        purge_step: on resume, the first epoch to be rerun: events from it on (written before a crash) are dropped.
    """

    def __init__(self, run_dir: str | os.PathLike, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional (the `all` extra); the jsonl/csv logs are the record
            self.writer = None
            return
        self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)

    def log(self, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
