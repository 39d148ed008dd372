"""The real-run view: what a user actually gets from a short `fastcifar train`, not a steady-state window.

A benchmark window leaves out what a run pays between its steps: epoch boundaries, evaluation, checkpoints, the
final report. This view runs the cell's config through `fastcifar.engine.trainer.train` for a few epochs (each
evaluated, each checkpointed) in a temporary run folder and reports training img/s over the whole wall time,
the evaluation and checkpoint seconds, the data wait the trainer measured, and the ratio to the model-only ceiling.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from fastcifar.bench.suites import BenchSettings, make_config
from fastcifar.config import from_dict, to_dict

DEFAULT_RUN_EPOCHS = 2


def run_config(settings: BenchSettings, variant: str, image_size: int, epochs: int, out_dir: str):
    """The cell's Config as a short training run: `epochs` epochs, evaluation after each one, no validation split
    (every loader, DALI included, evaluates the test split the same way), no early stopping, runs under `out_dir`."""
    data = to_dict(make_config(settings, variant, image_size))
    data["name"] = f"bench-run-{variant}-{image_size}px"
    data["data"]["val_split"] = 0
    data["train"].update(epochs=epochs, eval_every=1, out_dir=out_dir, select_metric="auto")
    data["early_stop"]["patience"] = 0
    return from_dict(data)


def _sum(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return sum(values) if values else None


def real_run(settings: BenchSettings, variant: str, image_size: int, info, ceiling_img_s: float,
             epochs: int = DEFAULT_RUN_EPOCHS) -> dict:
    """Train the cell's config for `epochs` epochs and report where the wall time went.

    Returns a row: `img_s` = trained images / (wall time of the whole `train()` call less the first step's
    warm-up, which includes torch.compile and is reported as `warmup_s`), `img_s_incl_warmup`, `train_s`,
    `eval_s`, `ckpt_s` (when the trainer records it), `other_s` (setup, final evaluation, plots), the trainer's
    `data_wait_share` / `device_wait_share` (medians over epochs), `train_share` (train_s / wall_s) and the ratio
    to the ceiling. No loader verdict: a real run's shortfall is mostly evaluation, checkpoints and setup, which
    the seconds show.
    """
    from fastcifar.engine.metrics import read_jsonl
    from fastcifar.engine.trainer import train

    with tempfile.TemporaryDirectory(prefix="fastcifar-bench-run-") as tmp:
        cfg = run_config(settings, variant, image_size, epochs, tmp)
        start = time.perf_counter()
        run_dir = Path(train(cfg, progress=False))
        wall = time.perf_counter() - start
        records = read_jsonl(run_dir / "metrics.jsonl")
        summary = json.loads((run_dir / "summary.json").read_text())
    images = records[-1]["step"] * settings.batch_size  # one process
    warmup = summary.get("warmup_s") or 0.0
    train_s, eval_s, ckpt_s = _sum(records, "train_s") or 0.0, _sum(records, "eval_s") or 0.0, _sum(records, "ckpt_s")
    img_s = images / max(wall - warmup, 1e-9)
    ratio = img_s / ceiling_img_s
    host_wait, device_wait = summary.get("data_wait"), summary.get("device_wait")
    return {
        "view": "run", "loader": variant, "image_size": image_size, "batch_size": settings.batch_size,
        "workers": settings.workers, "device": settings.device, "model": settings.model, "amp": settings.amp,
        "compile": settings.compile, "epochs": len(records), "images": images,
        "img_s": img_s, "img_s_incl_warmup": images / wall, "img_s_steady": summary.get("img_per_s"),
        "wall_s": wall, "train_s": train_s, "eval_s": eval_s, "ckpt_s": ckpt_s,
        "other_s": wall - train_s - eval_s - (ckpt_s or 0.0), "warmup_s": warmup, "build_s": None,
        "data_wait_share": host_wait, "device_wait_share": device_wait,
        "train_share": train_s / wall, "ceiling_img_s": ceiling_img_s, "ratio": ratio,
        "test_acc": records[-1].get("test_acc"),
    }
