"""Paired loader-only cells (`fastcifar bench --paired`): the loaders of one image size timed in alternating
segments of one run, so a slow spell of a shared machine slows all of them alike and their ratios compare like
with like.

Timed one after the other, two loaders' cells see different machine states: on a 2-core VM whose speed swings 2x
for seconds at a time, a gpu/torch ratio moved 7x-15x between repeats of the same code. Here every loader is
built and warmed up first (`suites.warm_up`), then the run goes in rounds, one segment per loader and round,
each loader leading in turn (A B, B A, A B, ...: a linear drift cancels). Before each segment the bench waits
until the previous one's background work has stopped (`timing.quiesce`: DataLoader workers refilling their
queue would otherwise run inside the next loader's timed windows), and an untimed settle window first takes
back what the loader prefetched while idle (never past its epoch's end: the boundary is timed). A row is then
an ordinary loader-only row over all its segments, with `paired` and the img/s of each segment beside it.

Rounds continue until every loader timed `iters` windows, its epoch boundaries (as `suites._timed` asks) and
`min_seconds` in all; each segment lasts min_seconds / MIN_ROUNDS (at least one window). A loader that slows the
others merely by being built (`LoaderSpec.shares_process`: ffcv) is left out of the pairing and timed on its own.
"""

from __future__ import annotations

import time

import torch

from fastcifar.bench.suites import (
    BenchSettings,
    Pipeline,
    _loader_fields,
    _windows,
    epochs_short,
    loader_row,
    loader_window,
    make_config,
    warm_up,
)
from fastcifar.bench.timing import CpuMeter, IterationClock, cpu_use, quiesce
from fastcifar.engine.precision import synchronize
from fastcifar.errors import FastcifarError

MIN_ROUNDS = 4  # rounds at least: each of two loaders leads twice


class Leg:
    """One loader of a paired cell: its pipeline and everything its timed segments measured so far."""

    def __init__(self, variant: str, pipe: Pipeline, window: int, build_s: float) -> None:
        self.variant, self.pipe, self.window, self.build_s = variant, pipe, window, build_s
        self.last: dict = {}
        self.seconds: list[float] = []  # per timed window, over all segments
        self.batches: list[int] = []
        self.segment_img_s: list[float] = []
        self.segment_start_s: list[float] = []  # perf_counter at each segment's first timed window
        self.boundaries, self.boundary_fetch_s = 0, []
        self.cpu_s = self.wall_s = self.quiesce_s = 0.0
        self.torch_threads = torch.get_num_threads()
        self.warm: dict = {}

    def step(self) -> None:
        self.last["x"], _ = self.pipe.next()

    def segment(self, device: torch.device, seconds: float, batch_size: int) -> None:
        """Wait for the process tree to idle, settle (one untimed window), then time windows for `seconds`."""
        self.quiesce_s += quiesce()
        # batches prefetched while idle come back in microseconds: untimed. The settle stops at the epoch's end,
        # so the boundary's stall lands in the timed windows (a fixed settle could alias with the epoch length
        # and always swallow it); a new epoch's first batch is never prefetched ahead
        settle = min(self.window, len(self.pipe) - self.pipe.position)
        if settle > 0:
            _windows(self.step, 1, settle)
        synchronize(device)
        epoch0, fetches0 = self.pipe.epoch, len(self.pipe.boundary_fetch_s)
        clock, meter = IterationClock(device), CpuMeter()
        self.segment_start_s.append(time.perf_counter())
        meter.start()
        batches = _windows(self.step, 1, self.window, clock, min_seconds=seconds)
        timed = clock.seconds()  # synchronizes
        cpu = meter.stop()
        self.seconds += timed
        self.batches += batches
        self.segment_img_s.append(batch_size * sum(batches) / sum(timed))
        self.boundaries += self.pipe.epoch - epoch0
        self.boundary_fetch_s += self.pipe.boundary_fetch_s[fetches0:]
        self.cpu_s += cpu["cpu_s"]
        self.wall_s += cpu["wall_s"]
        self.torch_threads = torch.get_num_threads()  # during its own segments (ffcv-like backends change it)

    def done(self, settings: BenchSettings) -> bool:
        """Timed what an unpaired cell times (`suites._timed`): `iters` windows, and its epoch boundaries."""
        return len(self.seconds) >= settings.iters and not epochs_short(
            self.boundaries, sum(self.batches), len(self.pipe), settings.timed_epochs)

    def timed(self) -> dict:
        """The fields `suites._row` reads, as `suites._timed` returns them for an unpaired cell."""
        return {**self.warm, "seconds": self.seconds, "batches": self.batches, "cpu": cpu_use(self.cpu_s, self.wall_s),
                "torch_threads": self.torch_threads, "epoch_boundaries": self.boundaries,
                "boundary_fetch_s": self.boundary_fetch_s, "batches_per_epoch": len(self.pipe)}


def loader_paired(settings: BenchSettings, variants: tuple[str, ...], image_size: int, info
                  ) -> tuple[list[dict], list[dict]]:
    """Loader-only rows of `variants` at `image_size`, timed in alternating segments (see the module docstring).

    Returns (rows in `variants` order, skipped: a variant whose loader cannot be built here, with the reason).
    """
    device = torch.device(settings.device)
    threads = torch.get_num_threads()
    legs, skipped = [], []
    try:
        for variant in variants:
            cfg = make_config(settings, variant, image_size)
            torch.manual_seed(settings.seed)
            start = time.perf_counter()
            try:
                pipe = Pipeline(cfg, info, device)
            except (FastcifarError, ImportError) as error:
                skipped.append({"view": "loader", "loader": variant, "image_size": image_size, "reason": str(error)})
                continue
            leg = Leg(variant, pipe, loader_window(cfg, len(pipe.loader)), time.perf_counter() - start)
            legs.append(leg)
            leg.warm = warm_up(leg.step, settings, device, leg.window, pipe)
            torch.set_num_threads(threads)  # a backend that changed it (ffcv) must not carry over to the next
        segment_s = settings.min_seconds / MIN_ROUNDS
        rounds = 0
        while legs and (rounds < MIN_ROUNDS or not all(leg.done(settings) for leg in legs)):
            lead = rounds % len(legs)
            for leg in legs[lead:] + legs[:lead]:
                torch.set_num_threads(threads)
                leg.segment(device, segment_s, settings.batch_size)
            rounds += 1
        rows = []
        for leg in legs:
            fields = _loader_fields(leg.variant, leg.pipe)
            row = loader_row(settings, leg.variant, image_size, leg.timed(), leg.window, fields, leg.last["x"],
                             leg.build_s)
            rows.append({**row, "paired": True, "rounds": rounds, "quiesce_s": leg.quiesce_s,
                         "segment_img_s": [round(r, 1) for r in leg.segment_img_s],
                         "segment_start_s": [round(t - legs[0].segment_start_s[0], 4) for t in leg.segment_start_s]})
    finally:
        for leg in legs:
            leg.pipe.close()
    return rows, skipped
