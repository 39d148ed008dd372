"""The three benchmark views, each a function returning one plain-dict row per measured cell.

    loader_only  img/s of a loader delivering batches READY for the model: loader + GpuAugment.train_batch
                 (float32 [B, 3, S, S] channels_last, normalized), the exact work the trainer does before forward.
    model_only   the ceiling: train-step img/s (forward + backward + optimizer step) on a synthetic batch already
                 on the device, with the same compile / AMP / channels_last settings (nanoGPT bench.py's switch
                 between real and synthetic batches).
    end_to_end   train-step img/s with a loader feeding the model; the data wait (host blocked getting the next
                 augmented batch; on CUDA also the device idle between steps, from events); the ratio to the
                 ceiling and a verdict (`fastcifar.bench.thresholds`).

Every cell's `Config` starts from `BenchSettings.base` (the bench defaults with BENCH_AUGMENT, or a packaged / YAML
config, with --set overrides) and is validated by the schema; every loader is built through
`fastcifar.loaders.build_loader` and augmented by the shared `GpuAugment` with that one policy, so the benchmark
compares loaders, not policies. Warm-up (loader construction, DataLoader worker start, FFCV's numba JIT, DALI's
pipeline build, torch.compile) is timed on its own and never inside a throughput figure.

The headline img/s is *overall*: every timed image over all timed time, epoch boundaries included. The timed
region always crosses at least one epoch boundary of the loader (the loader is first advanced, untimed, to near the
end of its epoch, and timing continues until a boundary was crossed), and `timed_epochs` stretches it over whole
epochs, so the boundary weighs what it weighs in training. Each row says how many boundaries it timed. The median
and min-max over windows stand beside it: the steady state, stalls left out. Clocks: CUDA events on a GPU,
perf_counter on the CPU.

A timed iteration is a *window* of consecutive batches that closes after `window` batches or MIN_WINDOW_S of wall
time, whichever comes first; img/s of a window = its images / its duration. Loaders prefetch asynchronously
(DataLoader workers, ffcv and DALI queues), so single batches arrive in bursts: a batch waiting in the queue comes
back in microseconds, the next one waits for a whole worker round. Timing single batches would make the median
swing between the two; a window of workers x prefetch batches (the most a loader holds ready) spans a full round.
A step that is slow anyway (a CPU train step: the queue stays full) closes its window alone, so slow views stay
short. Warm-up is the first batch plus `warmup - 1` windows, which also drains the batches prefetched at start.
Windows continue until the cell has timed at least `min_seconds`: at 32 px `iters` windows of a fast loader can
span a tenth of a second, shorter than a shared machine's slow spells, so repeats of such a cell would differ by
whatever spell they hit.
"""

from __future__ import annotations

import copy
import gc
import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from fastcifar.bench.thresholds import verdict
from fastcifar.bench.timing import (
    CpuMeter,
    IterationClock,
    summarize,
    throughput,
)
from fastcifar.config import Config, from_dict
from fastcifar.engine.device_wait import DeviceWaitRecorder
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
    timed_epochs: int = 0  # time at least this many whole epochs of batches (0 = iters windows + one boundary)
    min_seconds: float = 0.0  # time each cell at least this long (more windows; the CLI asks 2 s)
    paired: bool = False  # loader view: the loaders of one size timed in alternating segments (bench/paired.py)
    base: dict = field(default_factory=dict)  # config mapping each cell starts from (bench defaults, or --config)

    def __post_init__(self) -> None:
        if self.iters < 1 or self.warmup < 1:
            raise FastcifarError(f"--iters ({self.iters}) and --warmup ({self.warmup}) must be at least 1; "
                                 "pass larger values.")
        if not 0 <= self.min_seconds < float("inf"):
            raise FastcifarError(f"--min-seconds ({self.min_seconds}) must be a finite number >= 0; pass e.g. 2.")
        if self.amp not in AMP_DTYPES:
            raise FastcifarError(f"Unknown --amp '{self.amp}'; choose {', '.join(AMP_DTYPES)}.")


