"""The dali format: webdataset tar shards plus the index files DALI's `fn.readers.webdataset` reads.

Per split: `{split}-{i:04d}.tar` holding SHARD_SIZE samples each, in sample order. Sample i has key
"%06d" % i and entries `{key}.rgb` (3072 raw bytes, HWC) or `{key}.png` / `{key}.jpg`, `{key}.cls`
(ASCII decimal label, the webdataset convention) and, for CIFAR-100, `{key}.coarse_cls`. Tars are
deterministic (fixed order, mtime 0, uid/gid 0, ustar). `{split}-{i:04d}.idx` is written here in
the format of DALI's `wds2idx` (v1.2: a header "v1.2 <samples>", then per sample the tuples
"<ext> <data offset> <size> <name>" of its entries), so prepare does not need DALI installed.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from fastcifar.data.cifar import CifarSplit
from fastcifar.data.space import name_failed_file

VERSION = 1
SHARD_SIZE = 10_000  # samples per tar
INDEX_VERSION = "v1.2"  # what nvidia-dali's wds2idx writes
EXTENSIONS = {"raw": "rgb", "png": "png", "jpeg": "jpg"}
JPEG_QUALITY = 95  # PIL quality; 4:4:4 chroma (no subsampling), since 32 px images have little colour to spare
TAR_BLOCK = 512  # bytes


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """uint8 [32, 32, 3] HWC -> bytes: raw HWC, lossless PNG, or JPEG (quality 95, 4:4:4)."""
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    if encoding == "png":
        Image.fromarray(image, "RGB").save(buffer, format="PNG")
    else:
        Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def write_dali(splits: dict[str, CifarSplit], out: Path, encoding: str, folder: str,
               shard_size: int = SHARD_SIZE, bar=None) -> dict:
    """Write the shards and index files of every split into `out` (renamed to `folder` later).

    Args:
        splits: {"train": CifarSplit, "test": CifarSplit}.
        out: folder to write into.
        encoding: "raw" | "png" | "jpeg".
        folder: relative path the folder will have under the prepared folder, e.g. "dali/raw".
        shard_size: samples per tar.
        bar: a fastcifar.data.progress.Task advanced once per sample, or None.

    Returns:
        The manifest entry (shard and index paths relative to the prepared folder).
    """
    ext = EXTENSIONS[encoding]
    coarse = next(iter(splits.values())).coarse_labels is not None
    entry: dict = {"version": VERSION, "encoding": encoding, "ext": ext, "label_ext": "cls",
                   "coarse_label_ext": "coarse_cls" if coarse else None, "shard_size": shard_size,
                   "index_version": INDEX_VERSION}
    if encoding == "jpeg":
        entry["jpeg"] = {"quality": JPEG_QUALITY, "subsampling": "4:4:4", "encoder": "PIL"}
    for name, split in splits.items():
        shards, indexes = [], []
        for number, start in enumerate(range(0, len(split), shard_size)):
            stem = f"{name}-{number:04d}"
            tar = out / f"{stem}.tar"
            try:
                samples = _write_tar(tar, split, range(start, min(start + shard_size, len(split))), encoding)
                write_index(out / f"{stem}.idx", samples)
            except OSError as exc:
                name_failed_file(exc, tar if not (out / f"{stem}.idx").exists() else out / f"{stem}.idx")
                raise
            shards.append(f"{folder}/{stem}.tar")
            indexes.append(f"{folder}/{stem}.idx")
            if bar is not None:
                bar.advance(len(samples))
        entry[name] = {"count": len(split), "files": {"shards": shards, "index": indexes}}
    return entry


def _write_tar(path: Path, split: CifarSplit, indices: range, encoding: str) -> list[list[tuple[str, int, int, str]]]:
    """Write one shard; returns per sample its entries as (ext, data offset, size, name)."""
    ext = EXTENSIONS[encoding]
    samples = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in indices:
            key = f"{i:06d}"
            parts = [(ext, encode_image(split.images[i], encoding)), ("cls", str(int(split.labels[i])).encode())]
            if split.coarse_labels is not None:
                parts.append(("coarse_cls", str(int(split.coarse_labels[i])).encode()))
            sample = []
            for part_ext, payload in parts:
                name = f"{key}.{part_ext}"
                tar.addfile(_tarinfo(name, len(payload)), io.BytesIO(payload))
                padded = -(-len(payload) // TAR_BLOCK) * TAR_BLOCK
                sample.append((part_ext, tar.offset - padded, len(payload), name))  # data starts after the header
            samples.append(sample)
    return samples


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_index(path: Path, samples: list[list[tuple[str, int, int, str]]]) -> None:
    """Write a DALI webdataset index (wds2idx v1.2 format) for one shard."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) for sample in samples]
    path.write_text("\n".join(lines) + "\n")
