"""The ffcv format: one .beton per split with fields image (RGBImageField, raw uint8), label, coarse_label.

ffcv's DatasetWriter forks writer processes and polls a shared counter until every sample is written; a
worker that fails (disk full: `OSError: [Errno 28]`) or is killed never moves the counter, and the writer
waits forever. So each .beton is written in a child process of our own (in its own process group) that
reports every worker failure back over a pipe; the parent ends the whole group within a second of one and
raises a WriteError naming the file. Nothing of ffcv is changed but two names its writer looks up at call
time (its worker function and its Process class), inside the child only.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from fastcifar.data.cifar import CifarSplit
from fastcifar.data.space import WriteError
from fastcifar.errors import FastcifarError

VERSION = 1
NO_COARSE_LABEL = -1  # coarse_label value for CIFAR-10, which has none
POLL_S = 0.1  # how often the parent and the child's watchdog look for news
STOP_GRACE_S = 5.0  # after SIGTERM, the child's time to end its workers and free ffcv's shared memory


class _Samples:
    """Indexable view ffcv's writer reads: sample i -> (image uint8 [32, 32, 3] HWC, label, coarse label)."""

    def __init__(self, split: CifarSplit):
        self.images, self.labels = split.images, split.labels
        coarse = split.coarse_labels
        self.coarse = coarse if coarse is not None else np.full_like(split.labels, NO_COARSE_LABEL)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.labels[i]), int(self.coarse[i])


def write_ffcv(splits: dict[str, CifarSplit], out: Path, folder: str = "ffcv", progress: bool = False,
               num_workers: int | None = None) -> dict:
    """Write `{split}.beton` into `out` (a temp folder renamed to `folder` later) with ffcv's DatasetWriter.

    Args:
        splits: {"train": CifarSplit, "test": CifarSplit}.
        out: folder to write into.
        folder: name the folder will have under the prepared folder (for the manifest's relative paths).
        progress: let ffcv show its tqdm bar.
        num_workers: writer processes (default: min(2, CPUs); the data is tiny, more only adds start-up).

    Returns:
        The manifest entry.

    Raises:
        FastcifarError: ffcv is not installed.
    """
    try:
        import ffcv
        from ffcv.fields import IntField, RGBImageField
        from ffcv.types import CURRENT_VERSION
        from ffcv.writer import DatasetWriter
    except ImportError as exc:
        raise FastcifarError(f"The ffcv format needs the ffcv package ({exc}); install it with "
                             f"`pip install -e .[ffcv]` or prepare without it (--formats npy,dali).") from None
    workers = num_workers or max(1, min(2, os.cpu_count() or 1))
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "coarse_label": IntField()}
    entry: dict = {"version": VERSION, "ffcv_version": _ffcv_version(ffcv), "beton_version": int(CURRENT_VERSION),
                   "fields": {"image": "RGBImageField(write_mode='raw')", "label": "IntField",
                              "coarse_label": f"IntField ({NO_COARSE_LABEL} for CIFAR-10)"}}
    for name, split in splits.items():
        path = out / f"{name}.beton"
        write = partial(_write_beton, DatasetWriter, path, fields, workers, _Samples(split), progress, f"ffcv {name}")
        run_guarded(write, path)
        entry[name] = {"count": len(split), "files": {"beton": f"{folder}/{path.name}"}}
    return entry


def _write_beton(writer_class, path: Path, fields: dict, workers: int, samples: _Samples, progress: bool,
                 description: str, report) -> None:
    """In the child: one DatasetWriter run; `report(kind, value)` sends news to the parent."""
    writer = writer_class(str(path), fields, num_workers=workers)
    prepare = writer.prepare

    def prepare_and_report() -> None:  # ffcv creates its shared memory here; the parent frees it if we die
        prepare()
        report("shm", writer.metadata_sm.name)

    writer.prepare = prepare_and_report
    try:
        with _tqdm_enabled(progress, description):
            writer.from_indexed_dataset(samples, chunksize=500)
    finally:
        memory = getattr(writer, "metadata_sm", None)
        if memory is not None and not isinstance(memory, int):  # ffcv sets it to 3 before creating it
            _free_shared_memory(memory.name)


