"""File-system helpers for building prepared formats: temp folders, atomic folder swaps, checksums."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fastcifar.atomic import TEMP_PREFIX

STALE_TEMP_S = 3600.0  # a temp folder untouched this long on an unlocked root belongs to no live run


def make_temp_dir(parent: Path, tag: str) -> Path:
    """A fresh temp folder `parent/.tmp-{tag}-XXXXXXXX` (same file system as the final place).

    Created with mkdir, so it gets the umask's permissions (mkdtemp's 0700 would survive the rename
    and hide a shared data root from other users)."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / f"{TEMP_PREFIX}{tag}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder `tmp` to `final`, replacing an old `final` without a moment of absence
    of a complete folder being mistaken for a new one (the old one is renamed aside, then deleted)."""
    old = None
    if final.exists():
        old = make_temp_dir(final.parent, "old")
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(parent: Path, min_age_s: float = 0.0) -> list[Path]:
    """Delete leftovers `parent/.tmp-*` of an interrupted run; returns what was removed.

    min_age_s: keep entries modified more recently than this, where no lock rules out a concurrent run
    (two `data download` commands on one root must not delete each other's extraction in progress).
    """
    removed = []
    if parent.is_dir():
        for entry in sorted(parent.glob(TEMP_PREFIX + "*")):
            if min_age_s and time.time() - entry.lstat().st_mtime < min_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def remove_path(path: Path) -> None:
    """Delete a file or folder if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    return _digest(path, hashlib.md5(), chunk)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (~0.5 s for the 180 MB of a prepared CIFAR format)."""
    return _digest(path, hashlib.sha256(), chunk)


def _digest(path: Path, digest, chunk: int) -> str:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


LOCK = ".lock"  # in the prepared folder while a prepare or verify runs; removed when it ends


@contextmanager
def locked(base: Path) -> Iterator[None]:
    """Exclusive lock on base/.lock, so two prepare (or verify) runs never touch each other's files.

    The file is deleted when the holder is done (nothing is left behind, even after a failure). A waiter
    that was blocked on the deleted file sees that the path no longer names the file it locked, and
    locks the new one instead, so two holders can never coexist.
    """
    path = base / LOCK
    while True:
        handle = open(path, "a")  # "a": never truncates a file another process holds
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # the previous holder deleted it while we waited: lock the current one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: a waiter then re-opens a fresh file
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def tree_size(path: Path) -> int:
    """Bytes of a file or of all files under a folder (0 if absent)."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
