"""Read the official CIFAR-10 / CIFAR-100 pickle layouts into uint8 NHWC arrays, validated.

Layouts (ROOT = the data root):
    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
        b'data' uint8 [N, 3072] (row-major C, H, W), b'labels' list[int], b'filenames', b'batch_label';
        batches.meta: b'label_names'.
    ROOT/cifar-100-python/{train, test, meta}
        b'data', b'fine_labels', b'coarse_labels', b'filenames', b'batch_label';
        meta: b'fine_label_names', b'coarse_label_names'.

Synthetic stand-ins (fastcifar.data.synth) use the same layout; they carry a `SYNTHETIC` marker file
and the word "synthetic" in every b'batch_label', and are read with `source="synthetic"`.
Custom data (`custom=True`, the `--custom` flag of `data prepare`) uses the layout too, with any number
of images per split and the classes its meta file names; it is read with `source="custom"`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcifar.data.pickles import load_pickle
from fastcifar.data.source import CUSTOM, CUSTOM_FLAG, OFFICIAL, OFFICIAL_FILE_MD5, SYNTHETIC
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

SYNTHETIC_MARKER = "SYNTHETIC"  # file in the raw folder of a synthetic stand-in
IMAGE_SHAPE = (32, 32, 3)  # H, W, C of every CIFAR image
ROW_BYTES = 32 * 32 * 3  # one image in b'data': 3072 uint8, planes R, G, B of 32x32
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """Where one dataset lives on disk and what its files must hold."""

    name: str  # "cifar10" | "cifar100"
    title: str  # "CIFAR-10", for messages
    folder: str  # raw folder under ROOT, as the official archive extracts it
    archive: str  # official archive file name
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes  # key of the (fine) labels in a batch
    coarse_key: bytes | None  # key of the coarse labels (CIFAR-100 only)
    names_key: bytes  # key of the class names in the meta file
    coarse_names_key: bytes | None
    num_classes: int
    num_coarse_classes: int | None
    train_count: int = 50_000  # images in the official train split
    test_count: int = 10_000

    def split_files(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise FastcifarError(f"Unknown split '{split}'; use 'train' or 'test'.")
        return self.train_files if split == "train" else self.test_files

    def official_count(self, split: str) -> int:
        return self.train_count if split == "train" else self.test_count


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10", title="CIFAR-10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key=b"labels", coarse_key=None, names_key=b"label_names",
        coarse_names_key=None, num_classes=10, num_coarse_classes=None,
    ),
    "cifar100": DatasetSpec(
        name="cifar100", title="CIFAR-100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
        train_files=("train",), test_files=("test",), meta_file="meta", label_key=b"fine_labels",
        coarse_key=b"coarse_labels", names_key=b"fine_label_names", coarse_names_key=b"coarse_label_names",
        num_classes=100, num_coarse_classes=20,
    ),
}


@dataclass
class CifarSplit:
    """One split in memory.

    Attributes:
        images: uint8 [N, 32, 32, 3] NHWC, C-contiguous, host memory (N * 3 KiB).
        labels: int64 [N] fine labels in [0, num_classes).
        coarse_labels: int64 [N] in [0, 20) for CIFAR-100, else None.
        class_names: num_classes names, index = label.
        coarse_class_names: 20 names for CIFAR-100, else None.
        source: "official" | "synthetic" (a fastcifar.data.synth stand-in: never report its accuracy as
            CIFAR's) | "custom" (read with custom=True); see fastcifar.data.source.
    """

    dataset: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None
    class_names: list[str]
    coarse_class_names: list[str] | None
    source: str

    @property
    def synthetic(self) -> bool:
        return self.source == SYNTHETIC

    def __len__(self) -> int:
        return len(self.labels)


def get_spec(dataset: str) -> DatasetSpec:
    """The DatasetSpec for 'cifar10' or 'cifar100'."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise FastcifarError(f"Unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}.") from None


def raw_dir(dataset: str, root: str | os.PathLike | None) -> Path:
    """ROOT/cifar-10-batches-py or ROOT/cifar-100-python (may not exist)."""
    return data_root(root) / get_spec(dataset).folder


def source_files(dataset: str, root: str | os.PathLike | None) -> list[Path]:
    """All raw pickle files of a dataset, meta first, in a fixed order."""
    spec, folder = get_spec(dataset), raw_dir(dataset, root)
    return [folder / name for name in (spec.meta_file, *spec.train_files, *spec.test_files)]


