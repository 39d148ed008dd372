"""Synthetic CIFAR stand-ins in the exact official pickle layout, with learnable class structure.

For tests and offline demos only: each class has a fixed template (a colour grating with a
class-specific frequency and orientation plus a coloured disc at a class-specific place), and each
image is its template shifted by up to 3 px, with per-image contrast/brightness jitter and pixel
noise. A linear model on pixels separates the classes well above chance; a small CNN does better
within a couple of epochs. For CIFAR-100 the coarse class sets the grating's colours, so coarse
labels are learnable too. Every file says "synthetic" in b'batch_label' and the folder holds a
`SYNTHETIC` marker, so the data can never pass for the real thing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from fastcifar.data.cifar import SYNTHETIC_MARKER, get_spec, raw_dir
from fastcifar.data.files import STALE_TEMP_S, make_temp_dir, remove_stale_temps, replace_dir
from fastcifar.data.names import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_TO_COARSE,
)
from fastcifar.data.pickles import dumps_py2
from fastcifar.data.progress import progress_task
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root

MAX_SHIFT = 3  # px, per-image random translation of the template
NOISE_STD = 40.0  # per-pixel Gaussian noise, 0-255 scale
CHUNK = 4096  # images rendered at once (~50 MiB of float32 temporaries)


def write_synthetic(dataset: str, root: str | os.PathLike | None, train: int = 5000, test: int = 1000,
                    seed: int = 0, progress: bool = False) -> Path:
    """Write a synthetic dataset in the official layout under ROOT (atomic; replaces an older synthetic one).

    Args:
        dataset: "cifar10" or "cifar100".
        root: data root (None: $FASTCIFAR_ROOT or ~/.cache/fastcifar).
        train: train images (CIFAR-10 splits them over 5 batch files, like the original).
        test: test images.
        seed: fixes templates, labels, and noise: the same arguments give byte-identical files.
        progress: show a rich progress bar.

    Returns:
        The raw folder, e.g. ROOT/cifar-10-batches-py.

    Raises:
        FastcifarError: bad sizes, or real (non-synthetic) data already in the folder.
    """
    spec = get_spec(dataset)
    if train < 5 or test < 1:
        raise FastcifarError(f"Synthetic {spec.title} needs at least 5 train and 1 test images, got {train} and "
                             f"{test}.")
    root, final = data_root(root), raw_dir(dataset, root)
    if final.exists() and not (final / SYNTHETIC_MARKER).exists():
        raise FastcifarError(f"'{final}' already holds real {spec.title} data; write the synthetic stand-in to "
                             f"another root (--root) so the real files stay untouched.")
    remove_stale_temps(root, min_age_s=STALE_TEMP_S)  # unlocked root: spare a concurrent run's temps
    rng = np.random.default_rng(seed)
    fine_to_coarse = np.array(CIFAR100_FINE_TO_COARSE if dataset == "cifar100" else range(10))
    templates = _templates(fine_to_coarse, rng)  # [C, 32+2s, 32+2s, 3] float32
    tmp = make_temp_dir(root, "synth")
    try:
        out = tmp / spec.folder
        out.mkdir()
        with progress_task(f"synthesizing {spec.title}", train + test, progress) as bar:
            for split, count in (("train", train), ("test", test)):
                labels = _balanced_labels(count, len(fine_to_coarse), rng)
                images = _render(templates, labels, rng, bar)  # [N, 32, 32, 3] uint8
                _write_split(out, spec, split, images, labels, fine_to_coarse[labels])
        _write_meta(out, spec, train)
        (out / SYNTHETIC_MARKER).write_text(
            f"SYNTHETIC {spec.title} stand-in written by fastcifar (seed={seed}, train={train}, test={test}).\n"
            "Not the real dataset: accuracy on it says nothing about CIFAR.\n")
        replace_dir(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # empty after the rename; all of it after a failure
    return final


def _templates(fine_to_coarse: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One template per class, padded by MAX_SHIFT px: float32 [C, 32+2s, 32+2s, 3], 0-255."""
    num_classes, num_groups = len(fine_to_coarse), int(fine_to_coarse.max()) + 1
    side = 32 + 2 * MAX_SHIFT
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) - MAX_SHIFT  # pixel coordinates of the 32 px view
    group_colours = rng.uniform(30, 225, size=(num_groups, 2, 3)).astype(np.float32)  # grating colours per group
    out = np.empty((num_classes, side, side, 3), np.float32)
    for c in range(num_classes):
        low, high = group_colours[fine_to_coarse[c]]
        cycles, angle, phase = rng.uniform(0.5, 3.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * (xx * np.cos(angle) + yy * np.sin(angle)) / 32 + phase)
        image = low + (high - low) * wave[..., None]  # [side, side, 3]
        cy, cx, radius = rng.uniform(6, 26), rng.uniform(6, 26), rng.uniform(4, 9)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2)[..., None]
        out[c] = np.where(disc, rng.uniform(0, 255, size=3).astype(np.float32), image)
    return out


