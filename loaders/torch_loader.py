"""`torch` loader: the baseline users run today, kept honest and well tuned.

A map-style Dataset over the npy memmap (opened lazily in each worker process), per-sample CPU transforms
(`cpu_transform(cfg.augment, train)`: the augmentation policy plus the resize to image_size, one image at a
time, as the seed notebooks do), a DataLoader with `data.workers` worker processes, `data.prefetch` batches
ahead per worker, persistent workers, each batch collated in the worker into one NHWC buffer in shared
memory; when the device is CUDA, pinned memory and the next batch copied on a side stream one batch ahead.
The gap between this loader and `gpu` is the product's claim, so nothing here is deliberately slow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fastcifar.config import Config
from fastcifar.loaders.base import (
    as_device,
    batch_size_for,
    check_indices,
    drop_last_for,
    nhwc_to_contract,
    npy_paths,
    sample_order,
    shard_length,
    worker_count,
)


class NpyDataset(Dataset):
    """One CIFAR split from npy files; each worker opens its own read-only memmap on first use.

    Args:
        images_path: npy of uint8 [N, 32, 32, 3] NHWC.
        labels_path: npy of int64 [N].
        transform: callable on uint8 [3, 32, 32] returning uint8 [3, S, S] (fastcifar.cpu_transforms).
        seed: base seed of the per-sample augmentation draws.

    Items:
        keyed by (epoch, index): (image uint8 [3, S, S], label int).
    """

    def __init__(self, images_path: str | Path, labels_path: str | Path,
                 transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0):
        self.images_path, self.seed = str(images_path), seed
        self.labels = np.load(labels_path)  # [N] int64, 8 bytes per image: cheap to hold in every worker
        self.transform = transform
        self._images: np.ndarray | None = None  # memmap, opened in the process that reads it

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = key  # from ShardSampler: the augmentation draw depends on (seed, epoch, index) alone
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")  # [N, 32, 32, 3] uint8, page cache backed
        image = torch.from_numpy(np.array(self._images[i])).permute(2, 0, 1)  # [3, 32, 32] uint8 view of HWC
        # Seeding per sample makes the draws independent of worker count, worker lifetime (persistent workers
        # keep their RNG across epochs, a resumed run would not) and of the main process's RNG (workers=0).
        # The CPU generator itself, saved and restored: ~3 us, where torch.manual_seed / fork_rng also visit
        # every accelerator backend (~200 us, which would slow this baseline down by a third).
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + i) % 2**63)
        if getattr(self.transform, "takes_epoch", False):  # alternating flips depend on the epoch
            self.transform.set_epoch(epoch)
        try:
            return self.transform(image), int(self.labels[i])
        finally:
            generator.set_state(saved)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None  # a spawned worker reopens the memmap instead of pickling 150 MiB
        return state


class ShardSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) for this rank's samples of one epoch, by the contract's rules (base.sample_order).

    Args:
        n: samples in the split.
        indices: optional int64 [M] subset of the split; positions are drawn over the subset.
        seed, rank, world_size, train, drop_last: as in base.sample_order.
    """

    def __init__(self, n: int, *, seed: int, rank: int, world_size: int, train: bool, drop_last: bool,
                 indices: np.ndarray | None = None):
        self.indices = indices
        self.n = n if indices is None else len(indices)
        self.seed, self.rank, self.world_size, self.train, self.drop_last = seed, rank, world_size, train, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return shard_length(
            self.n, rank=self.rank, world_size=self.world_size, train=self.train, drop_last=self.drop_last
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = sample_order(self.n, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                             train=self.train, drop_last=self.drop_last).numpy()
        if self.indices is not None:
            order = self.indices[order]
        return iter([(self.epoch, i) for i in order.tolist()])


def collate_nhwc(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy the samples into one NHWC buffer, so the batch is born channels_last.

    The CPU transform leaves each image in HWC memory (cpu_transforms.HwcMemory), so each copy is a plain
    memcpy; a CHW image would be transposed on the way (correct, ~30x slower at 224 px). In a worker process
    the buffer is allocated in shared memory, as torch's default_collate does, so sending it to the main
    process does not copy it again.

    Returns:
        images uint8 [B, S, S, 3] contiguous, labels int64 [B].
    """
    views = [image.permute(1, 2, 0) for image, _ in samples]  # [S, S, 3] each
    first, out = views[0], None
    if torch.utils.data.get_worker_info() is not None:  # the same allocation as torch's default_collate
        storage = first._typed_storage()._new_shared(len(views) * first.numel(), device=first.device)
        out = first.new(storage).resize_(len(views), *first.shape)
    images = torch.stack(views, out=out)  # [B, S, S, 3]
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels


def to_device_ahead(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Host batches -> device batches, the next one copied on a side CUDA stream while this one is used.

    A pinned host batch is copied with non_blocking=True on `copy_stream`, one batch ahead of the consumer:
    the copy overlaps the compute of the previous step instead of queueing in front of it on the compute
    stream. Before a batch is handed out the compute stream waits for its copy (`wait_stream`, device side,
    the host does not block), and `record_stream` tells the caching allocator that the compute stream uses
    the memory, so it is not reused while kernels still read it. On a CPU device: a plain pass-through.
    """
    if device.type != "cuda":
        yield from batches
        return
    compute, copy_stream = torch.cuda.current_stream(device), torch.cuda.Stream(device)

    def start_copy(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.cuda.stream(copy_stream):
            return tuple(t.to(device, non_blocking=True) for t in batch)

    def hand_over(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        compute.wait_stream(copy_stream)  # the compute stream waits for the copy (no host wait)
        for t in batch:
            t.record_stream(compute)  # allocated on copy_stream, used on compute: keep it until compute is done
        return batch

    ahead = None  # the batch whose copy is in flight
    for batch in batches:
        if ahead is None:
            ahead = start_copy(batch)
            continue
        ready = hand_over(ahead)  # before the next copy starts: wait_stream waits for this batch's copy only
        ahead = start_copy(batch)
        yield ready
    if ahead is not None:
        yield hand_over(ahead)


class TorchLoader:
    """Wraps a DataLoader so it yields the contract's (images, labels) on the device.

    Yields:
        images uint8 [B, 3, S, S] channels_last on `device` (S = augment.image_size, already augmented and
        resized on the CPU), labels int64 [B] on `device`.
    """

    per_image_ops_done = True  # cpu_transform already augmented and resized every image
    native_ops: frozenset[str] = frozenset()

    def __init__(self, dataloader: DataLoader, sampler: ShardSampler, device: torch.device | str):
        self.dataloader, self.sampler, self.device = dataloader, sampler, as_device(device)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Pinned host batches when the device is CUDA; copied one batch ahead on a side stream.
        for images, labels in to_device_ahead(iter(self.dataloader), self.device):
            yield nhwc_to_contract(images), labels  # [B, S, S, 3] -> [B, 3, S, S] channels_last view


def build(cfg: Config, split: str, *, train: bool, device: torch.device | str, rank: int = 0, world_size: int = 1,
          indices: np.ndarray | None = None) -> TorchLoader:
    """The `torch` loader over npy/{split}_*.npy (format "npy")."""
    from fastcifar.cpu_transforms import cpu_transform

    images_path, labels_path = npy_paths(cfg, split)
    dataset = NpyDataset(images_path, labels_path, cpu_transform(cfg.augment, train, cfg.train.seed),
                         seed=cfg.train.seed)
    indices = check_indices(indices, len(dataset))
    drop_last = drop_last_for(cfg, train)
    sampler = ShardSampler(len(dataset), seed=cfg.train.seed, rank=rank, world_size=world_size, train=train,
                           drop_last=drop_last, indices=indices)
    workers = worker_count(cfg, "torch")
    device = as_device(device)
    dataloader = DataLoader(
        dataset,
        batch_size=batch_size_for(cfg, train),
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_nhwc,
        pin_memory=device.type == "cuda",  # page-locked buffers make the copy below asynchronous
        drop_last=drop_last,
        persistent_workers=workers > 0,  # keep workers (and their memmaps) alive across epochs
        prefetch_factor=cfg.data.prefetch if workers > 0 else None,
        # Augmentation is seeded per sample (NpyDataset); this only keeps worker seeds off the global RNG.
        generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + rank),
    )
    return TorchLoader(dataloader, sampler, device)
