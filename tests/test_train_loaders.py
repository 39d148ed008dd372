"""The same tiny run reaches the same accuracy band through every loader (gpu, torch, ffcv, dali)."""

from __future__ import annotations

import pytest
import torch
from tiny_run import run_tiny

FORMATS = {"gpu": ("npy",), "torch": ("npy",), "ffcv": ("npy", "ffcv"), "dali": ("npy", "dali")}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("loader", ["gpu", "torch", "ffcv", "dali"])
def test_every_loader_trains_to_high_accuracy(loader, prepared_root, tmp_path):
    root = prepared_root("cifar10", FORMATS[loader])
    # crop + flip on: the torch loader runs them per image on the CPU (GpuAugment then only normalizes),
    # the others on the device; all must learn.
    run, records, summary = run_tiny(root, tmp_path, data={"loader": loader}, augment={"crop_padding": 2, "hflip": 0.5}, train={"epochs": 3})
    assert summary["loader"] == loader
    assert records[-1]["test_acc"] >= 0.8, records
    assert records[-1]["step"] == 3 * (512 // 64)  # drop_last: 8 full batches per epoch through every loader
    assert all(0.0 <= r["data_wait"] <= 1.0 and r["img_per_s"] > 0 for r in records)
    assert torch.load(run / "best.pt", weights_only=True)["config"]["data"]["loader"] == loader
