"""`fastcifar data info`: what is downloaded and prepared under a data root, one row per dataset."""

from __future__ import annotations

import os

from fastcifar.data.cifar import (
    DATASETS,
    is_synthetic,
    raw_dir,
    raw_present,
    read_split,
)
from fastcifar.data.download import ARCHIVES
from fastcifar.data.files import tree_size
from fastcifar.data.manifest import (
    format_entry,
    format_keys,
    is_complete,
    prepared_dir,
    read_manifest,
)
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

ALL_KEYS = format_keys(("npy", "ffcv", "dali"), ("raw", "png", "jpeg"))


def describe(root: str | os.PathLike | None) -> list[dict]:
    """One row per dataset (cifar10, cifar100) with what is on disk.

    Row keys (all always present, same order): dataset, raw (raw pickles present), synthetic (None when
    unknown), train, test (image counts or None), formats (complete prepared format keys), raw_size,
    prepared_size (human readable), problem (a one-sentence error if the raw data is broken, else None).
    Counts come from the manifest when the data is prepared, else from reading the raw pickles.
    """
    root = data_root(root)
    rows = []
    for dataset in DATASETS:
        base, archive = prepared_dir(dataset, root), root / ARCHIVES[dataset].filename
        manifest = read_manifest(base)
        present = raw_present(dataset, root)
        row = {"dataset": dataset, "raw": present, "synthetic": None, "train": None, "test": None,
               "formats": [], "raw_size": _size(tree_size(raw_dir(dataset, root)) + tree_size(archive)),
               "prepared_size": _size(tree_size(base)), "problem": None}
        if manifest is not None:
            row["formats"] = [k for k in ALL_KEYS if format_entry(manifest, k) and is_complete(manifest, k, base)]
        if manifest is not None and row["formats"]:
            row["synthetic"] = bool(manifest.get("synthetic"))
            row["train"], row["test"] = (manifest["splits"][s]["count"] for s in ("train", "test"))
        elif present:
            try:
                train, test = (read_split(dataset, root, s) for s in ("train", "test"))
                row["synthetic"], row["train"], row["test"] = train.synthetic or test.synthetic, len(train), len(test)
            except FastcifarError as exc:
                row["problem"] = str(exc)
        elif raw_dir(dataset, root).exists():
            row["synthetic"] = is_synthetic(dataset, root)
            row["problem"] = f"'{raw_dir(dataset, root)}' is incomplete; run `fastcifar data download {dataset} --root {root}`."
        rows.append(row)
    return rows


def _size(nbytes: int) -> str:
    """Bytes as a short human-readable string ("0 B", "3.1 MiB")."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