def data_info(settings: BenchSettings):
    """Manifest facts of the prepared dataset under `settings.root` (`fastcifar.engine.inputs.DataInfo`:
    mean/std on the 0-255 scale, num_classes, synthetic, train_count). FastcifarError when it is not prepared."""
    from fastcifar.engine.inputs import data_info as read_info

    return read_info(make_config(settings, "gpu", 32))


def default_base() -> dict:
    """The config mapping cells start from without --config: schema defaults plus the bench's one policy."""
    return {"augment": dict(BENCH_AUGMENT)}


def make_config(settings: BenchSettings, variant: str, image_size: int) -> Config:
    """The run Config one benchmark cell stands for: `settings.base` (its policy, head, optimizer, ...) with the
    cell's loader, size and the resolved bench settings on top, validated by the schema like any YAML.

    Weights are never downloaded (`model.pretrained` off: weights do not change the speed), there is no teacher
    (a distillation config is measured as its student alone), one fixed image size per cell (no multi-scale) and
    the whole train split (no val split). The step is forward, backward and optimizer; the EMA update, the
    schedule and evaluation are what the real-run view adds.
    """
    loader, native = VARIANTS.get(variant, (variant, False))
    data = copy.deepcopy(settings.base or default_base())
    data["name"] = f"bench-{variant}-{image_size}px"
    data.setdefault("data", {}).update(
        dataset=settings.dataset, root=str(settings.root), loader=loader, batch_size=settings.batch_size,
        workers=settings.workers, native_augment=native, drop_last=True, val_split=0)
    data.setdefault("augment", {}).update(image_size=image_size, scales=[])
    data.setdefault("model", {}).update(name=settings.model, cifar_stem=settings.cifar_stem, pretrained=False)
    data.setdefault("train", {}).update(device=settings.device, amp=settings.amp, compile=settings.compile,
                                        channels_last=settings.channels_last, seed=settings.seed, init_from=None)
    data["distill"] = {**data.get("distill", {}), "teacher": None}
    return from_dict(data)


# ---------------------------------------------------------------------------- building blocks


