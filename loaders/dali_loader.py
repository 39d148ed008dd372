"""`dali` loader: webdataset shards read by NVIDIA DALI's `fn.readers.webdataset`.

Graph per batch: reader (CPU, `data.workers` threads) -> raw: the 3,072 bytes reshaped to [32, 32, 3]
HWC and moved to the GPU (`.gpu()`), no decode; png/jpeg: `fn.decoders.image(device="mixed")` (nvJPEG /
GPU) -> [native_augment: fn.flip by fn.random.coin_flip(hflip), then a translate by up to crop_padding
px as `fn.slice` with random integer anchors and zero fill outside the image] -> outputs. Labels: the
`.cls` (or `.coarse_cls`) entry is ASCII decimal; DALI pads it with NUL bytes to a fixed [4] and
`parse_ascii_labels` turns it into int64 with a few vectorised torch ops on the device. Without a GPU
(`device` cpu) every operator runs on the CPU and the pipeline gets `device_id=None`.

Order and epochs: DALI's reader splits the (stored-order) sample stream into `world_size` contiguous
shards and shuffles inside a buffer of `initial_fill` samples; here the buffer holds the whole shard, so
the shuffle is a uniform permutation of it. DALI's own RNG carries over from epoch to epoch, so a
resumed run would not see the same orders; instead the pipeline is rebuilt for every epoch with a seed
derived from (seed, epoch, rank) (numpy SeedSequence) and rank r reads shard (r + epoch) % world_size
(DALI's own shard rotation, made a function of the epoch). Epoch e is thus reproducible from
(seed, e, rank) alone, and the shards of one epoch are disjoint and cover the split. Cost per epoch
(CIFAR train, 2 CPU cores): ~0.2 s to build the pipeline, and the first batch waits until the whole
shard is in the shuffle buffer (~150 MiB raw; ~1.5 s here, i.e. the epoch's reading done up front).

Batch counts: drop_last -> LastBatchPolicy.DROP and len = (N // world_size) // B on every rank;
otherwise PARTIAL: every sample of the shard exactly once (eval; shards differ by at most one sample).
Training without drop_last on shards of unequal size (N % world_size != 0) -> FILL: each rank's last
batch is filled up to B with its shard's last sample (DALI's padding, not the contract's wrapping), so
all ranks run ceil(largest shard / B) steps.

`indices` (a held-out val split) cannot be expressed with the webdataset reader, which reads whole
shards; the loader refuses it (set data.val_split: 0 or use the gpu, torch or ffcv loader).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import torch

from fastcifar.config import Config
from fastcifar.errors import FastcifarError
from fastcifar.loaders.base import (
    as_device,
    batch_size_for,
    check_rank,
    drop_last_for,
    label_kind,
    native_ops_for,
    nhwc_to_contract,
    prepared_format,
    require_extra,
    worker_count,
)

LABEL_BYTES = 4  # CIFAR labels have at most 2 digits; fixed so every batch has the same [B, 4] shape


def parse_ascii_labels(raw: torch.Tensor) -> torch.Tensor:
    """Decimal ASCII labels, NUL-padded on the right, to integers.

    Args:
        raw: uint8 [B, L], e.g. b"42\\0\\0"; bytes that are not digits are skipped.

    Returns:
        int64 [B] on raw's device.
    """
    digits = raw.to(torch.int64) - ord("0")  # [B, L]
    is_digit = (digits >= 0) & (digits <= 9)
    value = torch.zeros(raw.shape[0], dtype=torch.int64, device=raw.device)
    for column in range(raw.shape[1]):  # L (= 4) steps over the whole batch
        value = torch.where(is_digit[:, column], value * 10 + digits[:, column], value)
    return value


def shard_bounds(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Samples [begin, end) of DALI's shard `shard` of `n` (its reader's floor(n * i / num_shards) rule)."""
    return n * shard // num_shards, n * (shard + 1) // num_shards


