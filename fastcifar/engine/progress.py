"""The live per-epoch progress bar: batches done, img/s and the share of time spent waiting for data."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class EpochProgress:
    """A transient rich bar for one training epoch (a no-op when disabled, e.g. on ranks > 0).

    Host-side timers only: updating it never synchronizes the device. Rich redraws at 10 Hz from its own
    thread, so a per-step `advance` costs microseconds.

    Args:
        epoch: 0-based epoch; shown 1-based.
        epochs: total epochs.
        batches: batches in this epoch.
        enabled: draw the bar.
        world_size: img/s is this rank's rate times the number of ranks.
        console: where to draw (default: a new stdout console).
    """

    def __init__(self, epoch: int, epochs: int, batches: int, enabled: bool = True, world_size: int = 1,
                 console: Console | None = None):
        self.enabled, self.world_size = enabled, world_size
        self.images = 0
        self.progress = None
        if enabled and (console or Console()).is_terminal:  # a log file gets the epoch lines, not bar redraws
            self.progress = Progress(
                TextColumn(f"epoch {epoch + 1}/{epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>10} img/s  data wait {task.fields[wait]:>4}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.task = self.progress.add_task("train", total=batches, rate="-", wait="-")

    def __enter__(self) -> "EpochProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def advance(self, images: int, wait_s: float, elapsed_s: float) -> None:
        """One more batch of `images` (this rank).

        `wait_s` = time blocked on the loader so far, `elapsed_s` = epoch time so far.
        """
        if self.progress is None:
            return
        self.images += images
        rate = f"{self.images * self.world_size / elapsed_s:,.0f}" if elapsed_s > 0 else "-"
        wait = f"{wait_s / elapsed_s:.0%}" if elapsed_s > 0 else "-"
        self.progress.update(self.task, advance=1, rate=rate, wait=wait)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
