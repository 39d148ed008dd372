"""`dali` loader: webdataset shards fed to one persistent NVIDIA DALI pipeline in the contract's order.

Why not `fn.readers.webdataset`: its order is a shuffle buffer whose RNG carries over from epoch to epoch,
so a reproducible (seed, epoch, rank) order meant rebuilding the pipeline every epoch, and a uniform
shuffle meant a buffer of the whole shard filled before the first batch: a stall of ~1.5 s per CIFAR
epoch on 2 cores (the reading done up front), and a 0.5-0.6 overall/median ratio over an epoch boundary.

Here the pipeline is built once and lives as long as the loader. Its input is an `fn.external_source`
whose callback (batch mode, run by DALI when it schedules an iteration, in the thread that iterates) gives
the encoded entries of the next B samples of this epoch's order: per sample a zero-copy view of its
bytes in the memory-mapped tar, located by the webdataset index (.idx) read once at build. DALI copies
them into its buffers and does the rest:

    raw:      the 3,072 bytes reshaped to [32, 32, 3] HWC, moved to the GPU (`.gpu()`), no decode
    png/jpeg: `fn.decoders.image(device="mixed")` (nvJPEG / GPU; "cpu" without a GPU)
    [native_augment: `fn.flip` (horizontal flag per sample), then a translate by up to crop_padding px as
     `fn.slice` with per-sample integer anchors and zero fill outside the image]
    labels:   int64 per sample (parsed from the `.cls` / `.coarse_cls` entries once, at build)

Without a GPU (`device` cpu) every operator runs on the CPU and the pipeline gets `device_id=None`.

Order and epochs: exactly the contract's (base.sample_order over the split or the `indices` subset, the
same samples in the same batches as the gpu and torch loaders), so `data.val_split` works. The random
draws of the native augment (flip flags, translate anchors) are drawn per epoch with numpy from
(seed, epoch, rank) and fed as argument inputs, so any epoch replays exactly on resume. At an epoch's
end the callback raises StopIteration; the next epoch resets the same pipeline, which then only refills
its `data.prefetch` batches: the first batch waits for one batch of DALI work, not for a shard.

A consumer that stops early (bench windows, early stop) leaves at most `prefetch` batches scheduled;
they are drained and dropped when the epoch's generator closes, so the next epoch starts clean.
"""

from __future__ import annotations

import weakref
from pathlib import Path
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
    nhwc_to_contract,
    num_batches,
    prepared_format,
    require_library,
    sample_order,
    shard_length,
    worker_count,
)

LABEL_BYTES = 4  # CIFAR labels have at most 2 digits (plus a newline some writers add)


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


def augment_seed(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The generator of one epoch's native-augment draws on one rank: a function of (seed, epoch, rank) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank]))


# ---------------------------------------------------------------------------- webdataset shards


class Shards:
    """The split's tars, memory-mapped read-only, and where each sample's entries lie in them.

    Args:
        shards, indexes: the tars and their wds2idx v1.2 index files, in sample order.
        image_ext, label_ext: the entries to read ("rgb" | "png" | "jpg"; "cls" | "coarse_cls").

    Attributes:
        labels: int64 [N], parsed from the label entries.
    """

    def __init__(self, shards: list[Path], indexes: list[Path], image_ext: str, label_ext: str):
        self.maps = [np.memmap(path, dtype=np.uint8, mode="r") for path in shards]  # page-cache backed
        where = [self._read_index(Path(index), number, (image_ext, label_ext)) for number, index in enumerate(indexes)]
        table = np.concatenate(where) if where else np.zeros((0, 5), np.int64)  # [N, 5]
        self.shard = table[:, 0]  # [N] which tar
        self.offset, self.size = table[:, 1], table[:, 2]  # [N] image entry: byte offset and length
        self.labels = self._labels(table[:, 3], table[:, 4])

    def __len__(self) -> int:
        return len(self.shard)

    @staticmethod
    def _read_index(path: Path, number: int, wanted: tuple[str, str]) -> np.ndarray:
        """int64 [samples, 5]: (shard, image offset, image size, label offset, label size) per sample."""
        lines = path.read_text().split("\n")
        header = lines[0].split()
        if len(header) != 2 or not header[0].startswith("v1."):
            raise FastcifarError(f"{path} is not a webdataset index (v1.x); rebuild it with "
                                 "`fastcifar data prepare DATASET --formats dali --force`.")
        rows = []
        for line in lines[1:1 + int(header[1])]:
            fields = line.split()
            entries = {fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields) - 3, 4)}
            try:
                rows.append((number, *entries[wanted[0]], *entries[wanted[1]]))
            except KeyError as e:
                raise FastcifarError(f"A sample in {path} has no .{e.args[0]} entry; rebuild the dali format with "
                                     "`fastcifar data prepare DATASET --formats dali --force`.") from None
        return np.array(rows, dtype=np.int64).reshape(-1, 5)

    def _labels(self, offset: np.ndarray, size: np.ndarray) -> np.ndarray:
        """int64 [N] from the ASCII label entries, read with a few vectorised gathers per tar."""
        raw = np.zeros((len(offset), LABEL_BYTES), np.uint8)  # NUL padded
        for number, data in enumerate(self.maps):
            rows = np.flatnonzero(self.shard == number)
            for column in range(LABEL_BYTES):
                has = rows[size[rows] > column]
                raw[has, column] = data[offset[has] + column]
        return parse_ascii_labels(torch.from_numpy(raw)).numpy()

    def entries(self, samples: np.ndarray) -> list[np.ndarray]:
        """Zero-copy uint8 views of the image entries of `samples` (int64 [b]) in their tars."""
        maps, shard, offset, size = self.maps, self.shard, self.offset, self.size
        return [maps[s][o:o + n] for s, o, n in zip(shard[samples].tolist(), offset[samples].tolist(),
                                                    size[samples].tolist())]


