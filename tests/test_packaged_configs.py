"""Every packaged config parses, builds its model, loader and augmentation on the CPU, and runs one step's forward.

Pretrained weights cannot be downloaded here, so models are built with `pretrained: false` (the offline error for
`pretrained: true` is tested in test_models.py); everything else is the config as shipped.
"""

from __future__ import annotations

import pytest
import torch

from fastcifar.config import load_config, packaged_configs
from fastcifar.engine.build import build_model_on, train_input
from fastcifar.engine.inputs import data_info
from fastcifar.losses import build_criterion

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_packaged_config_builds_and_steps_on_cpu(name, prepared_root):
    cfg = load_config(name, ["train.device=cpu", "data.workers=0", "data.batch_size=4"])
    root = prepared_root(cfg.data.dataset, ("npy",))
    cfg.data.root = str(root)
    info = data_info(cfg)

    loader, augment = train_input(cfg, info, torch.device("cpu"))  # the trainer's and the bench's assembly
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape[:2] == (4, 3)
    x, targets = augment.train_batch(images, labels)
    assert x.shape == (4, 3, cfg.augment.image_size, cfg.augment.image_size)

    model = build_model_on(cfg, info.num_classes, torch.device("cpu"), pretrained=False)
    model.train()
    with torch.autocast("cpu", dtype=x.dtype, enabled=x.dtype != torch.float32):  # x is in the AMP dtype
        loss = build_criterion(cfg)(model(x[:2]), targets[:2])
    assert torch.isfinite(loss)
