"""The golden run: a tiny CPU training run whose per-epoch metrics are pinned in tests/assets/golden_*.json.

CPU runs with one thread are bit-exact, so a refactor that claims to change no numbers must reproduce every
recorded value exactly. The run touches most of the training path: val split, crop/flip/jitter (with hue)/
cutout, mixup + cutmix, label smoothing, EMA, one-cycle schedule, SGD with nesterov.

A change that alters the numbers on purpose regenerates the file and says why in its commit:

    FASTCIFAR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_run import run_tiny

from fastcifar.engine.trainer import TIMING_KEYS

ASSETS = Path(__file__).parent / "assets"
# Two runs: the linear head with every image op and mixing; a margin head with flip TTA at 48 px.
RUNS = {"mix": {
    "data": {"val_split": 64},
    "augment": {"crop_padding": 4, "hflip": 0.5, "jitter": 0.5, "hue": 0.05, "cutout": 0.5, "cutout_size": 8,
                "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.8},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "onecycle", "pct_start": 0.3},
    "train": {"epochs": 3, "label_smoothing": 0.1, "ema_decay": 0.9, "seed": 7},
}, "margin": {
    "augment": {"image_size": 48, "crop_padding": 2, "hflip": 0.5},
    "model": {"head": "arcface", "embedding_dim": 32},
    "train": {"epochs": 2, "tta": True, "seed": 3},
}}


def _pinned(records: list[dict]) -> list[dict]:
    """Each epoch's record without the keys that measure time (they differ on every run)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.endswith("_s")} for r in records]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run_is_bit_exact(name, prepared_root, tmp_path, one_thread):
    golden = ASSETS / f"golden_{name}.json"
    root = prepared_root("cifar10", ("npy",))
    _, records, summary = run_tiny(root, tmp_path, **RUNS[name])
    best_keys = ("best_epoch", "best_value", "best_acc", "best_test_acc")
    got = {"epochs": _pinned(records), "best": {k: summary.get(k) for k in best_keys}}
    if os.environ.get("FASTCIFAR_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"golden run rewritten to {golden}")
    want = json.loads(golden.read_text())
    assert got == want, "the golden run changed: a refactor altered training numbers (see the module docstring)"
