"""Timing primitives for the benchmark: per-iteration clocks, summary statistics and CPU utilisation.

One clock per device kind, so the suites never branch on the device:
    * CUDA: a `torch.cuda.Event(enable_timing=True)` is recorded at every iteration boundary and read only
      after one `torch.cuda.synchronize()` at the end, so timing adds no sync inside the measured loop. The
      events sit on the GPU timeline; a GPU idling while the host waits for data still shows up as elapsed time.
    * CPU: `time.perf_counter()` at every boundary (CPU work is synchronous).

CPU utilisation is the CPU time the process, its live DataLoader workers and its reaped children used over the
measured region, divided by the region's wall time: 100 % = one core busy, and `cpu_pct_all` = that / cores.
`quiesce` waits until that CPU time stops growing: a paired cell's loaders start each segment on an idle tree.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from fastcifar.engine.precision import synchronize
from fastcifar.loaders.base import usable_cores

# ---------------------------------------------------------------------------- clocks


class IterationClock:
    """Marks iteration boundaries; `seconds()` returns one duration per iteration.

    Call `mark()` once before the first measured iteration and once after each one: n+1 marks give n durations.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._marks: list = []

    def mark(self) -> None:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def synchronize(self) -> None:
        """Wait for all queued device work (no-op on CPU), so durations and wall times are final."""
        synchronize(self.device)

    def seconds(self) -> list[float]:
        """Durations between consecutive marks, s. Synchronizes first on CUDA."""
        if len(self._marks) < 2:
            return []
        if self._cuda:
            self.synchronize()
            # Event.elapsed_time is in ms
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self._marks, self._marks[1:])]
        return [b - a for a, b in zip(self._marks, self._marks[1:])]


# ---------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Median, min, max and mean of a sample; `n` values."""

    median: float
    min: float
    max: float
    mean: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Summary of finite values. Raises ValueError on an empty sample or a non-finite value (a timing bug)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("cannot summarize an empty sample")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite timing value in {values}")
    return Summary(
        median=statistics.median(values), min=min(values), max=max(values), mean=statistics.fmean(values), n=len(values)
    )


def throughput(seconds: Sequence[float], items: int | Sequence[int]) -> Summary:
    """Items/s per iteration (e.g. img/s), summarized. `items` per iteration: one count for all, or one each.
    Zero-length durations are clamped to 1 ns."""
    counts = [items] * len(seconds) if isinstance(items, int) else list(items)
    if len(counts) != len(seconds):
        raise ValueError(f"{len(seconds)} durations but {len(counts)} item counts")
    return summarize([n / max(s, 1e-9) for n, s in zip(counts, seconds)])


# ---------------------------------------------------------------------------- CPU utilisation


def process_cpu_seconds() -> float:
    """CPU s (user + system) used so far by this process (all threads), its live descendants and reaped children.

    Own time comes from `time.process_time()` (CLOCK_PROCESS_CPUTIME_ID, ns resolution, every thread: ffcv and
    DALI threads included), so a millisecond region still registers. Live DataLoader workers are separate
    processes that `getrusage(RUSAGE_CHILDREN)` only counts once reaped, so they are summed through psutil (when
    installed; 10 ms resolution, fine for workers that live through the region).
    """
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + reaped.ru_utime + reaped.ru_stime
    try:
        import psutil
    except ImportError:
        return total
    for child in psutil.Process().children(recursive=True):
        try:
            child_times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # exited between listing and reading; its time lands in RUSAGE_CHILDREN once reaped
        total += child_times.user + child_times.system
    return total


class CpuMeter:
    """Measures wall time and the process tree's CPU time over a region.

    Use `start()` / `stop()` around the measured region (after synchronizing the device, so queued GPU work
    from before the region is not billed to it). `stop()` returns a dict with `wall_s`, `cpu_s`,
    `cpu_pct_one_core` (100 = one core busy) and `cpu_pct_all_cores` (100 = every usable core busy).
    """

    def __init__(self) -> None:
        self._wall0 = self._cpu0 = None

    def start(self) -> None:
        # the CPU readings sit inside the wall interval, so reading them (psutil walks /proc) cannot push
        # the CPU time of a millisecond region above cores x wall time
        self._wall0 = time.perf_counter()
        self._cpu0 = process_cpu_seconds()

    def stop(self) -> dict:
        return cpu_use(max(process_cpu_seconds() - self._cpu0, 0.0), time.perf_counter() - self._wall0)


def cpu_use(cpu_s: float, wall_s: float) -> dict:
    """`CpuMeter.stop`'s fields for `cpu_s` CPU seconds over `wall_s` (one region, or the sum of several)."""
    one_core = 100.0 * cpu_s / max(wall_s, 1e-9)
    return {"wall_s": wall_s, "cpu_s": cpu_s, "cpu_pct_one_core": one_core,
            "cpu_pct_all_cores": one_core / usable_cores()}


QUIESCE_POLL_S = 0.02
QUIESCE_IDLE_SHARE = 0.2  # of one core: a poll's own /proc walk stays below it, one busy worker is far above
QUIESCE_TIMEOUT_S = 5.0


def quiesce(timeout: float = QUIESCE_TIMEOUT_S) -> float:
    """Wait until the process tree works no more in the background: the CPU time of this process and its
    children grows by under QUIESCE_IDLE_SHARE of the wall time over one poll (the calling thread sleeps, so
    what grows is other threads and processes: a loader's workers finishing the batches it prefetched).

    Returns the seconds waited; gives up after `timeout` (a loader that never idles is measured as it is).
    """
    start = wall = time.perf_counter()
    cpu = process_cpu_seconds()
    while wall - start < timeout:
        time.sleep(QUIESCE_POLL_S)
        now, cpu_now = time.perf_counter(), process_cpu_seconds()
        if cpu_now - cpu < QUIESCE_IDLE_SHARE * (now - wall):
            return now - start
        wall, cpu = now, cpu_now
    return time.perf_counter() - start
