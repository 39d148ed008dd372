"""`fastcifar data prepare`: raw pickles -> npy / ffcv / dali formats under ROOT/prepared/DATASET.

Atomic and idempotent:
- each format is written into a `.tmp-*` folder next to its final place and renamed when complete;
- manifest.json is (re)written after each rename and is the only record of what is complete
  (see fastcifar.data.manifest); a killed run leaves at most `.tmp-*` folders or unlisted
  folders, which the next run deletes or overwrites;
- the manifest stores the md5 of every raw file: same sources and formats -> nothing is
  written ("up to date"); different sources -> the old prepared data is dropped and rebuilt;
- it stores the size and sha256 of every prepared file too (`fastcifar data verify` recomputes them);
- a write that fails (disk full, read-only, a writer process that dies) ends at once with one sentence
  naming the file and the space the format needs; its temp folder is removed, finished formats stay.

The data's source (fastcifar.data.source) is decided here once: synthetic (marked), custom (`custom=True`,
any counts and classes), or official (the official counts, and every raw file byte-identical to the
official archive's); anything else is refused with a message naming the `--custom` flag.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from fastcifar import __version__
from fastcifar.data.cifar import (
    CifarSplit,
    check_official,
    fetch_hint,
    get_spec,
    raw_dir,
    raw_present,
    read_split,
    source_files,
)
from fastcifar.data.files import (
    locked,
    make_temp_dir,
    md5_file,
    remove_path,
    remove_stale_temps,
    replace_dir,
    sha256_file,
)
from fastcifar.data.manifest import (
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    entry_files,
    format_keys,
    is_complete,
    load_manifest,
    prepare_command,
    prepared_dir,
    read_manifest,
    set_format_entry,
    write_manifest,
)
from fastcifar.data.progress import progress_task, say
from fastcifar.data.source import CUSTOM, CUSTOM_FLAG, OFFICIAL, SYNTHETIC, source_of
from fastcifar.data.space import WriteError, check_space, estimate_bytes, final_name, write_failed
from fastcifar.data.write_dali import SHARD_SIZE, write_dali
from fastcifar.data.write_ffcv import write_ffcv
from fastcifar.data.write_npy import write_npy
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

__all__ = ["prepare", "prepared_dir", "load_manifest"]


def prepare(dataset: str, root: str | os.PathLike | None, formats: Iterable[str] = ("npy", "ffcv", "dali"),
            dali_encoding: str | Iterable[str] = "raw", progress: bool = True, dali_shard_size: int = SHARD_SIZE,
            custom: bool = False) -> dict:
    """Build the requested formats of `dataset` from its raw pickles (only what is missing or stale).

    Args:
        dataset: "cifar10" or "cifar100".
        root: data root (None: $FASTCIFAR_ROOT or ~/.cache/fastcifar).
        formats: any of "npy", "ffcv", "dali" (or "dali:png" style keys).
        dali_encoding: encoding(s) of the dali shards: "raw", "png", "jpeg" (a str or several).
        progress: rich progress bars and status lines.
        dali_shard_size: samples per webdataset tar (10,000 by default; smaller in tests).
        custom: the raw folder is the user's own data in the CIFAR layout (any number of images, the
            classes of its meta file); it is labelled "custom" wherever a run reports its data.

    Returns:
        The manifest as written, plus "built": the format keys this call built ([] = up to date) and
        "dir": the prepared folder.

    Raises:
        FastcifarError: raw data missing or invalid (or not official without `custom`), unknown format,
            ffcv missing for the ffcv format, or a write that failed (named, with the space needed).
    """
    spec, root = get_spec(dataset), data_root(root)
    keys = format_keys(formats, dali_encoding)
    if not keys:
        raise FastcifarError("No format to prepare; pass at least one of npy, ffcv, dali (e.g. --formats npy).")
    if not raw_present(dataset, root):
        raise FastcifarError(f"No {spec.title} raw data in '{raw_dir(dataset, root)}'; {fetch_hint(dataset, root)}.")
    base = prepared_dir(dataset, root)
    base.mkdir(parents=True, exist_ok=True)
    with locked(base):
        sources = {path.name: md5_file(path) for path in source_files(dataset, root)}
        manifest = read_manifest(base)
        if manifest is not None and manifest.get("sources") == sources and manifest.get("dataset") == dataset:
            if source_of(manifest) == CUSTOM and not custom:
                raise FastcifarError(f"{dataset} in '{base}' was prepared as custom data; pass {CUSTOM_FLAG} to "
                                     f"prepare more of it (`{prepare_command(dataset, root, keys, manifest)}`).")
            if custom and source_of(manifest) == OFFICIAL:
                manifest = None  # the same files, now to be labelled custom: rebuilt under that label
        else:
            manifest = None
        if manifest is None:
            _drop_prepared(base)  # stale or unknown: nothing in here can be trusted
        for folder in (base, base / "dali"):
            remove_stale_temps(folder)
        todo = [k for k in keys if manifest is None or not is_complete(manifest, k, base)]
        if not todo:
            say(f"[green]{dataset}[/]: {', '.join(keys)} up to date in {base}", progress)
            return {**manifest, "built": [], "dir": str(base)}
        splits = {name: read_split(dataset, root, name, custom=custom) for name in ("train", "test")}
        if manifest is None:
            manifest = _new_manifest(dataset, sources, splits, _source(dataset, root, splits, sources))
        for key in todo:
            _build(key, splits, base, manifest, progress, dali_shard_size)
            os.sync()  # the format's files reach the disk before the manifest vouches for them (power loss)
            manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            _write_manifest(base, manifest)  # only now does `key` count as complete
        say(f"[green]{dataset}[/]: built {', '.join(todo)} in {base}", progress)
        return {**manifest, "built": todo, "dir": str(base)}


def _source(dataset: str, root: Path, splits: dict[str, CifarSplit], sources: dict[str, str]) -> str:
    """synthetic, custom (as read), or official after checking every raw file against the official md5."""
    if any(split.synthetic for split in splits.values()):
        return SYNTHETIC
    if splits["train"].source == CUSTOM:
        return CUSTOM
    check_official(dataset, root, sources)
    return OFFICIAL


def _build(key: str, splits: dict[str, CifarSplit], base: Path, manifest: dict, progress: bool,
           shard_size: int) -> None:
    """Write one format into a temp folder, rename it into place, record it in `manifest` (in memory).

    Raises:
        FastcifarError: not enough space up front, or any write failure (the temp folder is removed).
    """
    folder = key.replace(":", "/")  # "npy", "ffcv", "dali/raw"
    final = base / folder
    counts = {name: len(split) for name, split in splits.items()}
    need = estimate_bytes(key, counts, splits["train"].coarse_labels is not None)
    final.parent.mkdir(parents=True, exist_ok=True)
    check_space(key, final, need)
    tmp = None
    try:
        tmp = make_temp_dir(final.parent, final.name)
        if key == "npy":
            entry = write_npy(splits, tmp, folder)
        elif key == "ffcv":
            entry = write_ffcv(splits, tmp, folder, progress=progress)
        else:
            total = sum(len(s) for s in splits.values())
            with progress_task(f"dali {key[5:]} shards", total, progress) as bar:
                entry = write_dali(splits, tmp, key[5:], folder, shard_size=shard_size, bar=bar)
        entry["checksums"] = _checksums(entry, base, tmp, folder)
        entry["bytes"] = sum(c["bytes"] for c in entry["checksums"].values())
        replace_dir(tmp, final)
    except (OSError, WriteError) as exc:
        where = final_name(getattr(exc, "filename", None) or getattr(exc, "path", None), tmp, final) if tmp else final
        raise write_failed(key, where, exc, need, final) from None
    finally:
        if tmp is not None:
            remove_path(tmp)  # gone after a successful rename; a partial folder after a failure
        if final.parent != base and final.parent.is_dir() and not any(final.parent.iterdir()):
            final.parent.rmdir()  # the "dali" folder made for a first encoding that failed
    set_format_entry(manifest, key, entry)


def _checksums(entry: dict, base: Path, tmp: Path, folder: str) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} of every file of a format, read from its temp folder."""
    out = {}
    for rel in entry_files(entry):
        path = tmp / Path(rel).relative_to(folder)
        out[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def _write_manifest(base: Path, manifest: dict) -> None:
    try:
        write_manifest(base, manifest)
    except OSError as exc:
        raise FastcifarError(f"Writing '{base / MANIFEST}' failed ({exc.strerror or exc}); free some space (or "
                             f"make it writable) and run the same command again; finished formats are rebuilt "
                             f"then.") from None


def _new_manifest(dataset: str, sources: dict[str, str], splits: dict[str, CifarSplit], source: str) -> dict:
    train = splits["train"]
    mean, std = channel_stats(train.images)
    return {
        "format_version": FORMAT_VERSION,
        "fastcifar_version": __version__,
        "dataset": dataset,
        "source": source,  # official | synthetic | custom (fastcifar.data.source)
        "synthetic": source == SYNTHETIC,  # kept for readers older than `source`
        "sources": sources,  # md5 of every raw file
        "splits": {name: {"count": len(split)} for name, split in splits.items()},
        "num_classes": len(train.class_names),
        "num_coarse_classes": len(train.coarse_class_names) if train.coarse_class_names is not None else None,
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
