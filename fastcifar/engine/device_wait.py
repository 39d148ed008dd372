"""How long the device sat idle between consecutive train steps, from events on the device's own timeline.

The host-side "data wait" (time blocked in `next(loader)`) is not what a GPU waited: ffcv blocks the host while the
device is still busy (it syncs its own stream), and the `gpu` loader never blocks the host even when the device
starves. The device's view needs timestamps taken *on the device*: a start event recorded on the current stream
right before a step is queued and an end event right after. Step i+1's start event completes when the device
reaches it, so `end[i] -> start[i+1]` is the time between the two steps on the device: idle (nothing was queued)
plus any loader work queued on the same stream in between (the `gpu` loader's gather, a host-to-device copy): the
time the training steps did not get. Gaps are clamped at 0 (events of one stream complete in order; clamping only
guards rounding).

No host sync per step: `record()` is an asynchronous call; the events are read once per epoch by `idle()`, after
the caller's end-of-epoch synchronize. On a CPU (or any device without timing events) the recorder is disabled
and returns None, so the caller keeps its host-side measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch


class TimingEvent(Protocol):
    """What the recorder needs from an event: `torch.cuda.Event(enable_timing=True)` has exactly this."""

    def record(self) -> None: ...

    def elapsed_time(self, end: "TimingEvent") -> float: ...  # ms from self to end

    def synchronize(self) -> None: ...


@dataclass(frozen=True)
class DeviceIdle:
    """Device idle time of one recorded stretch of steps (all in seconds, on the device timeline)."""

    idle_s: float  # sum over consecutive steps of max(0, start[i+1] - end[i])
    span_s: float  # from the first step's start to the last step's end
    steps: int

    @property
    def share(self) -> float:
        """Idle time / span (0 = the device never waited between steps); 0 when the span is empty."""
        return self.idle_s / self.span_s if self.span_s > 0 else 0.0


def idle_from_events(starts: Sequence[TimingEvent], ends: Sequence[TimingEvent]) -> DeviceIdle:
    """The arithmetic: gaps between each step's end and the next step's start, read with `elapsed_time` (ms).

    Args:
        starts, ends: one completed event pair per step, in step order (ends[i] recorded after starts[i]).
    """
    if len(starts) != len(ends):
        raise ValueError(f"{len(starts)} start events but {len(ends)} end events")
    if not starts:
        return DeviceIdle(0.0, 0.0, 0)
    idle_ms = sum(max(0.0, end.elapsed_time(nxt)) for end, nxt in zip(ends[:-1], starts[1:]))
    span_ms = max(0.0, starts[0].elapsed_time(ends[-1]))
    return DeviceIdle(idle_ms / 1000.0, span_ms / 1000.0, len(starts))


def _cuda_event() -> TimingEvent:
    return torch.cuda.Event(enable_timing=True)


class DeviceWaitRecorder:
    """Records a start/end event pair around each step into preallocated lists; `idle()` reads them once.

    Usage (one epoch):
        recorder.reset()
        for each step: recorder.start(); step(); recorder.end()
        synchronize(device)  # the epoch's one sync
        recorder.idle()      # DeviceIdle, or None on a device without timing events

    Args:
        device: events are recorded only for CUDA devices; elsewhere every call is a no-op.
        capacity: steps per epoch, to preallocate (the lists grow if more steps come).
        make_event: event factory (tests pass fake events; default a CUDA timing event).
    """

    def __init__(self, device: torch.device | str, capacity: int = 0,
                 make_event: Callable[[], TimingEvent] | None = None) -> None:
        self.enabled = make_event is not None or torch.device(device).type == "cuda"
        self._make = make_event or _cuda_event
        self._starts: list[TimingEvent] = []
        self._ends: list[TimingEvent] = []
        self._n = 0  # steps recorded since the last reset
        self._open = False
        if self.enabled:
            self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        while len(self._starts) < capacity:
            self._starts.append(self._make())
            self._ends.append(self._make())

    def reset(self) -> None:
        """Forget the recorded steps (the events are reused)."""
        self._n, self._open = 0, False

    def start(self) -> None:
        """Mark the start of a step on the device's current stream (asynchronous)."""
        if not self.enabled:
            return
        self._grow(self._n + 1)
        self._starts[self._n].record()
        self._open = True

    def end(self) -> None:
        """Mark the end of the step started last (asynchronous)."""
        if not self.enabled:
            return
        if not self._open:
            raise RuntimeError("DeviceWaitRecorder.end() without a matching start()")
        self._ends[self._n].record()
        self._n, self._open = self._n + 1, False

    @property
    def steps(self) -> int:
        return self._n

    def idle(self) -> DeviceIdle | None:
        """Idle time between the recorded steps; None when disabled. Waits for the last end event (a no-op after
        the caller's synchronize), so it never reads an event that has not completed."""
        if not self.enabled:
            return None
        if self._n:
            self._ends[self._n - 1].synchronize()
        return idle_from_events(self._starts[: self._n], self._ends[: self._n])
