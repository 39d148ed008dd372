"""Device-side data wait: the arithmetic from recorded events (fake events with known device timestamps), the
recorder's bookkeeping, and that it stays out of the way on a CPU. A real CUDA check is gpu-marked."""

from __future__ import annotations

import pytest
import torch

from fastcifar.engine.device_wait import DeviceIdle, DeviceWaitRecorder, idle_from_events


class FakeClock:
    """A device timeline the test moves by hand; events recorded on it take its current time (ms)."""

    def __init__(self) -> None:
        self.now_ms = 0.0
        self.made = 0
        self.events: list[FakeEvent] = []

    def event(self) -> "FakeEvent":
        self.made += 1
        self.events.append(FakeEvent(self))
        return self.events[-1]

    def syncs(self) -> int:
        """Host waits on any event so far (the recorder may wait once per idle() read, never per step)."""
        return sum(e.synced for e in self.events)


class FakeEvent:
    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.t_ms, self.synced = clock, None, 0

    def record(self) -> None:
        self.t_ms = self.clock.now_ms

    def elapsed_time(self, end: "FakeEvent") -> float:
        assert self.t_ms is not None and end.t_ms is not None, "elapsed_time on an event that was never recorded"
        return end.t_ms - self.t_ms

    def synchronize(self) -> None:
        self.synced += 1


def _events(clock: FakeClock, times_ms: list[float]) -> list[FakeEvent]:
    out = []
    for t in times_ms:
        clock.now_ms = t
        event = clock.event()
        event.record()
        out.append(event)
    return out


def test_idle_is_the_sum_of_gaps_between_steps():
    clock = FakeClock()
    # steps [0, 10], [12, 20], [20, 31], [36, 40] ms: gaps 2 + 0 + 5 = 7 ms over a 40 ms span
    starts, ends = _events(clock, [0, 12, 20, 36]), _events(clock, [10, 20, 31, 40])
    idle = idle_from_events(starts, ends)
    assert idle == DeviceIdle(idle_s=0.007, span_s=0.040, steps=4)
    assert idle.share == pytest.approx(7 / 40)


def test_overlapping_steps_count_no_negative_gap_and_degenerate_cases():
    clock = FakeClock()
    starts, ends = _events(clock, [0, 9, 30]), _events(clock, [10, 20, 32])  # step 2 'starts' 1 ms before step 1 ends
    assert idle_from_events(starts, ends).idle_s == pytest.approx(0.010)  # max(0, -1) + 10 ms
    assert idle_from_events([], []) == DeviceIdle(0.0, 0.0, 0) and DeviceIdle(0.0, 0.0, 0).share == 0.0
    one = idle_from_events(starts[:1], ends[:1])
    assert one.idle_s == 0.0 and one.span_s == pytest.approx(0.010)
    with pytest.raises(ValueError):
        idle_from_events(starts, ends[:2])


def test_recorder_preallocates_reuses_events_and_reads_once():
    clock = FakeClock()
    recorder = DeviceWaitRecorder("cpu", capacity=3, make_event=clock.event)
    assert recorder.enabled and clock.made == 6  # start + end per step, made up front
    for epoch_gap in (1.0, 4.0):  # two 'epochs' through the same recorder
        recorder.reset()
        t = 100.0 * epoch_gap
        for _ in range(3):
            clock.now_ms = t
            recorder.start()
            clock.now_ms = t + 10.0  # a 10 ms step
            recorder.end()
            t += 10.0 + epoch_gap  # then the device idles `epoch_gap` ms
        assert clock.syncs() == (0 if epoch_gap == 1.0 else 1)  # start/end never wait for the device
        idle = recorder.idle()
        assert clock.syncs() == (1 if epoch_gap == 1.0 else 2)  # one wait per epoch's read
        assert recorder.steps == 3 and idle.steps == 3
        assert idle.idle_s == pytest.approx(2 * epoch_gap / 1000)
        assert idle.span_s == pytest.approx((30 + 2 * epoch_gap) / 1000)
    assert clock.made == 6  # no event was allocated after construction
    recorder.reset()
    for _ in range(5):  # more steps than the capacity: the lists grow
        recorder.start()
        recorder.end()
    assert recorder.idle().steps == 5 and clock.made == 10


def test_end_without_start_is_a_bug():
    recorder = DeviceWaitRecorder("cpu", make_event=FakeClock().event)
    with pytest.raises(RuntimeError):
        recorder.end()


def test_recorder_is_a_no_op_on_cpu():
    recorder = DeviceWaitRecorder(torch.device("cpu"), capacity=100)
    recorder.start()
    recorder.end()
    assert not recorder.enabled and recorder.idle() is None and recorder.steps == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_see_an_idle_device():
    """A host sleep between two queued steps is device idle time; back-to-back steps are not."""
    import time

    device = torch.device("cuda")
    x = torch.randn(2048, 2048, device=device)
    recorder = DeviceWaitRecorder(device, capacity=4)
    for pause in (0.0, 0.0, 0.05, 0.0):
        if pause:
            torch.cuda.synchronize()  # let the queue drain, so the pause is idle device time, not hidden behind work
            time.sleep(pause)
        recorder.start()
        for _ in range(4):
            x = (x @ x).tanh_()
        recorder.end()
    torch.cuda.synchronize()
    idle = recorder.idle()
    assert idle.steps == 4 and 0.045 <= idle.idle_s <= 0.5 and 0 < idle.share < 1