# ---------------------------------------------------------------------------- the loader


def epoch_batches(shards: Shards, order: np.ndarray, batch_size: int, steps: int, flips: np.ndarray | None,
                  anchors: np.ndarray | None) -> Iterator[tuple]:
    """Per step: (entries, labels int64 [b][, flips int32 [b]][, anchors int32 [b, 2]]) of the next samples.

    A plain function of its arguments: the generator holds the shards, not the loader (see Feed).
    """
    for step in range(steps):
        rows = slice(step * batch_size, (step + 1) * batch_size)  # b < batch_size only for a last partial batch
        samples = order[rows]
        batch = [shards.entries(samples), shards.labels[samples]]
        batch += [extra[rows] for extra in (flips, anchors) if extra is not None]
        yield tuple(batch)



class Feed:
    """The external source's callback: the next batch of the current epoch; StopIteration ends the epoch.

    A separate object, so the pipeline (which holds the callback) does not hold the loader: with no
    reference cycle, dropping the loader frees the pipeline and stops its threads at once, instead of
    leaving it to the garbage collector, which might run it in a forked DataLoader worker where DALI's
    threads do not exist (its shutdown then waits forever).
    """

    def __init__(self):
        self.batches: Iterator[tuple] | None = None

    def __call__(self) -> tuple:
        if self.batches is None:
            raise StopIteration
        return next(self.batches)