def raw_present(dataset: str, root: str | os.PathLike | None) -> bool:
    """True when every raw pickle file exists (their contents are checked by read_split)."""
    return all(path.is_file() for path in source_files(dataset, root))


def is_synthetic(dataset: str, root: str | os.PathLike | None) -> bool:
    """True when the raw folder carries the SYNTHETIC marker file."""
    return (raw_dir(dataset, root) / SYNTHETIC_MARKER).exists()


def fetch_hint(dataset: str, root: str | os.PathLike | None) -> str:
    """The remedy for missing or broken raw files, as a clause for error messages."""
    root = data_root(root)
    return (f"run `fastcifar data download {dataset} --root {root}` (offline: `fastcifar data synth {dataset} "
            f"--root {root}` writes a synthetic stand-in)")


def custom_hint(dataset: str, root: str | os.PathLike | None) -> str:
    """The remedy for a folder that is the user's own data, as a clause for error messages."""
    return (f"if it is your own data in the {get_spec(dataset).title} layout, prepare it as custom data with "
            f"`fastcifar data prepare {dataset} --root {data_root(root)} {CUSTOM_FLAG}`")


def check_official(dataset: str, root: str | os.PathLike | None, sources: dict[str, str] | None = None) -> None:
    """Raise unless every raw file is byte-identical to the official archive's (md5, as published).

    sources: {file name: md5} already computed (by prepare), else computed here (~0.4 s for 180 MB).
    """
    from fastcifar.data.files import md5_file

    folder = raw_dir(dataset, root)
    for name, official in OFFICIAL_FILE_MD5[dataset].items():
        digest = sources[name] if sources and name in sources else md5_file(folder / name)
        if digest != official:
            raise FastcifarError(
                f"'{folder / name}' differs from the official {get_spec(dataset).title} file (md5 {digest}, official "
                f"{official}); {custom_hint(dataset, root)}, else delete the folder and {fetch_hint(dataset, root)}.")


def read_meta(dataset: str, root: str | os.PathLike | None, custom: bool = False) -> tuple[list[str], list[str] | None]:
    """Class names (and CIFAR-100 coarse names) from the meta file.

    custom: accept any number (>= 2) of fine classes and (>= 1) coarse classes, as the meta file lists them.
    """
    spec = get_spec(dataset)
    path = raw_dir(dataset, root) / spec.meta_file
    meta = _load_dict(path, dataset, root)
    names = _names(meta, spec.names_key, None if custom else spec.num_classes, path, dataset, root)
    coarse = None
    if spec.coarse_names_key is not None:
        count = None if custom else spec.num_coarse_classes
        coarse = _names(meta, spec.coarse_names_key, count, path, dataset, root, least=1)
    return names, coarse


def read_split(dataset: str, root: str | os.PathLike | None, split: str, custom: bool = False) -> CifarSplit:
    """Read and validate one split of the raw pickles.

    Args:
        dataset: "cifar10" or "cifar100".
        root: data root (None: $FASTCIFAR_ROOT or ~/.cache/fastcifar).
        split: "train" or "test".
        custom: the user's own data in this layout: any number (>= 1) of images, the classes of its meta
            file. Without it a folder that is not synthetic must hold the official counts and classes.

    Returns:
        CifarSplit with images uint8 [N, 32, 32, 3] NHWC and int64 labels (~150 MiB for train).

    Raises:
        FastcifarError: missing, truncated, malicious or mismatched files, wrong counts or label ranges.
    """
    spec = get_spec(dataset)
    folder = raw_dir(dataset, root)
    if not folder.is_dir():
        raise FastcifarError(f"No {spec.title} data in '{folder}'; {fetch_hint(dataset, root)}.")
    class_names, coarse_names = read_meta(dataset, root, custom)
    num_coarse = len(coarse_names) if coarse_names is not None else None
    synthetic = is_synthetic(dataset, root)
    rows, labels, coarse = [], [], []
    for name in spec.split_files(split):
        batch = _read_batch(folder / name, spec, root, len(class_names), num_coarse)
        synthetic = synthetic or batch["synthetic"]
        rows.append(batch["data"])
        labels.append(batch["labels"])
        coarse.append(batch["coarse"])
    count = sum(len(x) for x in labels)
    if custom and count == 0:
        raise FastcifarError(f"'{folder}' holds no {split} images; custom data needs at least one image per split.")
    if not synthetic and not custom and count != spec.official_count(split):
        raise FastcifarError(
            f"'{folder}' holds {count} {split} images where {spec.title} has {spec.official_count(split)} and no "
            f"SYNTHETIC marker says it is a stand-in; {custom_hint(dataset, root)}, else delete the folder and "
            f"{fetch_hint(dataset, root)}."
        )
    data = np.concatenate(rows)  # [N, 3072] uint8, planes C, H, W per row
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # [N, 32, 32, 3]
    return CifarSplit(
        dataset=dataset, split=split, images=images, labels=np.concatenate(labels),
        coarse_labels=np.concatenate(coarse) if spec.coarse_key is not None else None,
        class_names=class_names, coarse_class_names=coarse_names,
        source=SYNTHETIC if synthetic else CUSTOM if custom else OFFICIAL,
    )


