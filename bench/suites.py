"""The three benchmark views, each a function returning one plain-dict row per measured cell.

    loader_only  img/s of a loader delivering batches READY for the model: loader + GpuAugment.train_batch
                 (float32 [B, 3, S, S] channels_last, normalized), the exact work the trainer does before forward.
    model_only   the ceiling: train-step img/s (forward + backward + optimizer step) on a synthetic batch already
                 on the device, with the same compile / AMP / channels_last settings (nanoGPT bench.py's switch
                 between real and synthetic batches).
    end_to_end   train-step img/s with a loader feeding the model; the share of wall time spent blocked getting
                 the next augmented batch; the ratio to the ceiling and a verdict (loader- or compute-bound).

Every loader is built through `fastcifar.loaders.build_loader` from a `Config`, and augmented by the shared
`GpuAugment` with one fixed policy (BENCH_AUGMENT), so the benchmark compares loaders, not policies. Warm-up
(loader construction, DataLoader worker start, FFCV's numba JIT, DALI's pipeline build, torch.compile) is timed
on its own and never inside a throughput figure. Throughput figures are medians over `iters` timed iterations,
with min and max, from CUDA events on a GPU and perf_counter on the CPU.

A timed iteration is a *window* of consecutive batches that closes after `window` batches or MIN_WINDOW_S of wall
time, whichever comes first; img/s of a window = its images / its duration. Loaders prefetch asynchronously
(DataLoader workers, ffcv and DALI queues), so single batches arrive in bursts: a batch waiting in the queue comes
back in microseconds, the next one waits for a whole worker round. Timing single batches would make the median
swing between the two; a window of workers x prefetch batches (the most a loader holds ready) spans a full round.
A step that is slow anyway (a CPU train step: the queue stays full) closes its window alone, so slow views stay
short. Warm-up is the first batch plus `warmup - 1` windows, which also drains the batches prefetched at start.
"""

from __future__ import annotations

import gc
import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from fastcifar.bench.timing import (
    CpuMeter,
    IterationClock,
    summarize,
    throughput,
)
from fastcifar.config import Config, from_dict
from fastcifar.engine.precision import AMP_DTYPES, autocast, input_dtype, synchronize
from fastcifar.errors import FastcifarError
from fastcifar.loaders import LOADERS

# variant name on the CLI -> (loader registry name, native_augment): every loader, then "NAME-native" for each
# loader whose library can run the augmentation itself
VARIANTS: dict[str, tuple[str, bool]] = {
    **{name: (name, False) for name in LOADERS},
    **{f"{name}-native": (name, True) for name, spec in LOADERS.items() if spec.native_ops},
}
# the prepared format each loader reads
FORMATS = {name: spec.format for name, spec in LOADERS.items()}
# one fixed augmentation policy for every loader: random crop after 4 px padding (a translate) + mirror
BENCH_AUGMENT = {"crop_padding": 4, "hflip": 0.5}
LOADER_BOUND_RATIO = 0.90  # e2e below 90 % of the model-only ceiling ...
HIGH_DATA_WAIT = 0.10  # ... while >= 10 % of the wall time is spent waiting for data = loader-bound
MIN_WINDOW_S = 0.5  # a timed window closes after this much wall time even when it has fewer than `window` batches


@dataclass
class BenchSettings:
    """Resolved settings shared by every cell of one benchmark run."""

    root: Path  # data root holding ROOT/prepared/DATASET
    dataset: str = "cifar100"
    device: str = "cpu"  # resolved: cpu | cuda | cuda:N (never auto)
    batch_size: int = 256  # images per step
    workers: int = 2  # DataLoader workers (torch) / threads (ffcv, dali)
    model: str = "resnet18"  # timm name
    cifar_stem: bool = False
    amp: str = "none"  # bf16 | fp16 | none
    compile: bool = False
    channels_last: bool = True
    iters: int = 20  # timed windows per cell (>= 10 for a meaningful median)
    warmup: int = 3  # warm-up: the first batch plus warmup - 1 windows, timed on their own
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iters < 1 or self.warmup < 1:
            raise FastcifarError(f"--iters ({self.iters}) and --warmup ({self.warmup}) must be at least 1; pass larger values.")
        if self.amp not in AMP_DTYPES:
            raise FastcifarError(f"Unknown --amp '{self.amp}'; choose {', '.join(AMP_DTYPES)}.")


