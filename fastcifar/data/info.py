"""`fastcifar data info`: what is downloaded and prepared under a data root, one row per dataset."""

from __future__ import annotations

import os

from fastcifar.data.cifar import (
    DATASETS,
    check_official,
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
from fastcifar.data.source import OFFICIAL, SYNTHETIC, label, source_of
from fastcifar.data.space import human
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

ALL_KEYS = format_keys(("npy", "ffcv", "dali"), ("raw", "png", "jpeg"))


def describe(root: str | os.PathLike | None) -> list[dict]:
    """One row per dataset (cifar10, cifar100) with what is on disk.

    Row keys (all always present, same order): dataset, raw (raw pickles present), source ("official",
    "SYNTHETIC", "custom"; None when unknown), train, test (image counts or None), formats (complete prepared
    format keys), raw_size,
    prepared_size (human readable), problem (a one-sentence error if the raw data is broken, else None).
    Counts come from the manifest when the data is prepared, else from reading the raw pickles.
    """
    root = data_root(root)
    rows = []
    for dataset in DATASETS:
        base, archive = prepared_dir(dataset, root), root / ARCHIVES[dataset].filename
        manifest = read_manifest(base)
        present = raw_present(dataset, root)
        row = {"dataset": dataset, "raw": present, "source": None, "train": None, "test": None,
               "formats": [], "raw_size": human(tree_size(raw_dir(dataset, root)) + tree_size(archive)),
               "prepared_size": human(tree_size(base)), "problem": None}
        if manifest is not None:
            row["formats"] = [k for k in ALL_KEYS if format_entry(manifest, k) and is_complete(manifest, k, base)]
        if manifest is not None and row["formats"]:
            row["source"] = label(source_of(manifest))
            row["train"], row["test"] = (manifest["splits"][s]["count"] for s in ("train", "test"))
        elif present:
            try:
                train, test = (read_split(dataset, root, s) for s in ("train", "test"))
                row["train"], row["test"] = len(train), len(test)
                if not (train.synthetic or test.synthetic):
                    check_official(dataset, root)
                row["source"] = label(SYNTHETIC if train.synthetic or test.synthetic else OFFICIAL)
            except FastcifarError as exc:
                row["problem"] = str(exc)
        elif raw_dir(dataset, root).exists():
            row["source"] = label(SYNTHETIC) if is_synthetic(dataset, root) else None
            row["problem"] = (f"'{raw_dir(dataset, root)}' is incomplete; run `fastcifar data download {dataset} "
                              f"--root {root}`.")
        rows.append(row)
    return rows