class DaliLoader:
    """One DALI pipeline for the loader's lifetime, fed the contract's order batch by batch.

    Args:
        shards: the split's webdataset entries (Shards).
        image_ext: "rgb" (raw) | "png" | "jpg".
        indices: optional int64 [M] subset of the split (a held-out val split); None = all.
        batch_size, train, drop_last, device, seed, rank, world_size: as in the contract.
        threads: DALI CPU threads; prefetch: batches DALI runs ahead.
        hflip, crop_padding: native augment (0 = off); native_ops: their names, for remaining_augment.

    Yields:
        images uint8 [B, 3, 32, 32] channels_last on the device (a permuted view of DALI's HWC output),
        labels int64 [B] on the device.

    Attributes:
        builds: pipelines built so far (1 after the first epoch, and it stays 1: no per-epoch rebuild).
    """

    per_image_ops_done = False  # the resize (and all non-native ops) run in GpuAugment

    def __init__(self, shards: Shards, *, image_ext: str, indices: np.ndarray | None, batch_size: int, train: bool,
                 drop_last: bool, device: torch.device, seed: int, rank: int, world_size: int, threads: int,
                 prefetch: int, hflip: float, crop_padding: int, native_ops: frozenset[str]):
        self.shards, self.image_ext, self.indices = shards, image_ext, indices
        self.n = len(shards) if indices is None else len(indices)
        self.batch_size, self.train, self.drop_last, self.device = batch_size, train, drop_last, device
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.threads, self.prefetch = threads, prefetch
        self.hflip, self.crop_padding, self.native_ops = hflip, crop_padding, native_ops
        self.epoch = 0
        self.builds = 0
        self._pipe = None
        self._live: weakref.ref | None = None  # the generator of the epoch being iterated, if any
        self._source = Feed()  # this epoch's batches for the external source

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        samples = shard_length(self.n, rank=self.rank, world_size=self.world_size, train=self.train,
                               drop_last=self.drop_last)
        return num_batches(samples, self.batch_size, self.drop_last)

    def _order(self, epoch: int) -> np.ndarray:
        """int64 [n_rank]: the split's sample indices this rank visits this epoch (base.sample_order, over `indices`).

        Drawn on the CPU (a host permutation) and indexed into the subset in numpy, as the torch loader's
        sampler does: no numpy -> tensor -> numpy round trip at each epoch start.
        """
        order = sample_order(self.n, seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
                             train=self.train, drop_last=self.drop_last).numpy()
        return order if self.indices is None else self.indices[order]

    def _batches(self, epoch: int) -> Iterator[tuple]:
        """The external source's batches of one epoch (see epoch_batches), with this epoch's augment draws."""
        order = self._order(epoch)
        rng = augment_seed(self.seed, epoch, self.rank)
        flips = (rng.random(len(order)) < self.hflip).astype(np.int32) if self.hflip > 0 else None  # [n] 1 = mirror
        p = self.crop_padding
        anchors = rng.integers(-p, p + 1, size=(len(order), 2), dtype=np.int32) if p > 0 else None  # [n, (dy, dx)]
        steps = num_batches(len(order), self.batch_size, self.drop_last)
        return epoch_batches(self.shards, order, self.batch_size, steps, flips, anchors)

    def _pipeline(self):
        """Build the pipeline once (its graph does not depend on the epoch)."""
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        gpu = self.device.type == "cuda"
        device_id = None  # CPU operators only
        if gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.threads, device_id=device_id,
                        prefetch_queue_depth=self.prefetch, seed=self.seed)
        outputs = 2 + (self.hflip > 0) + (self.crop_padding > 0)
        with pipe:
            fed = fn.external_source(source=self._source, num_outputs=outputs, batch=True, cycle=None,
                                     dtype=[types.UINT8, types.INT64] + [types.INT32] * (outputs - 2))
            encoded, label, rest = fed[0], fed[1], list(fed[2:])
            if self.image_ext == "rgb":  # raw HWC bytes: no decode, just a shape
                images = fn.reshape(encoded, shape=[32, 32, 3], layout="HWC")
                images = images.gpu() if gpu else images
            else:
                images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
            if self.hflip > 0:
                images = fn.flip(images, horizontal=rest.pop(0), vertical=0)
            if self.crop_padding > 0:
                images = fn.slice(images, start=rest.pop(0), shape=[32, 32], axes=[0, 1], out_of_bounds_policy="pad",
                                  fill_values=0)
            pipe.set_outputs(images, label.gpu() if gpu else label)
        pipe.build()
        self.builds += 1
        return pipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        live = self._live() if self._live is not None else None
        if live is not None:
            live.close()  # a previous epoch left unfinished: drain it first
        epoch = self._epoch()
        self._live = weakref.ref(epoch)  # weak: a loader -> generator -> loader cycle would outlive both
        return epoch

    def _epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        if self._pipe is None:
            self._pipe = self._pipeline()
        pipe = self._pipe
        self._source.batches = self._batches(self.epoch)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        done = False
        try:
            pipe.schedule_run()  # after a reset: runs `prefetch` iterations ahead
            while True:
                try:
                    images, labels = pipe.share_outputs(cuda_stream=stream)  # ordered on `stream`: no host wait
                except StopIteration:
                    done = True
                    break
                # The default (dynamic) executor never reuses a buffer a DLPack view still holds: no copy.
                images, labels = (to_torch_tensor(out.as_tensor(), copy=False) for out in (images, labels))
                pipe.release_outputs()
                pipe.schedule_run()
                yield nhwc_to_contract(images), labels  # [B, 32, 32, 3] -> [B, 3, 32, 32] view
        finally:
            if not done:  # stopped early: end the epoch's feed, drop what DALI already scheduled
                self._source.batches = None
                pipe.schedule_run()  # the source raises StopIteration: nothing more is scheduled
                while not pipe.empty():
                    pipe.share_outputs()
                    pipe.release_outputs()
            self._source.batches = None
            pipe.reset()  # ready for the next epoch; the pipeline and its threads stay


def build(cfg: Config, split: str, *, train: bool, device: torch.device | str, rank: int = 0, world_size: int = 1,
          indices: np.ndarray | None = None) -> DaliLoader:
    """The `dali` loader over dali/{encoding}/{split}-*.tar (format "dali:{data.dali_encoding}")."""
    require_library("dali")
    check_rank(rank, world_size)
    entry, files = prepared_format(cfg, f"dali:{cfg.data.dali_encoding}", split)
    coarse = label_kind(cfg) == "coarse"
    shards = Shards(files["shards"], files["index"], entry["ext"],
                    entry["coarse_label_ext"] if coarse else entry["label_ext"])
    if len(shards) != int(entry[split]["count"]):
        raise FastcifarError(f"The dali {split} index lists {len(shards)} samples, the manifest "
                             f"{entry[split]['count']}; "
                             f"rebuild it with `fastcifar data prepare {cfg.data.dataset} --formats dali --force`.")
    native = native_ops_for(cfg, train)
    return DaliLoader(
        shards, image_ext=entry["ext"], indices=check_indices(indices, len(shards)),
        batch_size=batch_size_for(cfg, train), train=train, drop_last=drop_last_for(cfg, train),
        device=as_device(device), seed=cfg.train.seed, rank=rank, world_size=world_size,
        threads=worker_count(cfg, "dali"), prefetch=max(1, cfg.data.prefetch),
        hflip=cfg.augment.hflip if "hflip" in native else 0.0,
        crop_padding=cfg.augment.crop_padding if "crop" in native else 0, native_ops=native,
    )