def data_info(settings: BenchSettings):
    """Manifest facts of the prepared dataset under `settings.root` (`fastcifar.engine.inputs.DataInfo`:
    mean/std on the 0-255 scale, num_classes, synthetic, train_count). FastcifarError when it is not prepared."""
    from fastcifar.engine.inputs import data_info as read_info

    return read_info(make_config(settings, "gpu", 32))


def make_config(settings: BenchSettings, variant: str, image_size: int) -> Config:
    """The run Config one benchmark cell stands for (validated by the schema like any YAML)."""
    loader, native = VARIANTS.get(variant, (variant, False))
    return from_dict({
        "name": f"bench-{variant}-{image_size}px",
        "data": {
            "dataset": settings.dataset, "root": str(settings.root), "loader": loader, "batch_size": settings.batch_size,
            "workers": settings.workers, "native_augment": native, "drop_last": True,
        },
        "augment": {"image_size": image_size, **BENCH_AUGMENT},
        "model": {"name": settings.model, "cifar_stem": settings.cifar_stem},
        "train": {
            "device": settings.device, "amp": settings.amp, "compile": settings.compile,
            "channels_last": settings.channels_last, "seed": settings.seed,
        },
    })


def verdict(ratio: float, data_wait_share: float) -> str:
    """'loader-bound' if e2e < LOADER_BOUND_RATIO of the ceiling and the data wait is high, else 'compute-bound'."""
    return "loader-bound" if ratio < LOADER_BOUND_RATIO and data_wait_share >= HIGH_DATA_WAIT else "compute-bound"


# ---------------------------------------------------------------------------- building blocks


def _endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches across epoch boundaries (set_epoch before each), so a short synthetic epoch can feed any `iters`."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        produced = 0
        for batch in loader:
            produced += 1
            yield batch
        if produced == 0:
            raise FastcifarError(
                f"The {type(loader).__name__} yields no batches (the split is smaller than one batch); lower --batch-size."
            )