class Pipeline:
    """A loader plus the shared augment: `next()` returns (x [B, 3, S, S] channels_last normalized, in the AMP
    dtype (float32 without AMP), targets int64 [B]) on the device: exactly what the train step consumes.

    Batches run across epoch boundaries (set_epoch before each), so a short synthetic epoch can feed any number
    of windows. `epoch` / `position` say where the loader is (epoch index, batches fetched in it);
    `boundary_fetch_s` holds the host seconds of each fetch that opened a new epoch (set_epoch, pipeline rebuild,
    worker restart, first batch): the stall a median leaves out.
    """

    def __init__(self, cfg: Config, info, device: torch.device) -> None:
        from fastcifar.engine.build import train_input

        # the trainer's own assembly: ops the library already ran natively (native_augment) are off in the augment
        self.loader, self.augment = train_input(cfg, info, device)
        self.on_device_ops = not self.loader.per_image_ops_done
        self.native_ops = sorted(getattr(self.loader, "native_ops", ()))  # e.g. ["crop", "hflip"] with native_augment
        self.epoch = self.position = 0
        self.boundary_fetch_s: list[float] = []
        self._batches = self._endless()

    def __len__(self) -> int:
        return len(self.loader)  # batches per epoch

    def _endless(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in itertools.count():
            self.loader.set_epoch(epoch)
            self.epoch, self.position = epoch, 0
            for batch in self.loader:
                self.position += 1
                yield batch
            if self.position == 0:
                raise FastcifarError(f"The {type(self.loader).__name__} yields no batches (the split is smaller than "
                                     "one batch); lower --batch-size.")

    def fetch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The loader's next batch: uint8 [B, 3, H, W] channels_last, int64 [B], on the device (not augmented)."""
        start = time.perf_counter()
        batch = next(self._batches)
        if self.position == 1 and self.epoch > 0:
            self.boundary_fetch_s.append(time.perf_counter() - start)
        return batch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.fetch()
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
                           f"{x.is_contiguous(memory_format=torch.channels_last)}), "
                           f"expected {dtype} {expected} channels_last")


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
        # the trainer's compile: static shapes, fresh dynamo caches (compile time stays in warm-up)
        if cfg.train.compile:
            compile_model(self.model, cfg, graphs=1)  # one image size and batch size per cell
        self.optimizer, self.scaler = optimizer_and_scaler(self.model, cfg, device)
        self.objective = make_objective(build_criterion(cfg))
        self.autocast = autocast(device, cfg.train.amp)
        self.grad_clip = cfg.optim.grad_clip

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One step on x [B, 3, S, S] (channels_last, on the device); returns the detached loss, no host sync."""
        from fastcifar.engine.step import train_step

        loss, _ = train_step(self.model, x, targets, self.objective, self.optimizer, self.scaler, self.autocast,
                             self.grad_clip)
        return loss


def loader_window(cfg: Config, batches_per_epoch: int) -> int:
    """Batches per timed window for a loader: workers x prefetch (the most batches it holds ready), at least 1,
    and at most a quarter of an epoch, so most windows hold no epoch boundary (whose stall `overall` reports)."""
    return max(1, min(max(1, cfg.data.workers) * max(1, cfg.data.prefetch), batches_per_epoch // 4))


def _windows(step: Callable[[], object], count: int, window: int, clock: IterationClock | None = None,
             more: Callable[[], bool] | None = None, min_seconds: float = 0.0) -> list[int]:
    """Run `count` windows of `step()` (one batch each), then more while `more()` says so or until `min_seconds`
    have passed; each window closes after `window` batches or MIN_WINDOW_S.

    Marks `clock` at every window boundary when given. Returns the number of batches of each window.
    """
    sizes = []
    if clock is not None:
        clock.mark()
    begin = time.perf_counter()  # host time: on CUDA it runs ahead of the device by at most the queued work
    while (len(sizes) < count or (more is not None and more())
           or time.perf_counter() - begin < min_seconds):
        start, done = time.perf_counter(), 0
        while done == 0 or (done < window and time.perf_counter() - start < MIN_WINDOW_S):
            step()
            done += 1
        if clock is not None:
            clock.mark()
        sizes.append(done)
    return sizes


def _position(pipe: Pipeline, skip: Callable[[], object], step: Callable[[], object], settings: BenchSettings,
              window: int, est_window: int) -> float:
    """Advance `pipe` (untimed, with `skip`: a fetch without the model) to near the end of its epoch, so the timed
    region crosses a boundary early whatever the dataset size; then one settle window of `step` refills the queues
    the fast skip drained. Returns the seconds it took (kept out of warm-up and out of img/s).

    Remaining batches when timing starts: about one settle window plus a quarter of the expected timed batches.
    """
    start = time.perf_counter()
    target = est_window + max(1, settings.iters * est_window // 4)
    moved = False
    while len(pipe) - pipe.position > target:
        skip()
        moved = True
    if moved:
        _windows(step, 1, window)
    return time.perf_counter() - start


def epochs_short(boundaries: int, batches: int, batches_per_epoch: int, timed_epochs: int) -> bool:
    """Whether a loader cell that timed `batches` batches across `boundaries` epoch boundaries must time more: at
    least one boundary, `timed_epochs` of them and as many whole epochs of batches when asked; never beyond
    (need + 2) epochs of batches, so a loader that never reaches a boundary cannot hang the bench."""
    need = max(1, timed_epochs)
    if batches >= (need + 2) * batches_per_epoch:
        return False
    return boundaries < need or batches < timed_epochs * batches_per_epoch


def warm_up(step: Callable[[], object], settings: BenchSettings, device: torch.device, window: int,
            pipe: Pipeline | None = None, skip: Callable[[], object] | None = None) -> dict:
    """The untimed start of a cell: the first batch/step alone, `settings.warmup - 1` windows, and a loader's `pipe`
    advanced to near the end of its epoch (`_position`). Returns first_s, warmup_s (first + windows) and
    position_s."""
    start = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - start
    warm_sizes = _windows(step, settings.warmup - 1, window)
    synchronize(device)  # queued warm-up work must not spill into the timed region
    warm = time.perf_counter() - start
    position_s = 0.0
    if pipe is not None:
        est = (sorted(warm_sizes)[len(warm_sizes) // 2] if warm_sizes
               else min(window, max(1, int(MIN_WINDOW_S / max(first, 1e-6)))))
        position_s = _position(pipe, skip or step, step, settings, window, est)
        synchronize(device)
    return {"first_s": first, "warmup_s": warm, "position_s": position_s}


def _timed(step: Callable[[], object], settings: BenchSettings, device: torch.device, window: int,
           on_measure_start: Callable[[], None] | None = None, pipe: Pipeline | None = None,
           skip: Callable[[], object] | None = None) -> dict:
    """Warm up, then time `settings.iters` windows of `step()`, more while a loader's `pipe` has not crossed an
    epoch boundary (or `settings.timed_epochs` whole epochs) inside the timed region, and until the timed region
    spans `settings.min_seconds`.

    Returns first_s (the first batch/step alone: worker start, JIT, pipeline build, compile), warmup_s (first
    batch + warmup - 1 windows), position_s (advancing the loader to near its epoch end), seconds and batches per
    timed window, the epoch boundaries and their fetch seconds inside the timed region, and its CPU use.
    """
    warm = warm_up(step, settings, device, window, pipe, skip)
    if on_measure_start is not None:
        on_measure_start()
    clock, meter = IterationClock(device), CpuMeter()
    more = None
    if pipe is not None:
        epoch0, fetches0 = pipe.epoch, len(pipe.boundary_fetch_s)
        counted = {"n": 0}

        def step_counted() -> None:
            step()
            counted["n"] += 1

        def more() -> bool:
            return epochs_short(pipe.epoch - epoch0, counted["n"], len(pipe), settings.timed_epochs)

        meter.start()
        batches = _windows(step_counted, settings.iters, window, clock, more, settings.min_seconds)
    else:
        meter.start()
        batches = _windows(step, settings.iters, window, clock, min_seconds=settings.min_seconds)
    seconds = clock.seconds()  # synchronizes
    out = {**warm, "seconds": seconds, "batches": batches, "cpu": meter.stop(),
           "torch_threads": torch.get_num_threads(), "epoch_boundaries": None, "boundary_fetch_s": []}
    if pipe is not None:
        out.update(epoch_boundaries=pipe.epoch - epoch0, boundary_fetch_s=pipe.boundary_fetch_s[fetches0:],
                   batches_per_epoch=len(pipe))
    return out


def window_rates(seconds: list[float], batches: list[int], batch_size: int) -> dict:
    """Throughput of timed windows: `img_s` overall (all images / all time, stalls included: the headline) and
    the median, min and max of the per-window rates (the steady state)."""
    rate = throughput(seconds, [n * batch_size for n in batches])
    return {"img_s": batch_size * sum(batches) / sum(seconds), "img_s_median": rate.median,
            "img_s_min": rate.min, "img_s_max": rate.max}


def _row(view: str, settings: BenchSettings, variant: str | None, image_size: int, timed: dict, window: int) -> dict:
    """Fields every row carries: identity, settings, img/s overall + median/min/max over windows, time per batch,
    the epoch boundaries timed, CPU use."""
    seconds, batches, cpu = timed["seconds"], timed["batches"], timed["cpu"]
    per_batch = summarize([1000.0 * s / n for s, n in zip(seconds, batches)])  # ms per batch, per window
    fetches = timed["boundary_fetch_s"]
    return {
        "view": view, "loader": variant, "image_size": image_size, "batch_size": settings.batch_size,
        "workers": settings.workers, "device": settings.device,
        "iters": len(seconds), "batches": sum(batches), "window": window,
        **window_rates(seconds, batches, settings.batch_size),
        "step_ms": per_batch.median, "step_ms_min": per_batch.min, "step_ms_max": per_batch.max,
        "epoch_boundaries": timed["epoch_boundaries"],  # None for the model-only view (no loader)
        "batches_per_epoch": timed.get("batches_per_epoch"),
        "boundary_fetch_s": max(fetches) if fetches else None,  # the slowest epoch-opening fetch timed, host s
        "boundary_fetches_s": [round(f, 4) for f in fetches],  # each epoch-opening fetch timed, host s
        "cpu_pct_one_core": cpu["cpu_pct_one_core"], "cpu_pct_all_cores": cpu["cpu_pct_all_cores"],
        "torch_threads": timed["torch_threads"],  # intra-op threads during the timed region (ffcv may change them)
        "warmup_s": timed["warmup_s"], "position_s": timed["position_s"],
    }


def _model_fields(settings: BenchSettings) -> dict:
    return {"model": settings.model, "cifar_stem": settings.cifar_stem, "amp": settings.amp,
            "compile": settings.compile}


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
        timed = _timed(step, settings, device, window, pipe=pipe)
        fields = _loader_fields(variant, pipe)
    finally:
        pipe.close()
    return loader_row(settings, variant, image_size, timed, window, fields, last["x"], build_s)


def loader_row(settings: BenchSettings, variant: str, image_size: int, timed: dict, window: int, fields: dict,
               x: torch.Tensor, build_s: float) -> dict:
    """A loader-only row from its timing (`_timed`'s fields), after checking the last batch `x` is model-ready."""
    _check_ready(x, settings.batch_size, image_size, input_dtype(settings.amp))
    row = _row("loader", settings, variant, image_size, timed, window)
    return {**row, **fields, "out_dtype": str(x.dtype).replace("torch.", ""),
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
    """Train-step img/s with `variant` feeding the model, its data wait, ratio to the ceiling and verdict.

    `data_wait_share` = host time blocked in (next batch + augment) / wall time of the timed region. On a GPU
    the step is queued asynchronously, so the host fetches the next batch while the device computes: what the
    device actually waited is `device_wait_share`, the device idle between consecutive steps (CUDA events around
    augment + step, as in the trainer; None on a CPU). The verdict uses the device's wait where there is one.
    """
    device = torch.device(settings.device)
    cfg = make_config(settings, variant, image_size)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    pipe = Pipeline(cfg, info, device)
    train = TrainStep(cfg, info.num_classes, device)
    build_s = time.perf_counter() - start
    state = {"wait": 0.0}  # s, host blocked getting the next augmented batch
    recorder = DeviceWaitRecorder(device, settings.iters)

    def step() -> None:
        t0 = time.perf_counter()
        images, labels = pipe.fetch()
        recorder.start()  # the device's step begins with the augment, as in the trainer
        x, targets = pipe.augment.train_batch(images, labels)
        state["wait"] += time.perf_counter() - t0
        state["loss"] = train(x, targets)
        recorder.end()

    def measure_start() -> None:
        state["wait"] = 0.0
        recorder.reset()

    try:
        window = loader_window(cfg, len(pipe.loader))
        timed = _timed(step, settings, device, window, on_measure_start=measure_start, pipe=pipe, skip=pipe.next)
        idle = recorder.idle()  # after _timed's final synchronize; None on a CPU
        fields = _loader_fields(variant, pipe)
    finally:
        pipe.close()
    _check_finite(state["loss"], "end-to-end")
    row = _row("e2e", settings, variant, image_size, timed, window)
    share = min(state["wait"] / timed["cpu"]["wall_s"], 1.0)
    device_share = idle.share if idle is not None else None
    ratio = row["img_s"] / ceiling_img_s
    return {
        **row, **_model_fields(settings), **fields,
        "data_wait_share": share, "device_wait_share": device_share, "ceiling_img_s": ceiling_img_s, "ratio": ratio,
        "verdict": verdict(ratio, device_share if device_share is not None else share),
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
    data.pop("base")  # the result stores the resolved config on its own ("config")
    return data
