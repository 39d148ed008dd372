"""A tiny model still learns the synthetic data with each auto-augment policy, through every loader.

gpu, ffcv and dali run the policy on the device (GpuAugment); torch runs torchvision's own policy per
image in its CPU workers. Synthetic classes are colour/texture patterns that survive the policies' ops.
"""

from __future__ import annotations

import pytest
from tiny_run import run_tiny

FORMATS = {"gpu": ("npy",), "torch": ("npy",), "ffcv": ("npy", "ffcv"), "dali": ("npy", "dali")}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
@pytest.mark.parametrize("loader", ["gpu", "torch", "ffcv", "dali"])
def test_tiny_model_learns_with_the_policy(loader, policy, prepared_root, tmp_path):
    root = prepared_root("cifar10", FORMATS[loader])
    augment = {"policy": policy, "crop_padding": 2, "hflip": 0.5, "hflip_mode": "alternate"}
    _, records, summary = run_tiny(root, tmp_path, data={"loader": loader}, augment=augment, train={"epochs": 3})
    assert summary["loader"] == loader
    assert records[-1]["test_acc"] >= 0.6, records  # chance is 0.1
    assert records[-1]["train_acc"] > 0.3
