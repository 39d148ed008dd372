"""Every packaged config parses, builds its model, loader and augmentation on the CPU, and runs one step's forward.

Pretrained weights cannot be downloaded here, so models are built with `pretrained: false` (the offline error for
`pretrained: true` is tested in test_models.py); everything else is the config as shipped.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastcifar.augment import GpuAugment
from fastcifar.config import load_config, packaged_configs
from fastcifar.data.prepare import load_manifest
from fastcifar.loaders import build_loader, remaining_augment
from fastcifar.losses import build_criterion
from fastcifar.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_packaged_config_builds_and_steps_on_cpu(name, prepared_root):
    cfg = load_config(name, ["train.device=cpu", "data.workers=0", "data.batch_size=4"])
    root = prepared_root(cfg.data.dataset, ("npy",))
    cfg.data.root = str(root)
    manifest = load_manifest(cfg.data.dataset, root)
    num_classes = manifest["num_classes"]

    loader = build_loader(cfg, "train", train=True, device="cpu")
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape[:2] == (4, 3)

    augment = GpuAugment(remaining_augment(cfg.augment, loader), manifest["mean"], manifest["std"], num_classes,
                         per_image_ops=not loader.per_image_ops_done)
    x, targets = augment.train_batch(images, labels)
    assert x.shape == (4, 3, cfg.augment.image_size, cfg.augment.image_size)

    model = build_model(dataclasses.replace(cfg.model, pretrained=False), num_classes, cfg.augment.image_size, cfg.augment.scales)
    model.train()
    loss = build_criterion(cfg)(model(x[:2]), targets[:2])
    assert torch.isfinite(loss)
