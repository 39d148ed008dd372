"""`gpu` loader: the whole uint8 split lives on the device; batches are index slices (airbench's design).

The split is copied to the device once (CIFAR-10/100 train: 50,000 x 3 KiB = 150 MiB), labels too. Each
epoch draws its permutation on the device and every batch is an `index_select` there, so nothing crosses
PCIe after the first copy and no CPU work scales with the number of images. This is the ceiling every
other loader is measured against.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from fastcifar.config import Config
from fastcifar.loaders.base import (
    as_device,
    batch_size_for,
    check_indices,
    drop_last_for,
    nhwc_to_contract,
    npy_paths,
    num_batches,
    sample_order,
)


class GpuLoader:
    """Device-resident split, sliced by a per-epoch on-device permutation.

    Args:
        images: uint8 [N, 32, 32, 3] NHWC host array (a memmap is read once).
        labels: int64 [N] host array.
        batch_size: images per batch.
        train: True = shuffled per epoch, shards equalized; False = stored order, every sample once.
        drop_last: drop the last partial batch (train only: static shapes for torch.compile).
        device: where the split lives and batches are made.
        seed: base seed; epoch e uses the permutation seeded by seed + e (see base.sample_order).
        rank, world_size: this process's shard.

    Yields:
        images uint8 [B, 3, 32, 32] channels_last on `device` (a fresh tensor, safe to modify in place),
        labels int64 [B] on `device`.
    """

    per_image_ops_done = False  # GpuAugment does crop/flip/resize on the device
    native_ops: frozenset[str] = frozenset()

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, train: bool, drop_last: bool,
                 device: torch.device | str, seed: int = 0, rank: int = 0, world_size: int = 1):
        device = as_device(device)
        # One host -> device copy; NHWC so that a batch is one contiguous gather and a free permute.
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # [N, 32, 32, 3] uint8
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(device)  # [N]
        self.batch_size, self.train, self.drop_last = batch_size, train, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._order_length = len(sample_order(len(self.labels), seed=seed, epoch=0, rank=rank,
                                              world_size=world_size, train=train, drop_last=drop_last))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return num_batches(self._order_length, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = sample_order(len(self.labels), seed=self.seed, epoch=self.epoch, rank=self.rank,
                             world_size=self.world_size, train=self.train, drop_last=self.drop_last,
                             device=self.images.device)  # [n_rank] int64 on the device
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]  # [B]
            images = self.images.index_select(0, idx)  # [B, 32, 32, 3] uint8, gathered on the device
            yield nhwc_to_contract(images), self.labels.index_select(0, idx)


def build(cfg: Config, split: str, *, train: bool, device: torch.device | str, rank: int = 0, world_size: int = 1,
          indices: np.ndarray | None = None) -> GpuLoader:
    """The `gpu` loader over npy/{split}_*.npy (format "npy"); `indices` keeps only those samples."""
    images_path, labels_path = npy_paths(cfg, split)
    labels = np.load(labels_path)
    indices = check_indices(indices, len(labels))
    if indices is None:
        images = np.load(images_path)  # whole split into host memory, then one copy to the device
    else:
        images, labels = np.load(images_path, mmap_mode="r")[indices], labels[indices]  # only the subset
    return GpuLoader(images, labels, batch_size=batch_size_for(cfg, train), train=train,
                     drop_last=drop_last_for(cfg, train), device=device, seed=cfg.train.seed, rank=rank,
                     world_size=world_size)
