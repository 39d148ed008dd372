"""File-system helpers for building prepared formats: temp folders, atomic folder swaps, checksums."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

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
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_size(path: Path) -> int:
    """Bytes of a file or of all files under a folder (0 if absent)."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