# ---------------------------------------------------------------------------- validation


def _load_dict(path: Path, dataset: str, root) -> dict:
    obj = load_pickle(path, fix=fetch_hint(dataset, root))
    if not isinstance(obj, dict):
        raise FastcifarError(f"'{path}' holds a {type(obj).__name__}, not a CIFAR dict; delete it and "
                             f"{fetch_hint(dataset, root)}.")
    return obj


def _names(meta: dict, key: bytes, count: int | None, path: Path, dataset: str, root, least: int = 2) -> list[str]:
    """The class names under `key`: exactly `count` of them, or (count None, custom data) at least `least`."""
    names = meta.get(key)
    valid = isinstance(names, list) and all(isinstance(n, (bytes, str)) and n for n in names)
    if count is None:
        if not valid or len(names) < least:
            raise FastcifarError(f"'{path}' lacks a list of at least {least} class names under {key!r}; write the "
                                 f"names of your classes there (label i = name i).")
    elif not valid or len(names) != count:
        raise FastcifarError(f"'{path}' lacks {count} class names under {key!r} (is it the other CIFAR's meta "
                             f"file?); {custom_hint(dataset, root)}, else delete it and {fetch_hint(dataset, root)}.")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _read_batch(path: Path, spec: DatasetSpec, root, num_classes: int, num_coarse: int | None) -> dict:
    """One validated batch file: data uint8 [n, 3072], labels int64 [n], coarse int64 [n] or None.

    num_classes / num_coarse: how many class names the meta file gives (labels must lie below them).
    """
    fix = f"delete it and {fetch_hint(spec.name, root)}"
    batch = _load_dict(path, spec.name, root)
    other = DATASETS["cifar100" if spec.name == "cifar10" else "cifar10"]
    if spec.label_key not in batch and other.label_key in batch:
        raise FastcifarError(f"'{path}' holds {other.title} data where {spec.title} is expected; {fix}.")
    missing = [k for k in (b"data", spec.label_key, spec.coarse_key) if k is not None and k not in batch]
    if missing:
        raise FastcifarError(f"'{path}' is not a {spec.title} batch (no {', '.join(map(repr, missing))} key); {fix}.")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        shape = getattr(data, "shape", None)
        raise FastcifarError(f"'{path}' b'data' is {type(data).__name__} {shape}, not uint8 [N, {ROW_BYTES}]; {fix}.")
    labels = _labels(batch[spec.label_key], len(data), num_classes, path, fix)
    coarse = None
    if spec.coarse_key is not None:
        coarse = _labels(batch[spec.coarse_key], len(data), num_coarse, path, fix)
    label = batch.get(b"batch_label", b"")
    synthetic = b"synthetic" in (label if isinstance(label, bytes) else str(label).encode())
    return {"data": data, "labels": labels, "coarse": coarse, "synthetic": synthetic}


def _labels(values, count: int, num_classes: int, path: Path, fix: str) -> np.ndarray:
    try:
        labels = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise FastcifarError(f"'{path}' has non-integer labels; {fix}.") from None
    if labels.shape != (count,):
        raise FastcifarError(f"'{path}' has {labels.size} labels for {count} images; {fix}.")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise FastcifarError(f"'{path}' has labels in [{labels.min()}, {labels.max()}], outside [0, {num_classes}); "
                             f"{fix}.")
    return labels
