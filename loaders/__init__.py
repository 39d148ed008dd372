"""Loaders behind one contract, built by name (installed as fastcifar.loaders).

    loader = build_loader(cfg, "train", train=True, device=device)   # cfg.data.loader picks the module
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...  # uint8 [B, 3, H, W] channels_last, int64 [B], on `device`

Adding a loader: write `loaders/NAME.py` with `build(cfg, split, *, train, device, rank, world_size,
indices)` returning an object that follows `fastcifar.loaders.base.Loader`, and add one line to LOADERS.
Modules are imported only when their loader is built, so optional libraries (ffcv, nvidia.dali) are
never imported by the others.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from fastcifar.config import Config
from fastcifar.errors import FastcifarError
from fastcifar.loaders.base import Loader, remaining_augment

# name -> module defining build(); the names are the values of `data.loader` and `--loader`.
LOADERS: dict[str, str] = {
    "gpu": "fastcifar.loaders.gpu",  # whole split on the device, index slices (the ceiling)
    "torch": "fastcifar.loaders.torch_loader",  # DataLoader + per-sample CPU transforms (the baseline)
    "ffcv": "fastcifar.loaders.ffcv_loader",  # .beton + numba JIT pipeline      (pip install 'fastcifar[ffcv]')
    "dali": "fastcifar.loaders.dali_loader",  # webdataset + DALI graph          (pip install 'fastcifar[dali]')
}

__all__ = ["LOADERS", "Loader", "build_loader", "remaining_augment"]


def build_loader(cfg: Config, split: str, *, train: bool, device: torch.device | str, rank: int = 0,
                 world_size: int = 1, indices: np.ndarray | None = None) -> Loader:
    """Build the loader named by `cfg.data.loader` for one split.

    Args:
        cfg: the run config (data.*, augment.* for CPU/native pipelines, train.seed).
        split: "train" or "test".
        train: True = shuffle per epoch, augment where the loader does, drop_last per config;
            False = stored order, every sample exactly once (eval batch size).
        device: where batches are delivered (torch.device or "cpu" / "cuda:0").
        rank, world_size: this process's shard of the split (DDP).
        indices: int64 [M] subset of the split to use (the trainer's held-out val split); None = all.

    Returns:
        A Loader yielding (images uint8 [B, 3, H, W] channels_last, labels int64 [B]) on `device`.

    Raises:
        FastcifarError: unknown loader name (lists the valid ones), its library not installed (names the
            pip extra), the required prepared format missing (names the prepare command), bad indices.
    """
    name = cfg.data.loader
    if name not in LOADERS:
        raise FastcifarError(f"Unknown loader '{name}'; choose one of {', '.join(LOADERS)} (data.loader or --loader).")
    module = importlib.import_module(LOADERS[name])
    return module.build(cfg, split, train=train, device=device, rank=rank, world_size=world_size, indices=indices)
