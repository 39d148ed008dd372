"""The loader contract every loader implements, and the helpers they share.

A loader yields `(images, labels)` already on the training device:

    images: uint8 [B, 3, H, W], channels_last memory format (an NCHW view of NHWC memory), not normalized.
    labels: int64 [B].

H, W is the stored size (32) when augmentation and resize run on the device (GpuAugment), or the final
`augment.image_size` when the loader's CPU pipeline already resized (`per_image_ops_done=True`).

Sample order (`sample_order`), shared by the gpu and torch loaders and by ffcv when world_size > 1:

    train=True:  one permutation of the split seeded by `seed + epoch` (torch.randperm, the same seed rule
                 as torch's DistributedSampler and ffcv), identical on every rank. It is made a multiple of
                 world_size like DistributedSampler: drop_last drops the tail, otherwise the head is
                 repeated (padding by wrapping, so a few samples appear twice per epoch). Rank r takes
                 every world_size-th sample starting at r (strided shard). Shards are disjoint before padding.
    train=False: the split in stored order, no padding and no drop: rank r takes samples r, r+ws, ...,
                 so across ranks every sample is evaluated exactly once (shards differ in length by at
                 most one; reduce sums, not per-rank means).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from fastcifar.config import AugmentConfig, Config
from fastcifar.errors import FastcifarError
from fastcifar.loaders import LOADERS
from fastcifar.paths import data_root

SPLITS = ("train", "test")


@runtime_checkable
class Loader(Protocol):
    """Yields (images uint8 [B, 3, H, W] channels_last, labels int64 [B]), both on the training device.

    Attributes:
        per_image_ops_done: True when the loader already ran every per-image augmentation and the resize
            to image_size on the CPU (the torch baseline); the trainer then builds
            GpuAugment(per_image_ops=False).
        native_ops: per-image ops the loader already ran with its library's native operators
            (`native_augment: true`), e.g. {"hflip", "crop"}; `remaining_augment` removes them from the
            config GpuAugment gets. Empty for the other loaders.
    """

    per_image_ops_done: bool
    native_ops: frozenset[str]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...  # batches per epoch on this rank (drop_last respected)

    def set_epoch(self, epoch: int) -> None: ...  # reshuffle deterministically from (seed, epoch, rank)


# ---------------------------------------------------------------------------- order and sharding


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's permutation: seed + epoch, the rule of DistributedSampler and ffcv's orders."""
    return int(seed) + int(epoch)


