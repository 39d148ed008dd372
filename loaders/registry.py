"""The loader registry: one LoaderSpec per loader, the single record every list of loaders derives from.

Kept apart from `build_loader` (loaders/__init__.py) so that the config can read it without depending on
anything that depends on the config: this module imports nothing of fastcifar, nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoaderSpec:
    """The facts of one loader.

    Attributes:
        name: the value of `data.loader` and `--loader`.
        module: defines `build(cfg, split, *, train, device, rank, world_size, indices)`.
        format: the prepared format it reads (`fastcifar data prepare --formats`).
        library: the optional module it needs, None = core dependencies only; its loader module imports it
            through `base.require_library` (lazily, inside the build, where ffcv's thread side effects are contained).
        extra: the pip extra that installs `library` (`pip install 'fastcifar[extra]'`).
        native_ops: per-image ops its library can run itself (`data.native_augment: true`); non-empty
            ones also get a "NAME-native" benchmark variant.
        takes_indices: serves a subset of a split (the held-out `data.val_split`).
        description: one line for docs and help.
        shares_process: can stay built next to another loader in one process without slowing it, as a paired
            bench cell keeps them (bench/paired.py). Not ffcv: with an idle ffcv Loader alive in the process
            (numba's TBB threads asleep), the gpu loader's torch ops on 2 threads ran 1.5-3x slower, at 90-128 %
            CPU instead of 198 %, while on 1 thread they kept their speed.
    """

    name: str
    module: str
    format: str
    library: str | None
    extra: str | None
    native_ops: frozenset[str]
    takes_indices: bool
    description: str
    shares_process: bool = True


LOADERS: dict[str, LoaderSpec] = {spec.name: spec for spec in (
    LoaderSpec("gpu", "fastcifar.loaders.gpu", "npy", None, None, frozenset(), True,
               "whole split on the device, index slices of a per-epoch permutation (the ceiling)"),
    LoaderSpec("torch", "fastcifar.loaders.torch_loader", "npy", None, None, frozenset(), True,
               "DataLoader workers with per-image CPU transforms (the baseline)"),
    LoaderSpec("ffcv", "fastcifar.loaders.ffcv_loader", "ffcv", "ffcv", "ffcv", frozenset({"hflip", "crop"}), True,
               ".beton decoded by ffcv's numba-JIT pipeline on CPU threads", shares_process=False),
    LoaderSpec("dali", "fastcifar.loaders.dali_loader", "dali", "nvidia.dali", "dali", frozenset({"hflip", "crop"}),
               True, "webdataset shards through one persistent DALI pipeline (decode on the GPU)"),
)}
