"""Loaders behind one contract, built by name (installed as fastcifar.loaders).

    loader = build_loader(cfg, "train", train=True, device=device)   # cfg.data.loader picks the module
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader: ...  # uint8 [B, 3, H, W] channels_last, int64 [B], on `device`

LOADERS is the one record of what each loader is and needs; every list of loaders derives from it: the
choices of `data.loader` (config) and `--loader` (CLI), the benchmark's variants and the formats it
prepares, and the README's table (a test keeps it in step). Adding a loader: write `loaders/NAME.py`
with `build(cfg, split, *, train, device, rank, world_size, indices)` returning an object that follows
`fastcifar.loaders.base.Loader`, and add its LoaderSpec to `registry.py`.

This module imports neither torch nor the loader modules (the config reads LOADERS at import time):
modules are imported only when their loader is built, so optional libraries (ffcv, nvidia.dali) are
never imported by the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fastcifar.loaders.registry import LOADERS, LoaderSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fastcifar.config import Config
    from fastcifar.loaders.base import Loader


__all__ = ["LOADERS", "Loader", "LoaderSpec", "build_loader", "remaining_augment"]


def __getattr__(name: str):
    """`Loader` and `remaining_augment` live in loaders.base (torch); imported on first use, not with the registry."""
    if name in ("Loader", "remaining_augment"):
        from fastcifar.loaders import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from fastcifar.errors import FastcifarError

    name = cfg.data.loader
    if name not in LOADERS:
        raise FastcifarError(f"Unknown loader '{name}'; choose one of {', '.join(LOADERS)} (data.loader or --loader).")
    spec = LOADERS[name]
    if indices is not None and not spec.takes_indices:
        with_indices = ", ".join(n for n, s in LOADERS.items() if s.takes_indices)
        raise FastcifarError(f"The {name} loader cannot hold out a val split; set data.val_split: 0 or use "
                             f"data.loader: {with_indices}.")
    module = importlib.import_module(spec.module)
    return module.build(cfg, split, train=train, device=device, rank=rank, world_size=world_size, indices=indices)
