"""`fastcifar data prepare`: raw pickles -> npy / ffcv / dali formats under ROOT/prepared/DATASET.

Atomic and idempotent:
- each format is written into a `.tmp-*` folder next to its final place and renamed when complete;
- manifest.json is (re)written after each rename and is the only record of what is complete
  (see fastcifar.data.manifest); a killed run leaves at most `.tmp-*` folders or unlisted
  folders, which the next run deletes or overwrites;
- the manifest stores the md5 of every raw file: same sources and formats -> nothing is
  written ("up to date"); different sources -> the old prepared data is dropped and rebuilt.
"""

from __future__ import annotations

import datetime
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fastcifar import __version__
from fastcifar.data.cifar import (
    CifarSplit,
    fetch_hint,
    get_spec,
    raw_dir,
    raw_present,
    read_split,
    source_files,
)
from fastcifar.data.files import (
    make_temp_dir,
    md5_file,
    remove_path,
    remove_stale_temps,
    replace_dir,
)
from fastcifar.data.manifest import (
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    entry_files,
    format_keys,
    is_complete,
    load_manifest,
    prepared_dir,
    read_manifest,
    set_format_entry,
    write_manifest,
)
from fastcifar.data.progress import progress_task, say
from fastcifar.data.write_dali import SHARD_SIZE, write_dali
from fastcifar.data.write_ffcv import write_ffcv
from fastcifar.data.write_npy import write_npy
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

__all__ = ["prepare", "prepared_dir", "load_manifest"]


def prepare(dataset: str, root: str | os.PathLike | None, formats: Iterable[str] = ("npy", "ffcv", "dali"),
            dali_encoding: str | Iterable[str] = "raw", progress: bool = True, dali_shard_size: int = SHARD_SIZE) -> dict:
    """Build the requested formats of `dataset` from its raw pickles (only what is missing or stale).

    Args:
        dataset: "cifar10" or "cifar100".
        root: data root (None: $FASTCIFAR_ROOT or ~/.cache/fastcifar).
        formats: any of "npy", "ffcv", "dali" (or "dali:png" style keys).
        dali_encoding: encoding(s) of the dali shards: "raw", "png", "jpeg" (a str or several).
        progress: rich progress bars and status lines.
        dali_shard_size: samples per webdataset tar (10,000 by default; smaller in tests).

    Returns:
        The manifest as written, plus "built": the format keys this call built ([] = up to date) and
        "dir": the prepared folder.

    Raises:
        FastcifarError: raw data missing or invalid, unknown format, or ffcv missing for the ffcv format.
    """
    spec, root = get_spec(dataset), data_root(root)
    keys = format_keys(formats, dali_encoding)
    if not keys:
        raise FastcifarError("No format to prepare; pass at least one of npy, ffcv, dali (e.g. --formats npy).")
    if not raw_present(dataset, root):
        raise FastcifarError(f"No {spec.title} raw data in '{raw_dir(dataset, root)}'; {fetch_hint(dataset, root)}.")
    base = prepared_dir(dataset, root)
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base):
        sources = {path.name: md5_file(path) for path in source_files(dataset, root)}
        manifest = read_manifest(base)
        if manifest is None or manifest.get("sources") != sources or manifest.get("dataset") != dataset:
            _drop_prepared(base)  # stale or unknown: nothing in here can be trusted
            manifest = None
        for folder in (base, base / "dali"):
            remove_stale_temps(folder)
        todo = [k for k in keys if manifest is None or not is_complete(manifest, k, base)]
        if not todo:
            say(f"[green]{dataset}[/]: {', '.join(keys)} up to date in {base}", progress)
            return {**manifest, "built": [], "dir": str(base)}
        splits = {name: read_split(dataset, root, name) for name in ("train", "test")}
        if manifest is None:
            manifest = _new_manifest(dataset, sources, splits)
        for key in todo:
            _build(key, splits, base, manifest, progress, dali_shard_size)
            os.sync()  # the format's files reach the disk before the manifest vouches for them (power loss)
            manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_manifest(base, manifest)  # only now does `key` count as complete
        say(f"[green]{dataset}[/]: built {', '.join(todo)} in {base}", progress)
        return {**manifest, "built": todo, "dir": str(base)}


def _build(key: str, splits: dict[str, CifarSplit], base: Path, manifest: dict, progress: bool, shard_size: int) -> None:
    """Write one format into a temp folder, rename it into place, record it in `manifest` (in memory)."""
    folder = key.replace(":", "/")  # "npy", "ffcv", "dali/raw"
    final = base / folder
    tmp = make_temp_dir(final.parent, final.name)
    try:
        if key == "npy":
            entry = write_npy(splits, tmp, folder)
        elif key == "ffcv":
            entry = write_ffcv(splits, tmp, folder, progress=progress)
        else:
            total = sum(len(s) for s in splits.values())
            with progress_task(f"dali {key[5:]} shards", total, progress) as bar:
                entry = write_dali(splits, tmp, key[5:], folder, shard_size=shard_size, bar=bar)
        entry["bytes"] = sum((tmp / Path(rel).name).stat().st_size for rel in entry_files(entry))
        replace_dir(tmp, final)
    finally:
        remove_path(tmp)  # gone after a successful rename; a partial folder after a failure
    set_format_entry(manifest, key, entry)


def _new_manifest(dataset: str, sources: dict[str, str], splits: dict[str, CifarSplit]) -> dict:
    spec, train = get_spec(dataset), splits["train"]
    mean, std = channel_stats(train.images)
    return {
        "format_version": FORMAT_VERSION,
        "fastcifar_version": __version__,
        "dataset": dataset,
        "synthetic": bool(train.synthetic or splits["test"].synthetic),
        "sources": sources,
        "splits": {name: {"count": len(split)} for name, split in splits.items()},
        "num_classes": spec.num_classes,
        "num_coarse_classes": spec.num_coarse_classes,
        "class_names": train.class_names,
        "coarse_class_names": train.coarse_class_names,
        "mean": mean,
        "std": std,
        "formats": {},
    }


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std over all pixels, 0-255 scale, exact via 256-bin histograms.

    Args:
        images: uint8 [N, H, W, 3] NHWC.
    """
    mean, std = [], []
    values = np.arange(256, dtype=np.float64)
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)  # [256]
        n = counts.sum()
        m = float((counts * values).sum() / n)
        var = float((counts * (values - m) ** 2).sum() / n)
        mean.append(m)
        std.append(var**0.5)
    return mean, std


def _drop_prepared(base: Path) -> None:
    """Remove the manifest first (so nothing counts as complete), then every format folder."""
    (base / MANIFEST).unlink(missing_ok=True)
    for name in FORMATS:
        remove_path(base / name)


@contextmanager
def _locked(base: Path) -> Iterator[None]:
    """Exclusive lock on base/.lock so two prepare runs never clean up each other's temp folders."""
    with open(base / ".lock", "a") as handle:  # "a": creating it once, never touching its mtime again
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
