"""Provenance saved with every benchmark number: versions, device, CPU, git hash, host, date, machine load.

A number without its machine and software is not a result. `collect()` gathers what identifies the run;
`LoadWatch` records how busy the machine was with *other* work while the benchmark ran, so a reader can
discount numbers taken on a shared box.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import time
from pathlib import Path

import torch

from fastcifar import cpu_memory
from fastcifar.bench.thresholds import BUSY_OTHERS_SHARE
from fastcifar.bench.timing import process_cpu_seconds
from fastcifar.loaders.base import usable_cores
from fastcifar.provenance import cpu_model, device_name, git_revision, versions


def collect(device: torch.device, settings: dict) -> dict:
    """Everything that identifies a benchmark run. `settings` are the resolved CLI settings, stored verbatim."""
    return {
        "versions": versions(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "cpu_allocator": cpu_memory.in_effect,  # huge pages / heap reuse set by the CLI (fastcifar.cpu_memory)
        "git": git_revision(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
    }


# ---------------------------------------------------------------------------- machine load


def _system_busy_seconds() -> float | None:
    """CPU s all cores spent not idle since boot (from /proc/stat), None where unavailable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already inside user/nice
    busy = sum(ticks[:8]) - ticks[3] - ticks[4] - ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


class LoadWatch:
    """Load of the machine around a run: load averages at start and end, and the share of all cores that
    *other* processes used meanwhile (system busy CPU time minus this process tree's CPU time)."""

    def __init__(self) -> None:
        self._start = None

    def start(self) -> None:
        self._started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._start = (time.perf_counter(), _system_busy_seconds(), process_cpu_seconds(), os.getloadavg())

    def stop(self) -> dict:
        wall0, sys0, own0, load0 = self._start
        wall = time.perf_counter() - wall0
        sys1, own1, load1 = _system_busy_seconds(), process_cpu_seconds(), os.getloadavg()
        others = None
        if sys0 is not None and sys1 is not None:
            others = max((sys1 - sys0) - (own1 - own0), 0.0) / (max(wall, 1e-9) * (os.cpu_count() or 1))
            others = min(others, 1.0)  # /proc/stat counts in 10 ms ticks: a short window can round above 100 %
        return {
            "started": self._started,
            "load_avg_start": [round(v, 2) for v in load0],
            "load_avg_end": [round(v, 2) for v in load1],
            "others_cpu_share": None if others is None else round(others, 3),
            "busy": bool(others is not None and others > BUSY_OTHERS_SHARE),
            "wall_s": round(wall, 1),
        }
