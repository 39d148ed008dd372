"""Atomic file writes: write a temp file in the same folder, then `os.replace` it into place.

A reader (or a run resumed after `kill -9`) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".tmp-"  # every temp file or folder fastcifar creates starts with this; stale ones are safe to delete


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path` (same suffix, so format sniffing works); rename it into place on success.

    The temp file is removed if the body raises, so a failed write leaves the old file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name per write (concurrent writers never share one); created by the caller, so permissions
    # follow the umask (mkstemp would make result files 0600)
    tmp = path.parent / f"{TEMP_PREFIX}{path.stem}.{secrets.token_hex(4)}{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically, fsynced so a crash right after keeps the content."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, fsynced so a crash right after keeps the content."""
    write_bytes(path, text.encode("utf-8"))


def torch_save(obj: object, path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically."""
    import torch  # here, not at the top: the config reads fastcifar.data's constants and must not load torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to `dst` atomically: a real copy (not a link), so deleting one keeps the other."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
