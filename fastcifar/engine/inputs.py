"""What training and evaluation need from the data side: manifest facts, the val split, eval loaders."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from fastcifar.config import Config
from fastcifar.errors import FastcifarError
from fastcifar.paths import data_root


@dataclass(frozen=True)
class DataInfo:
    """Facts about the prepared dataset a run trains on (from its manifest.json).

    mean / std: per-channel RGB on the 0-255 scale (train split); class_names: for the chosen label set;
    source: "official" | "synthetic" | "custom" (fastcifar.data.source), shown wherever a run reports its data.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    class_names: list[str]
    source: str
    train_count: int
    test_count: int

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


def data_info(cfg: Config) -> DataInfo:
    """Read the manifest of `cfg.data.dataset` under the data root; fine or coarse classes by `cfg.data.label`."""
    from fastcifar.data.prepare import load_manifest
    from fastcifar.data.source import source_of

    manifest = load_manifest(cfg.data.dataset, data_root(cfg.data.root), require=("npy",))
    if cfg.data.label == "coarse":
        names = manifest.get("coarse_class_names") or []
        if not names:
            raise FastcifarError(
                f"data.label is 'coarse' but {cfg.data.dataset} has no coarse labels; "
                f"use data.label: fine (coarse exists for cifar100 only)."
            )
    else:
        names = manifest["class_names"]
    return DataInfo(
        mean=tuple(manifest["mean"]),
        std=tuple(manifest["std"]),
        num_classes=len(names),
        class_names=list(names),
        source=source_of(manifest) or "official",
        train_count=int(manifest["splits"]["train"]["count"]),
        test_count=int(manifest["splits"]["test"]["count"]),
    )


def split_indices(cfg: Config, train_count: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(train indices, val indices) of the train split, or (None, None) when `data.val_split` is 0.

    A permutation of range(train_count) seeded by `train.seed` alone (its own generator, so the global RNG
    is untouched); the last `val_split` are held out. Sorted, int64: the loaders shuffle per epoch anyway.
    """
    n_val = cfg.data.val_split
    if n_val <= 0:
        return None, None
    if n_val >= train_count:
        raise FastcifarError(
            f"data.val_split is {n_val} but the train split has only {train_count} images; "
            f"hold out fewer (e.g. {train_count // 10})."
        )
    perm = torch.randperm(train_count, generator=torch.Generator().manual_seed(cfg.train.seed)).numpy()
    return np.sort(perm[:-n_val]).astype(np.int64), np.sort(perm[-n_val:]).astype(np.int64)


def eval_loader(cfg: Config, split: str, device: torch.device, indices: np.ndarray | None = None, rank: int = 0,
                world_size: int = 1, loader: str = "gpu"):
    """A loader over `split` (or `indices` of it) for evaluation: unshuffled, not augmented, `eval_batch_size`.

    The `gpu` loader by default, whatever `cfg.data.loader` trains with: evaluation is a fixed pass over at
    most 10k images, and the resident loader reads them exactly once each; the switchable (and measured)
    part is the training input.
    """
    from fastcifar.loaders import build_loader

    eval_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, loader=loader))
    return build_loader(eval_cfg, split, train=False, device=device, rank=rank, world_size=world_size, indices=indices)