class Pipeline:
    """A loader plus the shared augment: `next()` returns (x [B, 3, S, S] channels_last normalized, in the AMP
    dtype (float32 without AMP), targets int64 [B]) on the device: exactly what the train step consumes."""

    def __init__(self, cfg: Config, info, device: torch.device) -> None:
        from fastcifar.engine.build import train_input

        # the trainer's own assembly: ops the library already ran natively (native_augment) are off in the augment
        self.loader, self.augment = train_input(cfg, info, device)
        self.on_device_ops = not self.loader.per_image_ops_done
        self.native_ops = sorted(getattr(self.loader, "native_ops", ()))  # e.g. ["crop", "hflip"] with native_augment
        self._batches = _endless(self.loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = next(self._batches)  # [B, 3, H, W] uint8 channels_last, [B] int64, on device
        return self.augment.train_batch(images, labels)

    def close(self) -> None:
        """Stop the loader's workers / threads now rather than at garbage collection."""
        self._batches.close()
        self.loader = self.augment = self._batches = None
        gc.collect()


def _check_ready(x: torch.Tensor, batch_size: int, image_size: int, dtype: torch.dtype) -> None:
    """The benchmark only counts batches the model takes as they are; anything else is a loader/augment bug."""
    expected = (batch_size, 3, image_size, image_size)
    if tuple(x.shape) != expected or x.dtype != dtype or not x.is_contiguous(memory_format=torch.channels_last):
        raise RuntimeError(f"augmented batch is {x.dtype} {tuple(x.shape)} (channels_last: "
                           f"{x.is_contiguous(memory_format=torch.channels_last)}), expected {dtype} {expected} channels_last")


class TrainStep:
    """The trainer's step (`fastcifar.engine.step.train_step`): forward under autocast, loss, backward with a
    GradScaler (enabled for fp16 only), optimizer step, on a model built by the trainer's builders
    (`fastcifar.engine.build`): channels_last on `device`, compiled with the same flags when `cfg.train.compile`.
    The ceiling and the end-to-end rows run this same step.
    """

    def __init__(self, cfg: Config, num_classes: int, device: torch.device) -> None:
        from fastcifar.engine.build import build_model_on, compile_model, optimizer_and_scaler, set_backend_flags
        from fastcifar.engine.step import make_objective
        from fastcifar.losses import build_criterion

        set_backend_flags()  # the trainer's cuDNN / TF32 settings, so the ceiling is the trainer's ceiling
        self.model = build_model_on(cfg, num_classes, device)
        self.model.train()
        if cfg.train.compile:  # the trainer's compile: static shapes, fresh dynamo caches (compile time stays in warm-up)
            compile_model(self.model, cfg, graphs=1)  # one image size and batch size per cell
        self.optimizer, self.scaler = optimizer_and_scaler(self.model, cfg, device)
        self.objective = make_objective(build_criterion(cfg))
        self.autocast = autocast(device, cfg.train.amp)
        self.grad_clip = cfg.optim.grad_clip

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One step on x [B, 3, S, S] (channels_last, on the device); returns the detached loss, no host sync."""
        from fastcifar.engine.step import train_step

        loss, _ = train_step(self.model, x, targets, self.objective, self.optimizer, self.scaler, self.autocast, self.grad_clip)
        return loss


def loader_window(cfg: Config, batches_per_epoch: int) -> int:
    """Batches per timed window for a loader: workers x prefetch (the most batches it holds ready), at least 1,
    and at most a quarter of an epoch, so most windows hold no epoch boundary (whose stall `overall` reports)."""
    return max(1, min(max(1, cfg.data.workers) * max(1, cfg.data.prefetch), batches_per_epoch // 4))


def _windows(step: Callable[[], object], count: int, window: int, clock: IterationClock | None = None) -> list[int]:
    """Run `count` windows of `step()` (one batch each); each closes after `window` batches or MIN_WINDOW_S.

    Marks `clock` at every window boundary when given. Returns the number of batches of each window.
    """
    sizes = []
    if clock is not None:
        clock.mark()
    for _ in range(count):
        start, done = time.perf_counter(), 0
        while done == 0 or (done < window and time.perf_counter() - start < MIN_WINDOW_S):
            step()
            done += 1
        if clock is not None:
            clock.mark()
        sizes.append(done)
    return sizes


def _timed(step: Callable[[], object], settings: BenchSettings, device: torch.device, window: int,
           on_measure_start: Callable[[], None] | None = None) -> dict:
    """Warm up, then time `settings.iters` windows of `step()`.

    Returns first_s (the first batch/step alone: worker start, JIT, pipeline build, compile), warmup_s (first
    batch + warmup - 1 windows), seconds and batches per timed window, and the CPU use of the timed region.
    """
    start = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - start
    _windows(step, settings.warmup - 1, window)
    synchronize(device)  # queued warm-up work must not spill into the timed region
    warm = time.perf_counter() - start
    if on_measure_start is not None:
        on_measure_start()
    clock, meter = IterationClock(device), CpuMeter()
    meter.start()
    batches = _windows(step, settings.iters, window, clock)
    seconds = clock.seconds()  # synchronizes
    return {"first_s": first, "warmup_s": warm, "seconds": seconds, "batches": batches, "cpu": meter.stop(),
            "torch_threads": torch.get_num_threads()}


def _row(view: str, settings: BenchSettings, variant: str | None, image_size: int, timed: dict, window: int) -> dict:
    """Fields every row carries: identity, settings, img/s median/min/max over windows, time per batch, CPU use."""
    seconds, batches, cpu = timed["seconds"], timed["batches"], timed["cpu"]
    rate = throughput(seconds, [n * settings.batch_size for n in batches])
    per_batch = summarize([1000.0 * s / n for s, n in zip(seconds, batches)])  # ms per batch, per window
    return {
        "view": view, "loader": variant, "image_size": image_size, "batch_size": settings.batch_size,
        "workers": settings.workers, "device": settings.device,
        "iters": len(seconds), "batches": sum(batches), "window": window,
        "img_s": rate.median, "img_s_min": rate.min, "img_s_max": rate.max,
        "img_s_overall": settings.batch_size * sum(batches) / sum(seconds),  # total images / total time
        "step_ms": per_batch.median, "step_ms_min": per_batch.min, "step_ms_max": per_batch.max,
        "cpu_pct_one_core": cpu["cpu_pct_one_core"], "cpu_pct_all_cores": cpu["cpu_pct_all_cores"],
        "torch_threads": timed["torch_threads"],  # intra-op threads during the timed region (ffcv may change them)
        "warmup_s": timed["warmup_s"],
    }


def _model_fields(settings: BenchSettings) -> dict:
    return {"model": settings.model, "cifar_stem": settings.cifar_stem, "amp": settings.amp, "compile": settings.compile}


def _loader_fields(variant: str, pipe: Pipeline) -> dict:
    return {"native_augment": VARIANTS.get(variant, (variant, False))[1], "per_image_ops_on_device": pipe.on_device_ops,
            "native_ops": pipe.native_ops}


# ---------------------------------------------------------------------------- views


def loader_only(settings: BenchSettings, variant: str, image_size: int, info) -> dict:
    """img/s of `variant` delivering augmented, model-ready batches at `image_size` (no model).

    Warm-up fields: `build_s` (constructing loader + augment), `first_batch_s` (worker start, JIT, pipeline build
    until the first batch), `warmup_s` (build + first batch + the other warm-up windows).
    """
    device = torch.device(settings.device)
    cfg = make_config(settings, variant, image_size)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    pipe = Pipeline(cfg, info, device)
    build_s = time.perf_counter() - start
    last = {}

    def step() -> None:
        last["x"], _ = pipe.next()

    try:
        window = loader_window(cfg, len(pipe.loader))
        timed = _timed(step, settings, device, window)
        fields = _loader_fields(variant, pipe)
    finally:
        pipe.close()
    _check_ready(last["x"], settings.batch_size, image_size, input_dtype(cfg.train.amp))
    row = _row("loader", settings, variant, image_size, timed, window)
    return {**row, **fields, "out_dtype": str(last["x"].dtype).replace("torch.", ""),
            "build_s": build_s, "first_batch_s": timed["first_s"], "warmup_s": build_s + timed["warmup_s"]}


def model_only(settings: BenchSettings, image_size: int, info) -> dict:
    """The ceiling: train-step img/s on one synthetic normalized batch already on the device (no loader).

    Windows are single steps (nothing is queued ahead). Warm-up fields: `build_s` (model, optimizer),
    `first_step_s` (includes torch.compile's compilation when compiling), `warmup_s` (build + warm-up steps).
    """
    device = torch.device(settings.device)
    cfg = make_config(settings, "gpu", image_size)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    train = TrainStep(cfg, info.num_classes, device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    x = torch.randn(settings.batch_size, 3, image_size, image_size, device=device, dtype=input_dtype(cfg.train.amp))
    x = x.contiguous(memory_format=memory_format)  # [B, 3, S, S], like an augmented batch
    targets = torch.randint(info.num_classes, (settings.batch_size,), device=device)  # [B] int64
    build_s = time.perf_counter() - start
    last = {}

    def step() -> None:
        last["loss"] = train(x, targets)

    timed = _timed(step, settings, device, window=1)
    _check_finite(last["loss"], "model-only")
    row = _row("model", settings, None, image_size, timed, 1)
    return {**row, **_model_fields(settings), "build_s": build_s, "first_step_s": timed["first_s"],
            "warmup_s": build_s + timed["warmup_s"]}


def end_to_end(settings: BenchSettings, variant: str, image_size: int, info, ceiling_img_s: float) -> dict:
    """Train-step img/s with `variant` feeding the model, its data-wait share, ratio to the ceiling and verdict.

    `data_wait_share` = host time blocked in (next batch + augment) / wall time of the timed region. On a GPU
    the step is queued asynchronously, so the host fetches the next batch while the device computes; the wait
    is what the device could not hide.
    """
    device = torch.device(settings.device)
    cfg = make_config(settings, variant, image_size)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    pipe = Pipeline(cfg, info, device)
    train = TrainStep(cfg, info.num_classes, device)
    build_s = time.perf_counter() - start
    state = {"wait": 0.0}  # s, host blocked getting the next augmented batch

    def step() -> None:
        t0 = time.perf_counter()
        x, targets = pipe.next()
        state["wait"] += time.perf_counter() - t0
        state["loss"] = train(x, targets)

    try:
        window = loader_window(cfg, len(pipe.loader))
        timed = _timed(step, settings, device, window, on_measure_start=lambda: state.update(wait=0.0))
        fields = _loader_fields(variant, pipe)
    finally:
        pipe.close()
    _check_finite(state["loss"], "end-to-end")
    row = _row("e2e", settings, variant, image_size, timed, window)
    share = min(state["wait"] / timed["cpu"]["wall_s"], 1.0)
    ratio = row["img_s"] / ceiling_img_s
    return {
        **row, **_model_fields(settings), **fields,
        "data_wait_share": share, "ceiling_img_s": ceiling_img_s, "ratio": ratio, "verdict": verdict(ratio, share),
        "build_s": build_s, "first_step_s": timed["first_s"], "warmup_s": build_s + timed["warmup_s"],
    }


def _check_finite(loss: torch.Tensor, view: str) -> None:
    """A diverged step (NaN loss) would make the throughput meaningless; one host sync, after timing."""
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"{view} train step produced a non-finite loss ({loss.item()})")


def settings_dict(settings: BenchSettings) -> dict:
    """Settings as JSON-ready values."""
    data = asdict(settings)
    data["root"] = str(settings.root)
    return data
