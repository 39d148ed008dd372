"""The tiny trainer run shared by the trainer tests: timm's `test_resnet` at 32 px on 512 synthetic images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fastcifar.config import Config, from_dict
from fastcifar.engine.metrics import read_jsonl

BASE = {
    "name": "tiny",
    "description": "trainer test",
    "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "workers": 1},
    "model": {"name": "test_resnet"},  # timm's 0.4M-parameter ResNet: a few seconds per epoch on one core
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 3, "compile": False, "amp": "none", "device": "cpu"},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_config(root: Path, out_dir: Path, **sections) -> Config:
    """The tiny test config on data root `root`, runs under `out_dir`; `sections` merge into it (e.g. train={...})."""
    data = _merge(BASE, {"data": {"root": str(root)}, "train": {"out_dir": str(out_dir)}})
    return from_dict(_merge(data, sections))


def run_tiny(root: Path, out_dir: Path, **sections) -> tuple[Path, list[dict], dict]:
    """Train the tiny config; returns (run dir, metrics.jsonl records, summary.json)."""
    from fastcifar.engine.trainer import train

    run = train(tiny_config(root, out_dir, **sections), progress=False)
    return run, read_jsonl(run / "metrics.jsonl"), json.loads((run / "summary.json").read_text())
