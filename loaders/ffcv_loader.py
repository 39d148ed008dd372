"""`ffcv` loader: the .beton read by `ffcv.loader.Loader` and its numba-JIT pipeline.

Per batch, on `data.workers` JIT threads (0 = all cores): SimpleRGBImageDecoder (raw 32x32x3 bytes) ->
[native_augment: RandomHorizontalFlip(hflip), RandomTranslate(crop_padding)] -> ToTensor -> ToTorchImage
(channels_last view) -> ToDevice (blocking, in ffcv's thread); labels: IntDecoder -> ToTensor -> Squeeze(1) -> ToDevice.
The first epoch pays numba's compilation (~7-14 s on 2 cores); later epochs do not.

Order:
    world_size == 1: ffcv's own order (`data.ffcv_order`; eval is always sequential). ffcv's RANDOM draws
        `np.random.default_rng(seed + epoch).permutation(indices)` (ffcv/traversal_order/random.py), so
        `set_epoch(e)` sets ffcv's epoch counter and epoch e is reproducible from (seed, e) alone
        (QUASI_RANDOM likewise seeds numba's RNG with seed * 912300 + epoch).
    world_size > 1: the contract's order (base.sample_order: torch.randperm seeded by seed + epoch, padded or
        dropped to equal length, strided shard). That is the algorithm of ffcv's own `distributed=True`
        (a torch DistributedSampler), but with an explicit rank instead of one read from an initialized
        process group, and with drop_last applied before sharding. QUASI_RANDOM has no distributed mode in
        ffcv and is refused.

Native augment (`data.native_augment: true`, train only) runs hflip and the translate (zero fill: ffcv's
RandomTranslate ignores augment.pad_mode) in the JIT pipeline, seeded by numba's own per-thread RNG, so it
is not reproducible from the seed. Every other op, and the resize to image_size, still runs on the device.

Threads: importing ffcv and building or iterating its Loader call torch.set_num_threads(workers) (ffcv's
Compiler.set_num_threads); this module restores the caller's torch thread count afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from fastcifar.config import Config
from fastcifar.errors import FastcifarError
from fastcifar.loaders.base import (
    as_device,
    batch_size_for,
    check_indices,
    check_rank,
    drop_last_for,
    label_kind,
    native_ops_for,
    prepared_format,
    require_library,
    sample_order,
    worker_count,
)

ORDERS = {"random": "RANDOM", "quasi_random": "QUASI_RANDOM", "sequential": "SEQUENTIAL"}
EPOCH_THREAD_JOIN_S = 5.0  # the most a closed epoch waits for ffcv's thread: a bound, ffcv's poll is 0.5 s


class FfcvLoader:
    """Wraps `ffcv.loader.Loader` so it follows the contract (order, set_epoch, tuple of two tensors).

    Yields:
        images uint8 [B, 3, 32, 32] channels_last on the device, labels int64 [B] on the device. Both are
        views into ffcv's ring of batch buffers: valid until the next batch is drawn (clone to keep one).
    """

    per_image_ops_done = False  # the resize (and all non-native ops) run in GpuAugment

    def __init__(self, loader, native_ops: frozenset[str]):
        self.loader = loader  # ffcv.loader.Loader
        self.native_ops = native_ops
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loader.next_epoch = self.epoch  # ffcv seeds the epoch's order from seed + next_epoch
        with keep_torch_threads():
            batches = iter(self.loader)  # starts ffcv's epoch thread
        try:
            yield from batches
        finally:  # a consumer that stops early (bench, early stop) must not leak ffcv's epoch thread and buffers
            batches.close()
            # wait for the thread to see the close (it polls every 0.5 s while its queue is full): a daemon thread
            # still freeing its tensors when the interpreter exits is killed inside torch's C++ dealloc, and the
            # process aborts ("terminate called without an active exception", exit 134) after its work is done
            batches.join(timeout=EPOCH_THREAD_JOIN_S)


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """ffcv's Compiler.set_num_threads also calls torch.set_num_threads(workers) in the calling thread;
    restore the process's own intra-op thread count so model code is not throttled to ffcv's workers."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pipelines(device: torch.device, label_field: str, hflip: float, padding: int) -> dict:
    """ffcv pipelines per field; the unused label field is disabled (None)."""
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.transforms import (
        RandomHorizontalFlip,
        RandomTranslate,
        Squeeze,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    image = [SimpleRGBImageDecoder()]  # [B, 32, 32, 3] uint8 numpy, JIT
    if hflip > 0:
        image.append(RandomHorizontalFlip(flip_prob=hflip))
    if padding > 0:
        image.append(RandomTranslate(padding=padding))
    image += [ToTensor(), ToTorchImage(channels_last=True), ToDevice(device, non_blocking=False)]
    # Blocking copies: ffcv reuses its pinned host buffers and does not make the host wait for a pending copy
    # before refilling one; the wait happens in ffcv's epoch thread, not in the training loop.
    label = [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=False)]  # [B, 1] -> [B] int64
    other = "coarse_label" if label_field == "label" else "label"
    return {"image": image, label_field: label, other: None}