def epoch_pipeline_seed(seed: int, epoch: int, rank: int) -> int:
    """A 31-bit DALI seed from (seed, epoch, rank): shuffles and native augment differ per epoch and rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] & 0x7FFFFFFF)


class DaliLoader:
    """Builds one DALI pipeline per epoch and yields the contract's tuple from DALIGenericIterator.

    Args:
        shards, indexes: the split's webdataset tars and their index files, in sample order.
        count: samples in the split.
        image_ext, label_ext: webdataset extensions ("rgb" | "png" | "jpg"; "cls" | "coarse_cls").
        batch_size, train, drop_last, device, seed, rank, world_size: as in the contract.
        threads: DALI CPU threads; prefetch: batches queued ahead.
        hflip, crop_padding: native augment (0 = off).

    Yields:
        images uint8 [B, 3, 32, 32] channels_last on the device (a permuted view of DALI's HWC output),
        labels int64 [B] on the device. Images live in the iterator's reused buffers: valid until the
        next batch is drawn (clone to keep one).
    """

    per_image_ops_done = False  # the resize (and all non-native ops) run in GpuAugment

    def __init__(self, *, shards: list, indexes: list, count: int, image_ext: str, label_ext: str, batch_size: int,
                 train: bool, drop_last: bool, device: torch.device, seed: int, rank: int, world_size: int,
                 threads: int, prefetch: int, hflip: float, crop_padding: int, native_ops: frozenset[str]):
        self.shards, self.indexes = [str(p) for p in shards], [str(p) for p in indexes]
        self.count, self.image_ext, self.label_ext = count, image_ext, label_ext
        self.batch_size, self.train, self.drop_last, self.device = batch_size, train, drop_last, device
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.threads, self.prefetch = threads, prefetch
        self.hflip, self.crop_padding, self.native_ops = hflip, crop_padding, native_ops
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_id(self) -> int:
        """The reader shard this rank reads this epoch: rotates with the epoch when training."""
        return (self.rank + self.epoch) % self.world_size if self.train else self.rank

    def _policy(self):
        from nvidia.dali.plugin.pytorch import LastBatchPolicy

        if self.drop_last:
            return LastBatchPolicy.DROP
        return LastBatchPolicy.FILL if self._uneven_train_shards() else LastBatchPolicy.PARTIAL

    def _uneven_train_shards(self) -> bool:
        """Training shards of different sizes: FILL keeps the ranks' step counts equal."""
        return self.train and self.count % self.world_size != 0

    def __len__(self) -> int:
        if self.drop_last:
            return (self.count // self.world_size) // self.batch_size
        sizes = [e - b for b, e in (shard_bounds(self.count, s, self.world_size) for s in range(self.world_size))]
        if self._uneven_train_shards():  # FILL: every rank runs as many batches as the largest shard
            return -(-max(sizes) // self.batch_size)
        return -(-sizes[self.shard_id()] // self.batch_size)

    def _pipeline(self):
        """The DALI pipeline of the current epoch (built, not yet run)."""
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None
        seed = epoch_pipeline_seed(self.seed, self.epoch, self.rank)
        begin, end = shard_bounds(self.count, self.shard_id(), self.world_size)
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.threads, device_id=device_id, seed=seed,
                        prefetch_queue_depth=self.prefetch)
        with pipe:
            encoded, label = fn.readers.webdataset(
                paths=self.shards, index_paths=self.indexes, ext=[self.image_ext, self.label_ext],
                shard_id=self.shard_id(), num_shards=self.world_size, random_shuffle=self.train,
                initial_fill=max(1, end - begin),  # the whole shard: a uniform shuffle, not a local one
                seed=seed, pad_last_batch=True, stick_to_shard=True, missing_component_behavior="error",
                name="Reader")
            if self.image_ext == "rgb":  # raw HWC bytes: no decode, just a shape
                images = fn.reshape(encoded, shape=[32, 32, 3], layout="HWC")
                images = images.gpu() if gpu else images
            else:
                images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
            if self.hflip > 0:
                images = fn.flip(images, horizontal=fn.random.coin_flip(probability=self.hflip), vertical=0)
            if self.crop_padding > 0:
                p = self.crop_padding
                anchor = fn.random.uniform(values=list(range(-p, p + 1)), shape=[2], dtype=types.INT32)  # (dy, dx)
                images = fn.slice(images, start=anchor, shape=[32, 32], axes=[0, 1], out_of_bounds_policy="pad",
                                  fill_values=0)
            label = fn.pad(label, fill_value=0, shape=[LABEL_BYTES])  # [L] ASCII -> [4], NUL padded
            pipe.set_outputs(images, label.gpu() if gpu else label)
        pipe.build()
        return pipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        pipe = self._pipeline()
        iterator = DALIGenericIterator([pipe], ["images", "labels"], reader_name="Reader",
                                       last_batch_policy=self._policy(), auto_reset=False)
        try:
            # DROP may give the larger shards one more full batch; every rank stops at the same len().
            for (batch,) in itertools.islice(iterator, len(self)):
                yield nhwc_to_contract(batch["images"]), parse_ascii_labels(batch["labels"])  # [B, 32, 32, 3] -> view
        finally:
            del iterator, pipe  # free the pipeline's threads and buffers before the next epoch builds its own


def build(cfg: Config, split: str, *, train: bool, device: torch.device | str, rank: int = 0, world_size: int = 1,
          indices: np.ndarray | None = None) -> DaliLoader:
    """The `dali` loader over dali/{encoding}/{split}-*.tar (format "dali:{data.dali_encoding}")."""
    require_extra("nvidia.dali", "dali", "dali")
    check_rank(rank, world_size)
    if indices is not None:
        raise FastcifarError("The dali loader reads whole webdataset shards and cannot hold out a val split; set "
                             "data.val_split: 0 or use data.loader: gpu, torch or ffcv.")
    entry, files = prepared_format(cfg, f"dali:{cfg.data.dali_encoding}", split)
    coarse = label_kind(cfg) == "coarse"
    native = native_ops_for(cfg, train)
    device = as_device(device)
    return DaliLoader(
        shards=files["shards"], indexes=files["index"], count=int(entry[split]["count"]), image_ext=entry["ext"],
        label_ext=entry["coarse_label_ext"] if coarse else entry["label_ext"], batch_size=batch_size_for(cfg, train),
        train=train, drop_last=drop_last_for(cfg, train), device=device, seed=cfg.train.seed, rank=rank,
        world_size=world_size, threads=max(1, worker_count(cfg)), prefetch=max(1, cfg.data.prefetch),
        hflip=cfg.augment.hflip if "hflip" in native else 0.0,
        crop_padding=cfg.augment.crop_padding if "crop" in native else 0, native_ops=native,
    )
