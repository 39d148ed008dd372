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
    run, records, summary = run_tiny(
        root, tmp_path, data={"loader": loader}, augment={"crop_padding": 2, "hflip": 0.5}, train={"epochs": 3}
    )
    assert summary["loader"] == loader
    assert records[-1]["test_acc"] >= 0.8, records
    assert records[-1]["step"] == 3 * (512 // 64)  # drop_last: 8 full batches per epoch through every loader
    assert all(0.0 <= r["data_wait"] <= 1.0 and r["img_per_s"] > 0 for r in records)
    assert torch.load(run / "best.pt", weights_only=True)["config"]["data"]["loader"] == loader


def test_dali_trains_on_a_val_split_exactly_like_the_gpu_loader(prepared_root, tmp_path):
    """The same samples in the same batches: on CPU the two runs agree bit for bit, held-out metrics included."""
    root = prepared_root("cifar10", ("npy", "dali"))
    runs = {}
    for loader in ("gpu", "dali"):
        _, records, summary = run_tiny(root, tmp_path / loader, data={"loader": loader, "val_split": 64},
                                       augment={"crop_padding": 2, "hflip": 0.5}, train={"epochs": 2})
        assert summary["loader"] == loader and records[-1]["step"] == 2 * (448 // 64)  # 512 - 64 held out
        runs[loader] = [{k: v for k, v in r.items() if "loss" in k or "acc" in k} for r in records]
    assert any("val" in k for k in runs["gpu"][-1]), runs["gpu"][-1]
    assert runs["dali"] == runs["gpu"]
