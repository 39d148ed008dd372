"""No host syncs in what the training process runs of the torch, ffcv and dali loaders, proven on the CPU.

tests/test_host_sync.py drives every packaged config's step through the `gpu` loader. Here each other loader is
built as the trainer builds it (`build.train_input` over the train indices of a held-out val split, on tiny
synthetic prepared data). After a warm-up step, the rest of the epoch, the epoch boundary (set_epoch, iter) and
two batches of the next epoch are fetched and trained on under `HostSyncDetector`: the loader's __iter__ /
__next__ in the training thread, its to-device copy and layout view, GpuAugment.train_batch, forward, loss,
backward, optimizer, EMA, schedule and metric sums.

What each loader runs in the training thread (the rest runs in its own worker processes or threads on host
memory, which the detector does not watch: its modes are per thread, and other processes do not report back):

    torch  DataLoader.__next__ (a batch collated by a worker in shared memory), to_device_ahead, nhwc_to_contract.
    ffcv   EpochIterator.__next__ (a view of ffcv's ring buffer); at the epoch start, ffcv's order and buffers.
    dali   the external source's callback (the epoch's order, the native flip / translate draws, entry views),
           share_outputs, the DLPack views, nhwc_to_contract. Labels are parsed from ASCII once, at build.

With `data.workers: 0` the torch loader runs its per-image CPU transforms and collate in the training thread too;
they read host scalars by design (the per-sample baseline users run), which the CPU detector cannot tell from
device reads, so the watched runs use worker processes (the default is `data.workers: 4`).

Evaluation reads through the `gpu` loader (`inputs.eval_loader`) in the trainer and in `fastcifar eval`, whatever
`data.loader` is; tests/test_host_sync.py watches it (only the Python `evaluate(..., loader=...)` picks another).

Each case then breaks its loader on purpose (an `.item()` in code the training thread runs) and checks that the
detector reports it there, so the clean result cannot come from a region the detector does not see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect

import pytest
import torch
from tiny_run import tiny_config

from fastcifar.config import Config
from fastcifar.engine import build
from fastcifar.engine.host_sync import HostSyncDetector, cuda_sync_errors
from fastcifar.engine.inputs import data_info, split_indices
from fastcifar.loaders import LOADERS
from fastcifar.loaders import base as loader_base
from fastcifar.loaders.dali_loader import parse_ascii_labels

pytestmark = pytest.mark.usefixtures("one_thread")

LOADER_NAMES = ["torch", "ffcv", "dali"]
FORMATS = {"torch": ("npy",), "ffcv": ("npy", "ffcv"), "dali": ("npy", "dali")}
BATCH = 64  # images per step: 448 training images (512 - 64 held out) = 7 batches per epoch
IMAGE_SIZE = 40  # px: the torch loader resizes on the CPU, the others leave the resize to GpuAugment
SYNC = "aten._local_scalar_dense.default"  # what the deliberate `.item()` is reported as


def require(name: str) -> None:
    """Skip when the loader's optional library does not import (ffcv's import resets torch's thread count)."""
    library = LOADERS[name].library
    if library is not None:
        threads = torch.get_num_threads()
        try:
            pytest.importorskip(library, reason=f"{library} is an optional extra")
        finally:
            torch.set_num_threads(threads)


def loader_config(root, out_dir, name: str) -> Config:
    """The tiny trainer config on loader `name`: crop + flip (native in dali's graph), a val split, EMA.

    One DataLoader worker process (torch) or one library thread (ffcv, dali): the training thread's share of the
    work is the same with more, and the tests share 2 cores.
    """
    return tiny_config(
        root, out_dir,
        data={"loader": name, "workers": 1, "batch_size": BATCH, "val_split": BATCH, "native_augment": name == "dali"},
        augment={"image_size": IMAGE_SIZE, "crop_padding": 2, "hflip": 0.5},
        train={"ema_decay": 0.99},
    )


