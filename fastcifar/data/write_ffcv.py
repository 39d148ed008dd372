"""The ffcv format: one .beton per split with fields image (RGBImageField, raw uint8), label, coarse_label."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from fastcifar.data.cifar import CifarSplit
from fastcifar.errors import FastcifarError

VERSION = 1
NO_COARSE_LABEL = -1  # coarse_label value for CIFAR-10, which has none


class _Samples:
    """Indexable view ffcv's writer reads: sample i -> (image uint8 [32, 32, 3] HWC, label, coarse label)."""

    def __init__(self, split: CifarSplit):
        self.images, self.labels = split.images, split.labels
        self.coarse = split.coarse_labels if split.coarse_labels is not None else np.full_like(split.labels, NO_COARSE_LABEL)

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
        with _tqdm_enabled(progress, f"ffcv {name}"):
            DatasetWriter(str(path), fields, num_workers=workers).from_indexed_dataset(_Samples(split), chunksize=500)
        entry[name] = {"count": len(split), "files": {"beton": f"{folder}/{path.name}"}}
    return entry


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