def run_guarded(write, path: Path) -> None:
    """Run `write(report)` (an ffcv DatasetWriter run) in a child process group, failing fast and cleanly.

    Args:
        write: called in the child as write(report); report(kind, value) sends ("shm", name) news.
        path: the file being written, for the error.

    Raises:
        WriteError: the child or one of ffcv's worker processes failed (an OSError, any exception, or a
            signal); by then the whole process group is gone and ffcv's shared memory freed.
    """
    context = multiprocessing.get_context("fork")  # ffcv's own workers are forked; the samples are not picklable
    reader, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(write, sender, path), name="fastcifar-ffcv-writer", daemon=False)
    child.start()
    sender.close()
    shared, failure, done = None, None, False
    try:
        while failure is None and not done:
            if reader.poll(POLL_S):
                try:
                    kind, value = reader.recv()
                except EOFError:  # every writing end closed: the child is gone without a word
                    child.join(STOP_GRACE_S)
                    kind, value = "error", (None, f"the ffcv writer process ended with {_status(child.exitcode)}")
                done = kind == "done"
                if kind == "shm":
                    shared = value
                elif kind == "error":
                    failure = WriteError(path, *value)
            elif not child.is_alive():
                failure = WriteError(path, None, f"the ffcv writer process ended with {_status(child.exitcode)}")
        if done:
            child.join(STOP_GRACE_S)  # it only has to exit
    finally:
        if not done or child.is_alive():  # a failure, or KeyboardInterrupt in the parent
            _stop(child)
            if shared:
                _free_shared_memory(shared)
        child.join()
        reader.close()
    if failure is not None:
        raise failure


def _child_main(write, sender, path: Path) -> None:
    """The child: own process group (so the parent can end it with all of ffcv's workers), guarded workers."""
    os.setpgid(0, 0)
    import ffcv.writer as ffcv_writer

    workers: list = []
    lock = threading.Lock()  # one message at a time on the pipe (watchdog thread vs main thread)

    def report(kind: str, value) -> None:
        with lock:
            sender.send((kind, value))

    original_job = ffcv_writer.worker_job_indexed_dataset

    def guarded_job(*args) -> None:  # runs in each forked ffcv worker
        try:
            original_job(*args)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent, then the worker ends
            sender.send(("error", _describe(exc)))
            os._exit(1)

    class TrackedProcess(ffcv_writer.Process):
        def start(self) -> None:
            super().start()
            workers.append(self)

    ffcv_writer.worker_job_indexed_dataset = guarded_job
    ffcv_writer.Process = TrackedProcess
    threading.Thread(target=_watch, args=(workers, report), daemon=True).start()
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        write(report)
    except BaseException as exc:  # noqa: BLE001 - reported, never printed as a traceback
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        try:
            report("error", _describe(exc))
        except OSError:  # the parent is gone
            pass
        os._exit(1)
    report("done", None)


class _Stop(Exception):
    """SIGTERM from the parent, raised inside ffcv's polling loop so the child can clean up."""


def _raise_stop(signum, frame) -> None:
    raise _Stop("stopped by the parent after a failure")


def _watch(workers: list, report) -> None:
    """Watchdog thread in the child: a worker that died without a word (a signal, os._exit) is a failure."""
    while True:
        for worker in list(workers):
            code = worker.exitcode
            if code not in (None, 0):
                report("error", (None, f"an ffcv writer worker (pid {worker.pid}) ended with {_status(code)}"))
                return
        time.sleep(POLL_S)


def _describe(exc: BaseException) -> tuple[int | None, str]:
    """(errno, reason) of an exception, for WriteError."""
    if isinstance(exc, OSError):
        return exc.errno, exc.strerror or str(exc)
    return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _status(code: int | None) -> str:
    """A process exit code in words: 'exit code 1' or 'signal SIGKILL'."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _stop(child) -> None:
    """End the child and its workers: SIGTERM (it cleans up), then SIGKILL to the whole group."""
    if child.is_alive():
        child.terminate()
        child.join(STOP_GRACE_S)
    try:
        os.killpg(child.pid, signal.SIGKILL)  # the group is the child's own (setpgid): only our processes
    except (ProcessLookupError, PermissionError):
        pass


def _free_shared_memory(name: str) -> None:
    """Unlink ffcv's metadata shared memory (POSIX shm, /dev/shm on Linux) if it still exists."""
    from multiprocessing import shared_memory

    try:
        memory = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    memory.close()
    memory.unlink()


def _ffcv_version(ffcv_module) -> str:
    try:
        from importlib.metadata import version

        return version("ffcv")
    except Exception:  # the module's own __version__ lags behind the release  # noqa: BLE001
        return str(getattr(ffcv_module, "__version__", "unknown"))


@contextmanager
def _tqdm_enabled(enabled: bool, description: str) -> Iterator[None]:
    """ffcv's writer always draws a tqdm bar; silence it (or label it) for the duration of one write."""
    import ffcv.writer as writer

    original = writer.tqdm
    writer.tqdm = partial(original, disable=not enabled, desc=description)
    try:
        yield
    finally:
        writer.tqdm = original
