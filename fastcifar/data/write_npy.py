"""The npy format: uint8 images and int64 labels as plain .npy files, for np.load(mmap_mode="r")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastcifar.data.cifar import CifarSplit
from fastcifar.data.space import name_failed_file

VERSION = 1


def write_npy(splits: dict[str, CifarSplit], out: Path, folder: str = "npy") -> dict:
    """Write `{split}_images.npy` uint8 [N, 32, 32, 3] NHWC, `{split}_labels.npy` int64 [N] and, for
    CIFAR-100, `{split}_coarse_labels.npy` int64 [N] into `out` (a temp folder renamed to `folder` later).

    Returns:
        The manifest entry; its paths are relative to the prepared folder (`folder/...`).
    """
    entry: dict = {"version": VERSION, "layout": "NHWC uint8; labels int64"}
    for name, split in splits.items():
        arrays = {"images": split.images, "labels": split.labels}
        if split.coarse_labels is not None:
            arrays["coarse_labels"] = split.coarse_labels
        files = {}
        for kind, array in arrays.items():
            filename = f"{name}_{kind}.npy"
            try:
                np.save(out / filename, np.ascontiguousarray(array), allow_pickle=False)
            except OSError as exc:
                name_failed_file(exc, out / filename)
                raise
            files[kind] = f"{folder}/{filename}"
        entry[name] = {"count": len(split), "files": files}
    return entry