def _install_shard_order(loader, *, rank: int, world_size: int, train: bool, drop_last: bool, shuffle: bool) -> None:
    """Replace the ffcv loader's traversal order by the contract's sharded order (see module docstring).

    ffcv 1.0.2's constructor cannot take a custom TraversalOrder (it calls the instance), so the order is
    swapped after construction; `first_traversal_order` is what ffcv's `__len__` measures.
    """
    from ffcv.traversal_order.base import TraversalOrder

    class ShardOrder(TraversalOrder):
        def sample_order(self, epoch: int) -> np.ndarray:
            positions = sample_order(len(self.indices), seed=self.seed, epoch=epoch, rank=rank, world_size=world_size,
                                     train=train, drop_last=drop_last, shuffle=shuffle)
            return self.indices[positions.numpy()]

    loader.distributed = True
    loader.traversal_order = ShardOrder(loader)
    loader.first_traversal_order = loader.next_traversal_order()


def build(cfg: Config, split: str, *, train: bool, device: torch.device | str, rank: int = 0, world_size: int = 1,
          indices: np.ndarray | None = None) -> FfcvLoader:
    """The `ffcv` loader over ffcv/{split}.beton (format "ffcv")."""
    with keep_torch_threads():  # importing ffcv and building a Loader both reset torch's thread count
        return _build(cfg, split, train=train, device=device, rank=rank, world_size=world_size, indices=indices)


def _build(cfg: Config, split: str, *, train: bool, device: torch.device | str, rank: int, world_size: int,
           indices: np.ndarray | None) -> FfcvLoader:
    require_library("ffcv")
    from ffcv.loader import Loader, OrderOption

    check_rank(rank, world_size)
    entry, files = prepared_format(cfg, "ffcv", split)
    indices = check_indices(indices, int(entry[split]["count"]))
    native = native_ops_for(cfg, train)
    drop_last = drop_last_for(cfg, train)
    order_name = cfg.data.ffcv_order if train else "sequential"
    if world_size > 1 and order_name == "quasi_random":
        raise FastcifarError(
            "ffcv has no distributed QUASI_RANDOM order; set data.ffcv_order: random for multi-GPU runs."
        )
    pipelines = _pipelines(as_device(device), "coarse_label" if label_kind(cfg) == "coarse" else "label",
                           cfg.augment.hflip if "hflip" in native else 0.0,
                           cfg.augment.crop_padding if "crop" in native else 0)
    options = dict(
        batch_size=batch_size_for(cfg, train),
        num_workers=worker_count(cfg, "ffcv"),  # JIT threads; ffcv reads < 1 as "all cores"
        os_cache=cfg.data.ffcv_os_cache,
        # world_size > 1: built sequential, then given the contract's sharded order below.
        order=getattr(OrderOption, ORDERS[order_name] if world_size == 1 else "SEQUENTIAL"),
        distributed=False,
        seed=cfg.train.seed,
        indices=indices,
        pipelines=pipelines,
        drop_last=drop_last,
        batches_ahead=max(1, cfg.data.prefetch),
    )
    try:
        loader = Loader(str(files["beton"]), **options)
    except ValueError as e:
        if order_name == "quasi_random":  # ffcv: "Dataset won't benefit from QuasiRandom order"
            raise FastcifarError(f"ffcv refused data.ffcv_order: quasi_random ({e}); set data.ffcv_order: random "
                                 "or data.ffcv_os_cache: false.") from None
        raise
    if world_size > 1:
        _install_shard_order(loader, rank=rank, world_size=world_size, train=train, drop_last=drop_last,
                             shuffle=train and order_name != "sequential")
    return FfcvLoader(loader, native)