def shard_length(n: int, *, rank: int, world_size: int, train: bool, drop_last: bool) -> int:
    """Samples rank `rank` sees per epoch out of `n` (see `sample_order`)."""
    if not train:
        return len(range(rank, n, world_size))
    if drop_last:
        return n // world_size
    return -(-n // world_size)  # ceil: padded by wrapping


def sample_order(
    n: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    train: bool,
    drop_last: bool,
    shuffle: bool | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Positions in [0, n) this rank visits this epoch, in order (rules in the module docstring).

    Args:
        n: samples in the split (or in the `indices` subset).
        seed, epoch: the permutation is seeded by seed + epoch, the same on every rank.
        rank, world_size: this process's shard.
        train: True = shuffled and equalized across ranks; False = stored order, every sample once.
        drop_last: train only: drop the tail that does not divide by world_size (else pad by wrapping).
        shuffle: train only: False keeps the stored order (ffcv_order: sequential); default = train.
        device: where the permutation is drawn (a CUDA generator gives a different, equally
            deterministic permutation than a CPU one).

    Returns:
        int64 [shard_length(...)] on `device`.
    """
    check_rank(rank, world_size)
    if n <= 0:
        raise FastcifarError("The split to load is empty; check `indices` or re-run `fastcifar data prepare`.")
    device = torch.device(device)
    if not train:
        return torch.arange(rank, n, world_size, device=device)
    if shuffle is False:
        order = torch.arange(n, device=device)
    else:
        generator = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=generator, device=device)  # [n] int64
    if drop_last:
        order = order[: n - n % world_size]
    elif n % world_size:
        pad = world_size - n % world_size  # repeat the head; wraps several times only when n < pad
        order = torch.cat([order, order.repeat(-(-pad // n))[:pad]])
    return order[rank::world_size]


def num_batches(samples: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch: floor with drop_last, else ceil."""
    return samples // batch_size if drop_last else -(-samples // batch_size)


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise FastcifarError(f"rank {rank} is not in [0, world_size={world_size}); pass 0 <= rank < world_size.")


def check_indices(indices: np.ndarray | None, n: int) -> np.ndarray | None:
    """Validate a subset of a split's sample indices; returns int64 [M] or None (= the whole split)."""
    if indices is None:
        return None
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise FastcifarError(f"`indices` must be a non-empty 1-D integer array, got shape {indices.shape} "
                             f"dtype {indices.dtype}; pass e.g. np.arange(1000).")
    if indices.min() < 0 or indices.max() >= n:
        raise FastcifarError(f"`indices` reach {int(indices.min())}..{int(indices.max())} but the split has {n} "
                             f"samples; keep them in [0, {n}).")
    return indices.astype(np.int64)


# ---------------------------------------------------------------------------- config helpers


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise FastcifarError(f"Unknown split '{split}'; loaders read 'train' or 'test' (a val split is "
                             "`indices` into train).")
    return split


def batch_size_for(cfg: Config, train: bool) -> int:
    size = cfg.data.batch_size if train else cfg.data.eval_batch_size
    if size < 1:
        key = "data.batch_size" if train else "data.eval_batch_size"
        raise FastcifarError(f"{key} is {size}; set it to a positive number of images.")
    return size


def drop_last_for(cfg: Config, train: bool) -> bool:
    """drop_last only ever applies to training: eval sees every sample once."""
    return bool(cfg.data.drop_last) and train


def label_kind(cfg: Config) -> str:
    """'fine' or 'coarse' (CIFAR-100 superclasses); coarse on CIFAR-10 is an error."""
    if cfg.data.label == "coarse" and cfg.data.dataset != "cifar100":
        raise FastcifarError(
            f"data.label: coarse exists for cifar100 only, not {cfg.data.dataset}; set data.label: fine."
        )
    return cfg.data.label


def root_of(cfg: Config) -> Path:
    return data_root(cfg.data.root)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API on this platform
        return os.cpu_count() or 1


_NOTED: set[str] = set()


def note(message: str) -> None:
    """Print a one-line note on stderr, once per process (train and eval loaders would repeat it)."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}", file=sys.stderr)


def worker_count(cfg: Config, loader: str) -> int:
    """cfg.data.workers, checked and clamped to the usable cores (with a one-line note).

    More workers than cores only oversubscribe them (torch processes, dali threads), and ffcv's numba
    refuses more threads than cores with a ValueError; so the count is clamped, not refused.

    Args:
        loader: "torch" (0 = load in the main process), "ffcv" (0 = all cores) or "dali" (0 = 1 thread).

    Returns:
        The count to pass to the library: 0 <= count <= usable_cores(), at least 1 for dali.
    """
    workers = cfg.data.workers
    if workers < 0:
        raise FastcifarError(f"data.workers is {workers}; set it to 0 or more (0 = load in the main process).")
    cores = usable_cores()
    if workers > cores:
        note(f"data.workers is {workers} but this process may use {cores} CPU core(s); the {loader} loader uses "
             f"{cores}.")
        workers = cores
    return max(1, workers) if loader == "dali" else workers


def native_ops_for(cfg: Config, train: bool) -> frozenset[str]:
    """The per-image ops the loader's native (ffcv / dali) pipeline runs for this config: hflip and/or crop
    (translate), those of the ops its LoaderSpec says it can run.

    Raises:
        FastcifarError: one_of mode, whose ops must be drawn together, cannot be split between a native
            pipeline and the device.
    """
    if not (cfg.data.native_augment and train):
        return frozenset()
    aug = cfg.augment
    if aug.one_of:
        raise FastcifarError("data.native_augment cannot split augment.one_of between the library and the device; "
                             "set data.native_augment: false or augment.one_of: false.")
    ops = set()
    if aug.hflip > 0:
        ops.add("hflip")
    if aug.crop_padding > 0:
        ops.add("crop")
    return frozenset(ops) & LOADERS[cfg.data.loader].native_ops


def remaining_augment(aug: AugmentConfig, loader: Loader) -> AugmentConfig:
    """The augment config GpuAugment should run after this loader: ops done natively switched off.

    With `native_augment`, ffcv / dali already mirrored (hflip) and translated (crop_padding) each image on
    the CPU or in the DALI graph; applying them again on the device would double them.
    """
    ops = getattr(loader, "native_ops", frozenset())
    changes = {}
    if "hflip" in ops:
        changes["hflip"] = 0.0
    if "crop" in ops:
        changes["crop_padding"] = 0
    return dataclasses.replace(aug, **changes) if changes else aug


# ---------------------------------------------------------------------------- optional libraries


def require_library(loader: str):
    """Import the optional library of `loader` (its LoaderSpec), or raise a FastcifarError naming the pip extra."""
    spec = LOADERS[loader]
    try:
        return importlib.import_module(spec.library)
    except ImportError as e:
        raise FastcifarError(
            f"The {loader} loader needs {spec.library}, which is not installed or fails to import ({e}); "
            f"run pip install 'fastcifar[{spec.extra}]'."
        ) from None


# ---------------------------------------------------------------------------- tensors


def as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def nhwc_to_contract(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] contiguous -> [B, 3, H, W] channels_last: a view, no copy."""
    out = images.permute(0, 3, 1, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    return out


# ---------------------------------------------------------------------------- prepared data


def prepared_format(cfg: Config, key: str, split: str) -> tuple[dict, dict]:
    """The manifest entry of a prepared format and its files for one split, as absolute paths.

    Args:
        key: "npy", "ffcv", or "dali:raw" | "dali:png" | "dali:jpeg".
        split: "train" or "test".

    Returns:
        (entry, files): the manifest's format entry, and its `entry[split]["files"]` with every relative
        path (str or list of str) made absolute.

    Raises:
        FastcifarError: from load_manifest when the format is not prepared, naming the command to run.
    """
    from fastcifar.data.prepare import load_manifest

    manifest = load_manifest(cfg.data.dataset, root_of(cfg), require=(key,))
    base = Path(manifest["dir"])
    formats = manifest["formats"]
    entry = formats["dali"][key[5:]] if key.startswith("dali:") else formats[key]
    files = {name: [base / p for p in value] if isinstance(value, list) else base / value
             for name, value in entry[check_split(split)]["files"].items()}
    return entry, files


def npy_paths(cfg: Config, split: str) -> tuple[Path, Path]:
    """Paths of the split's uint8 [N, 32, 32, 3] images and int64 [N] labels (fine or coarse) in npy/."""
    _, files = prepared_format(cfg, "npy", split)
    return files["images"], files["coarse_labels" if label_kind(cfg) == "coarse" else "labels"]
