"""Disk space of prepared formats: each format's size ahead of writing, an upfront check, and the one
sentence a failed write ends with (naming the file, the reason and the space the format needs).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from fastcifar.errors import FastcifarError

ROW = 32 * 32 * 3  # bytes of one raw image
TAR_BLOCK = 512  # bytes; a tar entry is a header block plus its data padded to whole blocks
FFCV_PAGE = 8 << 20  # bytes; ffcv's DatasetWriter default page (4 * its 2 MiB MIN_PAGE_SIZE)
FFCV_SAMPLE_META = 64  # bytes of ffcv metadata and allocation table per sample (three small fields), rounded up
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # out of space, over quota, over the file-size limit
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class WriteError(Exception):
    """A write of a prepared file failed in a place that cannot raise the OSError itself (a writer process).

    Attributes:
        path: the file being written.
        errno: the OSError's errno, or None (a worker killed by a signal).
        reason: the OS's words ("No space left on device") or what happened ("killed by SIGKILL").
    """

    def __init__(self, path: Path | str | None, errno_: int | None, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.errno, self.reason = path, errno_, reason


def estimate_bytes(key: str, counts: dict[str, int], coarse: bool, ffcv_workers: int = 2) -> int:
    """The bytes a format takes on disk (exact for npy and dali:raw, an upper-bound-ish guess otherwise).

    Args:
        key: "npy", "ffcv", "dali:raw" | "dali:png" | "dali:jpeg".
        counts: images per split, e.g. {"train": 50000, "test": 10000}.
        coarse: CIFAR-100 (a coarse label is stored too).
        ffcv_workers: writer processes; each may leave one partly filled page.
    """
    n = sum(counts.values())
    labels = 2 if coarse else 1
    if key == "npy":
        return n * (ROW + 8 * labels) + 128 * (2 + labels) * len(counts)  # int64 labels, one .npy header per file
    if key == "ffcv":  # whole pages: the ones the pixels fill, plus one partly filled page per worker at most
        pages = sum(-(-c * ROW // FFCV_PAGE) + ffcv_workers for c in counts.values())
        return pages * FFCV_PAGE + n * FFCV_SAMPLE_META
    padded = -(-ROW // TAR_BLOCK) * TAR_BLOCK  # raw pixels; PNG/JPEG of 32 px images are of this order too
    per_sample = TAR_BLOCK + padded + labels * 2 * TAR_BLOCK  # image header + data, each label header + data
    index = 100 * n  # one text line per sample
    return n * per_sample + index + len(counts) * 2 * 10 * TAR_BLOCK  # end-of-archive blocks and record padding


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on the file system holding `folder`."""
    return shutil.disk_usage(folder).free


def human(nbytes: float) -> str:
    """Bytes as a short human-readable string ("0 B", "3.1 MiB")."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def check_space(key: str, final: Path, need: int) -> None:
    """Refuse before writing when the file system of `final` has less than `need` bytes free."""
    free = free_bytes(final.parent)
    if free < need:
        raise FastcifarError(
            f"Not enough space for the {key} format in '{final}': it needs about {human(need)} and {human(free)} "
            f"are free; free some space (or choose another --root) and run the same command again "
            f"(formats already prepared are kept).")


def write_failed(key: str, path: Path, error: OSError | WriteError, need: int, final: Path) -> FastcifarError:
    """The one sentence a failed write of `key` ends with.

    Args:
        key: the format being written.
        path: the file as it will be named once complete (not its temp name).
        error: what failed.
        need: bytes the format needs (see estimate_bytes).
        final: the format's folder, whose file system is asked for its free space.
    """
    code = error.errno
    reason = error.reason if isinstance(error, WriteError) else (error.strerror or str(error))
    if code in NO_SPACE:
        free = free_bytes(final.parent) if final.parent.exists() else 0
        fix = (f"the format needs about {human(need)} and {human(free)} are free; free some space (or choose "
               f"another --root) and run the same command again")
        if code == errno.EFBIG:
            fix = (f"a file outgrew this process's file-size limit (`ulimit -f`) or the file system's; the format "
                   f"needs about {human(need)} ({human(free)} free); raise the limit (or choose another --root) and "
                   f"run the same command again")
    elif code in NOT_WRITABLE:
        fix = f"make '{final.parent}' writable (or choose another --root) and run the same command again"
    else:
        fix = f"the format needs about {human(need)}; fix the cause and run the same command again"
    return FastcifarError(f"Writing '{path}' for the {key} format failed ({reason}); {fix} (its temporary files were "
                          f"removed and formats already prepared are kept).")


def name_failed_file(exc: OSError, path: Path) -> None:
    """Give a write error the file it happened in (a write on an open file reports none); the caller re-raises."""
    if exc.filename is None:
        exc.filename = str(path)


def final_name(path: str | os.PathLike | None, tmp: Path, final: Path) -> Path:
    """`path` (a file inside the temp folder `tmp`) as it would be named inside `final`; `final` if unknown."""
    if not path:
        return final
    path = Path(path)
    try:
        return final / path.relative_to(tmp)
    except ValueError:
        return path