def _balanced_labels(count: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [count]: each class count // C or +1 times, shuffled."""
    return rng.permutation(np.arange(count) % num_classes).astype(np.int64)


def _render(templates: np.ndarray, labels: np.ndarray, rng: np.random.Generator, bar) -> np.ndarray:
    """uint8 [N, 32, 32, 3]: shifted template + contrast/brightness jitter + noise, in chunks of CHUNK."""
    images = np.empty((len(labels), 32, 32, 3), np.uint8)
    grid = np.arange(32)
    for start in range(0, len(labels), CHUNK):
        lab = labels[start:start + CHUNK]
        n = len(lab)
        dy, dx = rng.integers(0, 2 * MAX_SHIFT + 1, size=(2, n))
        rows = (dy[:, None] + grid)[:, :, None]  # [n, 32, 1]
        cols = (dx[:, None] + grid)[:, None, :]  # [n, 1, 32]
        x = templates[lab[:, None, None], rows, cols]  # [n, 32, 32, 3] float32
        contrast = rng.uniform(0.75, 1.25, size=(n, 1, 1, 1)).astype(np.float32)
        brightness = rng.uniform(-20, 20, size=(n, 1, 1, 1)).astype(np.float32)
        x = (x - 128.0) * contrast + 128.0 + brightness
        x += rng.normal(0.0, NOISE_STD, size=x.shape).astype(np.float32)
        images[start:start + n] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        bar.advance(n)
    return images


def _write_split(out: Path, spec, split: str, images: np.ndarray, labels: np.ndarray, coarse: np.ndarray) -> None:
    """Write the split's batch files: b'data' uint8 [n, 3072] rows in C, H, W order."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # [N, 3072]
    files = spec.split_files(split)
    word = "training" if split == "train" else "testing"
    offset = 0
    for i, (name, part) in enumerate(zip(files, np.array_split(np.arange(len(images)), len(files)))):
        batch = {
            b"batch_label": f"synthetic {word} batch {i + 1} of {len(files)}".encode(),
            spec.label_key: [int(v) for v in labels[part]],
            b"data": np.ascontiguousarray(data[part]),
            b"filenames": [f"synthetic_{split}_{offset + j:06d}.png".encode() for j in range(len(part))],
        }
        if spec.coarse_key is not None:
            batch[spec.coarse_key] = [int(v) for v in coarse[part]]
        (out / name).write_bytes(dumps_py2(batch))
        offset += len(part)


def _write_meta(out: Path, spec, train: int) -> None:
    if spec.name == "cifar10":
        meta = {b"num_cases_per_batch": -(-train // len(spec.train_files)), b"num_vis": 3072,
                b"label_names": [n.encode() for n in CIFAR10_CLASSES]}
    else:
        meta = {b"fine_label_names": [n.encode() for n in CIFAR100_CLASSES],
                b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_CLASSES]}
    (out / spec.meta_file).write_bytes(dumps_py2(meta))