def ffcv_epoch_start() -> str:
    """The call site of `iter(self.loader)` in FfcvLoader.__iter__, as HostSyncDetector reports it.

    The one documented exception: at each epoch start ffcv allocates its ring of host batch buffers,
    `torch.empty(...).pin_memory().numpy()` (ffcv/pipeline/allocation_query.py). Those are CPU tensors on a CUDA
    run too (no device is involved), but on the CPU the detector cannot tell them from device tensors, so it
    reports the `.numpy()`. Only that op at that line is allowed; the epoch's batches are watched in full.
    """
    from fastcifar.loaders.ffcv_loader import FfcvLoader

    lines, first = inspect.getsourcelines(FfcvLoader.__iter__)
    line = first + next(i for i, text in enumerate(lines) if "iter(self.loader)" in text)
    return f"loaders/ffcv_loader.py:{line} in __iter__"


def allowed(name: str) -> tuple[tuple[str, str], ...]:
    return (("Tensor.numpy", ffcv_epoch_start()),) if name == "ffcv" else ()


@dataclasses.dataclass
class LoaderRun:
    """A run's training side as Trainer._build_data / _build_model / _build_optimization assemble it."""

    loader: object
    augment: object
    stepper: object
    sums: dict
    step: int = 0

    @classmethod
    def build(cls, cfg: Config, device: str = "cpu") -> LoaderRun:
        """Like `test_host_sync.build_pieces`, the optimizer gets CUDA's fused kernels (the step this stands in for)."""
        dev = torch.device(device)
        torch.manual_seed(cfg.train.seed)
        info = data_info(cfg)
        train_idx, _ = split_indices(cfg, info.train_count)
        loader, augment = build.train_input(cfg, info, dev, 0, 1, train_idx)
        model = build.build_model_on(cfg, info.num_classes, dev)
        ema = build.ema_of(model, cfg)
        stepper = build.stepper(cfg, augment, model, ema, None, len(loader), dev, kernels_for="cuda")
        sums = {"loss": torch.zeros((), dtype=torch.float64, device=dev),
                "correct": torch.zeros((), dtype=torch.int64, device=dev)}
        return cls(loader, augment, stepper, sums)

    def epoch(self, epoch: int):
        """Trainer._train_epoch's start: the loader's and the augment's epoch, then one iterator."""
        self.loader.set_epoch(epoch)
        self.augment.set_epoch(epoch)
        return iter(self.loader)

    def train(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Trainer._step plus the metric sums of Trainer._train_epoch."""
        loss, hits = self.stepper(images, labels, self.step)
        self.step += 1
        self.sums["loss"] += loss.double() * labels.shape[0]
        self.sums["correct"] += hits


def run_epoch_boundary(run: LoaderRun, watch) -> tuple[object, torch.Tensor, torch.Tensor]:
    """Warm-up step, then inside `watch` (a context manager: the detector) the rest of epoch 0 and two steps of
    epoch 1.

    Returns:
        (epoch 1's iterator, still open; epoch 0's first labels; epoch 1's first labels), the labels cloned (ffcv
        batches are views into buffers it reuses).
    """
    batches = run.epoch(0)
    images, labels = next(batches)  # the loader's start: workers, JIT, pipeline build
    first0 = labels.clone()
    run.train(images, labels)  # warm-up: optimizer state, cached constants
    with watch:
        for images, labels in batches:
            run.train(images, labels)
        batches = run.epoch(1)
        images, labels = next(batches)
        first1 = labels.clone()
        run.train(images, labels)
        run.train(*next(batches))
    return batches, first0, first1


def sabotage(name: str, monkeypatch) -> None:
    """Put an `.item()` into code the training thread runs for each batch of loader `name`."""

    def reads(images: torch.Tensor) -> None:
        images.sum().item()  # the deliberate host sync

    if name == "ffcv":
        from ffcv.loader.epoch_iterator import EpochIterator

        next_batch = EpochIterator.__next__

        def next_and_read(self):
            batch = next_batch(self)
            reads(batch[0])
            return batch

        monkeypatch.setattr(EpochIterator, "__next__", next_and_read)
        return
    module = importlib.import_module(LOADERS[name].module)

    def view_and_read(images: torch.Tensor) -> torch.Tensor:
        reads(images)
        return loader_base.nhwc_to_contract(images)

    monkeypatch.setattr(module, "nhwc_to_contract", view_and_read)


@pytest.mark.parametrize("name", LOADER_NAMES)
def test_loader_epoch_and_epoch_boundary_have_no_host_sync(name, prepared_root, tmp_path, monkeypatch):
    require(name)
    cfg = loader_config(prepared_root("cifar10", FORMATS[name]), tmp_path, name)
    run = LoaderRun.build(cfg)
    assert run.augment.per_image_ops == (name != "torch")  # torch augmented and resized on the CPU
    assert run.augment.cfg.crop_padding == (0 if name == "dali" else 2)  # dali's graph translated natively
    steps = len(run.loader)
    assert steps == (512 - BATCH) // BATCH

    detector = HostSyncDetector(allow=allowed(name))
    batches, first0, first1 = run_epoch_boundary(run, detector)
    try:
        assert not detector.events, f"{name}: host syncs in the loader's fetch or the step:\n{detector.report()}"
        # the watched code really ran: the rest of epoch 0, then epoch 1 in its own order
        assert run.step == steps + 2 and torch.isfinite(run.sums["loss"])
        assert 0 <= int(run.sums["correct"]) <= run.step * BATCH
        assert not torch.equal(first0, first1), "set_epoch(1) gave epoch 0's order"

        sabotage(name, monkeypatch)  # a broken loader: the same detector must see it
        with HostSyncDetector(allow=allowed(name)) as broken:
            images, labels = next(batches)
            run.train(images, labels)
        ops = [(e.op, e.site.split(":")[0]) for e in broken.events]
        assert ops == [(SYNC, f"loaders/{LOADERS[name].module.rsplit('.', 1)[1]}.py")], broken.report()
    finally:
        batches.close()  # ends ffcv's epoch thread / drains dali's scheduled batches


def test_dali_label_parsing_has_no_host_sync():
    """parse_ascii_labels (dali's `.cls` entries, parsed once at build) stays on the labels' device: no branch on
    the data, no boolean-mask indexing."""
    raw = torch.tensor([[ord("4"), ord("2"), 0, 0], [ord("7"), ord("\n"), 0, 0], [ord("9"), ord("9"), 0, 0]],
                       dtype=torch.uint8)
    with HostSyncDetector() as detector:
        labels = parse_ascii_labels(raw)
    assert not detector.events, detector.report()
    assert labels.tolist() == [42, 7, 99] and labels.dtype == torch.int64


# ---------------------------------------------------------------------------- CUDA: the device's own check


@contextlib.contextmanager
def cuda_watch(detector: HostSyncDetector, sync_errors: bool):
    """The detector, inside CUDA's own check (`cuda_sync_errors`: every synchronizing CUDA call raises)."""
    with cuda_sync_errors(enabled=sync_errors), detector:
        yield


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", LOADER_NAMES)
def test_cuda_loader_epoch_and_boundary_have_no_host_sync(name, prepared_root, tmp_path):
    """On CUDA only tensors on the device count, so ffcv needs no exception. CUDA's own sync check
    (`cuda_sync_errors`, process-wide) is on for torch and dali; not for ffcv, whose epoch thread copies to the
    device with blocking copies by design (ffcv_loader._pipelines): the check would kill that thread, and the
    training thread would wait for its batch forever."""
    require(name)
    cfg = loader_config(prepared_root("cifar10", FORMATS[name]), tmp_path, name)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cuda"))
    run = LoaderRun.build(cfg, "cuda")
    torch.cuda.synchronize()
    detector = HostSyncDetector(device="cuda")
    batches, _, _ = run_epoch_boundary(run, cuda_watch(detector, sync_errors=name != "ffcv"))
    batches.close()
    assert not detector.events, f"{name}: host syncs in the loader's fetch or the step:\n{detector.report()}"
    assert run.step == len(run.loader) + 2 and torch.isfinite(run.sums["loss"])
