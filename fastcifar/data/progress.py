"""Progress bars for the data commands: rich when enabled, a silent counter otherwise."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Task:
    """One bar. `advance(n)` moves it; disabled bars only count (so callers never branch)."""

    def __init__(self, progress: Progress | None, task_id: int | None):
        self._progress, self._task_id, self.completed = progress, task_id, 0

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if self._progress is not None:
            self._progress.advance(self._task_id, n)

    def update(self, *, total: int | None = None, completed: int | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if self._progress is not None:
            self._progress.update(self._task_id, total=total, completed=completed)


@contextmanager
def progress_task(description: str, total: int | None, enabled: bool, *, in_bytes: bool = False) -> Iterator[Task]:
    """A rich progress bar for `total` items (or bytes, with speed) while the block runs."""
    if not enabled:
        yield Task(None, None)
        return
    count = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    columns = (TextColumn("{task.description}"), BarColumn(), *count, TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        yield Task(progress, progress.add_task(description, total=total))


def say(message: str, enabled: bool) -> None:
    """One status line on the console (rich markup allowed) when progress reporting is on."""
    if enabled:
        from rich.console import Console

        Console(stderr=True).print(message)
