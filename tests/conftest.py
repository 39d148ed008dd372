"""Shared fixtures: tiny synthetic CIFAR data, made once per test session and reused by every test file.

`synth_root(dataset)` -> a root holding the raw synthetic pickles (official layout).
`prepared_root(dataset, formats, dali_encoding)` -> a root whose ROOT/prepared/DATASET holds those formats.

Both default to 512 train / 256 test images (seed 0), which a small CNN learns well above chance in a
couple of epochs. The roots are shared: treat them as read-only (copy them with shutil.copytree before
changing anything).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SYNTH_TRAIN = 512  # images
SYNTH_TEST = 256
SYNTH_SEED = 0


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Factory: synth_root(dataset="cifar10", train=512, test=256, seed=0) -> Path of a data root."""
    from fastcifar.data.synth import write_synthetic

    cache: dict[tuple, Path] = {}

    def make(
        dataset: str = "cifar10", train: int = SYNTH_TRAIN, test: int = SYNTH_TEST, seed: int = SYNTH_SEED
    ) -> Path:
        key = (dataset, train, test, seed)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"synth-{dataset}")
            write_synthetic(dataset, root, train=train, test=test, seed=seed, progress=False)
            cache[key] = root
        return cache[key]

    return make


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory):
    """Factory: prepared_root(dataset="cifar10", formats=("npy",), dali_encoding="raw", train=512, test=256)
    -> Path of a data root with synthetic raw data and the prepared formats (one root per dataset and size;
    formats are added to it as tests ask for them, so it may hold more than requested)."""
    from fastcifar.data.manifest import format_keys
    from fastcifar.data.prepare import prepare
    from fastcifar.data.synth import write_synthetic

    roots: dict[tuple, Path] = {}
    built: dict[tuple, set[str]] = {}

    def make(dataset: str = "cifar10", formats=("npy",), dali_encoding="raw", train: int = SYNTH_TRAIN,
             test: int = SYNTH_TEST) -> Path:
        key = (dataset, train, test)
        if key not in roots:
            root = tmp_path_factory.mktemp(f"prepared-{dataset}")
            write_synthetic(dataset, root, train=train, test=test, seed=SYNTH_SEED, progress=False)
            roots[key], built[key] = root, set()
        wanted = set(format_keys(formats, dali_encoding))
        if not wanted <= built[key]:
            prepare(dataset, roots[key], formats=sorted(wanted), progress=False)
            built[key] |= wanted
        return roots[key]

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: the runs are tiny, other test files share the 2 cores, and oversubscribed
    OpenMP threads slow CPU training down by 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
