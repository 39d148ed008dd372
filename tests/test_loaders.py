"""Every loader against the contract, on the tiny synthetic splits, on CPU (GPU cases run where CUDA is).

Samples are identified by the bytes of their image, so each check says which stored sample came out,
not just how many: one epoch is the split exactly once, pixel-exact, with its own label.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from fastcifar.config import CHOICES, Config, apply_overrides, from_dict
from fastcifar.errors import FastcifarError
from fastcifar.loaders import LOADERS, build_loader, remaining_augment
from fastcifar.loaders.base import Loader, sample_order
from fastcifar.loaders.dali_loader import Feed, parse_ascii_labels

NAMES = tuple(LOADERS)  # gpu, torch, ffcv, dali
B = 100  # batch size: 512 train / 256 test do not divide by it, so last partial batches are exercised
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def root(prepared_root):
    return prepared_root("cifar10", formats=("npy", "ffcv", "dali"))


class Source:
    """The stored npy split and a map from image bytes to sample index."""

    def __init__(self, root, dataset: str, split: str):
        folder = root / "prepared" / dataset / "npy"
        self.images = np.load(folder / f"{split}_images.npy")  # [N, 32, 32, 3] uint8
        self.labels = np.load(folder / f"{split}_labels.npy")
        coarse = folder / f"{split}_coarse_labels.npy"
        self.coarse = np.load(coarse) if coarse.exists() else None
        self.index = {image.tobytes(): i for i, image in enumerate(self.images)}
        assert len(self.index) == len(self.images), "synthetic images must be distinct to be identified"

    def __len__(self) -> int:
        return len(self.labels)


@pytest.fixture(scope="module")
def train_src(root):
    return Source(root, "cifar10", "train")


@pytest.fixture(scope="module")
def test_src(root):
    return Source(root, "cifar10", "test")


def make_cfg(root, loader: str, seed: int = 3, dataset: str = "cifar10", **data) -> Config:
    cfg = Config()
    cfg.train.seed = seed
    cfg.data.root, cfg.data.loader, cfg.data.dataset = str(root), loader, dataset
    cfg.data.batch_size = cfg.data.eval_batch_size = B
    cfg.data.workers = 1 if loader in ("ffcv", "dali") else 0  # 0: torch loads in the test process (fast)
    cfg.data.drop_last, cfg.data.prefetch = False, 2
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def epoch(loader, device="cpu", size: int = 32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One pass: per batch the NHWC images (numpy) and labels, after checking the contract's tensors."""
    images, labels = [], []
    for x, y in loader:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.device == torch.device(device) and y.device == torch.device(device)
        assert x.ndim == 4 and x.shape[1:] == (3, size, size) and y.shape == (x.shape[0],)
        assert x.is_contiguous(memory_format=torch.channels_last)
        images.append(x.permute(0, 2, 3, 1).cpu().numpy().copy())  # [B, H, W, 3]; copy: buffers get reused
        labels.append(y.cpu().numpy().copy())
    return images, labels


def order_of(loader, src: Source, device="cpu") -> np.ndarray:
    """Sample indices in the order the loader yields them; checks pixels and labels against the source."""
    images, labels = epoch(loader, device)
    if not images:
        return np.zeros(0, dtype=np.int64)
    images, labels = np.concatenate(images), np.concatenate(labels)
    order = np.array([src.index.get(image.tobytes(), -1) for image in images])
    assert (order >= 0).all(), "a yielded image is not pixel-exact to any stored image"
    np.testing.assert_array_equal(labels, src.labels[order])
    return order


# ---------------------------------------------------------------------------- one epoch = the split


@pytest.mark.parametrize("name", NAMES)
def test_train_epoch_is_every_sample_once_and_eval_is_stored_order(name, root, train_src, test_src):
    loader = build_loader(make_cfg(root, name), "train", train=True, device="cpu")
    assert isinstance(loader, Loader) and loader.per_image_ops_done is (name == "torch")
    assert len(loader) == 6  # ceil(512 / 100), drop_last off
    images, _ = epoch(loader)
    assert [len(x) for x in images] == [100] * 5 + [12]
    order = order_of(loader, train_src)
    np.testing.assert_array_equal(np.sort(order), np.arange(512))
    assert not np.array_equal(order, np.arange(512))  # shuffled

    evaluator = build_loader(make_cfg(root, name, drop_last=True), "test", train=False, device="cpu")
    assert len(evaluator) == 3  # eval never drops: 100 + 100 + 56
    np.testing.assert_array_equal(order_of(evaluator, test_src), np.arange(256))


@pytest.mark.parametrize("name", NAMES)
def test_epochs_reshuffle_and_the_same_seed_reproduces_any_epoch(name, root, train_src):
    cfg = make_cfg(root, name, seed=3)
    first = build_loader(cfg, "train", train=True, device="cpu")
    e0 = order_of(first, train_src)
    first.set_epoch(1)
    e1 = order_of(first, train_src)
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(np.sort(e1), np.arange(512))

    again = build_loader(cfg, "train", train=True, device="cpu")
    again.set_epoch(1)  # straight to epoch 1: the order is a function of (seed, epoch), not of history
    np.testing.assert_array_equal(order_of(again, train_src), e1)
    again.set_epoch(0)
    np.testing.assert_array_equal(order_of(again, train_src), e0)

    if name in ("gpu", "torch", "dali"):  # the contract's permutation itself
        expected = sample_order(512, seed=3, epoch=1, train=True, drop_last=False)
        np.testing.assert_array_equal(e1, expected.numpy())
    else:  # ffcv's RANDOM order, as its traversal_order/random.py draws it
        np.testing.assert_array_equal(e1, np.random.default_rng(3 + 1).permutation(512))


# ---------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("name", NAMES)
def test_two_ranks_split_the_train_set_disjointly_and_completely(name, root, train_src):
    cfg = make_cfg(root, name)
    ranks = [build_loader(cfg, "train", train=True, device="cpu", rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3  # ceil(256 / 100) each: DDP steps stay in lockstep
    for e in (0, 1):
        for loader in ranks:
            loader.set_epoch(e)
        shards = [order_of(loader, train_src) for loader in ranks]
        assert len(shards[0]) == len(shards[1]) == 256
        assert not set(shards[0]) & set(shards[1])
        np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(512))
        for r in (0, 1):  # every loader shares the contract's order exactly
            expected = sample_order(512, seed=3, epoch=e, rank=r, world_size=2, train=True, drop_last=False)
            np.testing.assert_array_equal(shards[r], expected.numpy())


@pytest.mark.parametrize("name", NAMES)
def test_two_ranks_evaluate_every_test_sample_exactly_once(name, root, test_src):
    cfg = make_cfg(root, name)
    shards = [order_of(build_loader(cfg, "test", train=False, device="cpu", rank=r, world_size=2), test_src)
              for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(256))
    for shard in shards:
        assert (np.diff(shard) > 0).all()  # stored order within a rank


# ffcv with 2 ranks drops through the shared sample_order (checked above and against DistributedSampler);
# leaving it out of this matrix saves two numba compilations.
@pytest.mark.parametrize("name, world_size", [(n, 1) for n in NAMES] + [("gpu", 2), ("torch", 2), ("dali", 2)])
def test_drop_last_yields_len_full_batches_of_one_shape(name, world_size, root, train_src):
    cfg = make_cfg(root, name, drop_last=True)
    seen = []
    for rank in range(world_size):
        loader = build_loader(cfg, "train", train=True, device="cpu", rank=rank, world_size=world_size)
        images, _ = epoch(loader)
        assert len(loader) == len(images) == (512 // world_size) // B  # 5, or 2 per rank
        assert {x.shape for x in images} == {(B, 32, 32, 3)}
        seen.append(order_of(loader, train_src))
    all_seen = np.concatenate(seen)
    assert len(set(all_seen)) == len(all_seen) == 500 if world_size == 1 else 400


def test_sample_order_is_torch_distributed_samplers_order():
    for n in (3, 10, 11):
        for world_size in (1, 2, 3, 4):
            for drop_last in (False, True):
                for rank in range(world_size):
                    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=7,
                                                 drop_last=drop_last)
                    sampler.set_epoch(5)
                    ours = sample_order(n, seed=7, epoch=5, rank=rank, world_size=world_size, train=True,
                                        drop_last=drop_last)
                    assert ours.tolist() == list(sampler), (n, world_size, drop_last, rank)
        eval_shards = [sample_order(n, seed=7, epoch=0, rank=r, world_size=4, train=False, drop_last=True).tolist()
                       for r in range(4)]
        assert sorted(sum(eval_shards, [])) == list(range(n))  # no padding, no drop in eval


# ---------------------------------------------------------------------------- subsets, labels, sizes


@pytest.mark.parametrize("name", NAMES)
def test_indices_restrict_the_split(name, root, train_src):
    indices = np.arange(3, 512, 5)  # 102 samples, the trainer's held-out val split
    evaluator = build_loader(make_cfg(root, name), "train", train=False, device="cpu", indices=indices)
    assert len(evaluator) == 2
    np.testing.assert_array_equal(order_of(evaluator, train_src), indices)
    if name != "ffcv":  # ffcv's shuffled subset is its own RANDOM order (tested above); keep its JIT count low
        trainer = build_loader(make_cfg(root, name), "train", train=True, device="cpu", indices=indices)
        order = order_of(trainer, train_src)
        np.testing.assert_array_equal(np.sort(order), indices)
        assert not np.array_equal(order, indices)


@pytest.mark.parametrize("name", NAMES)
def test_cifar100_coarse_labels(name, prepared_root):
    root100 = prepared_root("cifar100", formats=("npy", "ffcv", "dali"))
    src = Source(root100, "cifar100", "test")
    cfg = make_cfg(root100, name, dataset="cifar100", label="coarse")
    images, labels = epoch(build_loader(cfg, "test", train=False, device="cpu"))
    order = np.array([src.index[x.tobytes()] for x in np.concatenate(images)])
    np.testing.assert_array_equal(order, np.arange(256))
    np.testing.assert_array_equal(np.concatenate(labels), src.coarse[order])
    assert src.coarse.max() < 20 and not np.array_equal(src.coarse, src.labels)


def test_coarse_label_on_cifar10_is_refused(root):
    cfg = make_cfg(root, "gpu")
    cfg.data.label = "coarse"
    with pytest.raises(FastcifarError, match="cifar100 only"):
        build_loader(cfg, "test", train=False, device="cpu")


def test_torch_loader_resizes_on_cpu_and_gpu_loader_leaves_it_to_the_device(root, test_src):
    from fastcifar.cpu_transforms import cpu_transform

    cfg = make_cfg(root, "torch")
    cfg.augment.image_size = 48
    torch_loader = build_loader(cfg, "test", train=False, device="cpu")
    assert torch_loader.per_image_ops_done
    images, _ = epoch(torch_loader, size=48)
    resize = cpu_transform(cfg.augment, train=False)
    for i in (0, 57, 255):  # the stored order in eval: batch 0 row 0, ..., last batch row 55
        expected = resize(torch.from_numpy(test_src.images[i]).permute(2, 0, 1))  # [3, 48, 48]
        got = torch.from_numpy(images[i // B][i % B]).permute(2, 0, 1)
        assert torch.equal(got, expected)
    cfg.data.loader = "gpu"
    gpu_loader = build_loader(cfg, "test", train=False, device="cpu")
    assert not gpu_loader.per_image_ops_done
    assert next(iter(gpu_loader))[0].shape[-2:] == (32, 32)  # stored size; GpuAugment resizes


def test_torch_loader_with_worker_processes_matches_the_contract_order(root, train_src):
    loader = build_loader(make_cfg(root, "torch", workers=2), "train", train=True, device="cpu")
    for e in (0, 1):  # persistent workers: the second epoch reuses them
        loader.set_epoch(e)
        expected = sample_order(512, seed=3, epoch=e, train=True, drop_last=False).numpy()
        np.testing.assert_array_equal(order_of(loader, train_src), expected)


@pytest.mark.parametrize("size", [32, 48, 224])
def test_torch_transform_output_is_hwc_memory_with_the_same_pixels(size):
    """The tuned baseline changes memory layout only: torch's uint8 resize skips two transposes, the batch
    is a plain copy, and every pixel equals the CHW path's."""
    from fastcifar.config import AugmentConfig
    from fastcifar.cpu_transforms import HwcMemory, cpu_transform

    cfg = AugmentConfig(image_size=size, crop_padding=4, hflip=0.5, cutout=0.5)
    hwc = cpu_transform(cfg, train=True)
    chw = cpu_transform(cfg, train=True)
    chw.pipeline.transforms = [t for t in chw.pipeline.transforms if not isinstance(t, HwcMemory)]
    assert len(chw.pipeline.transforms) == len(hwc.pipeline.transforms) - 1
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    for i, image in enumerate(images):
        torch.manual_seed(i)
        got = hwc(image.permute(2, 0, 1))
        torch.manual_seed(i)
        want = chw(image.permute(2, 0, 1).contiguous())
        assert got.permute(1, 2, 0).is_contiguous() and torch.equal(got, want)


def test_collate_nhwc_is_one_contiguous_batch_from_any_layout():
    from fastcifar.loaders.torch_loader import collate_nhwc

    images = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    samples = [(images[i].permute(1, 2, 0).contiguous().permute(2, 0, 1), i) for i in range(3)]  # HWC memory
    samples += [(images[i].contiguous(), i) for i in range(3, 5)]  # CHW memory
    batch, labels = collate_nhwc(samples)
    assert batch.shape == (5, 40, 40, 3) and batch.is_contiguous() and labels.dtype == torch.int64
    assert torch.equal(batch, images.permute(0, 2, 3, 1)) and labels.tolist() == [0, 1, 2, 3, 4]


def test_to_device_ahead_on_cpu_passes_batches_through():
    from fastcifar.loaders.torch_loader import to_device_ahead

    batches = [(torch.full((2, 4, 4, 3), i, dtype=torch.uint8), torch.tensor([i, i])) for i in range(3)]
    out = list(to_device_ahead(iter(batches), torch.device("cpu")))
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(out, batches)) and len(out) == 3


@cuda
def test_cuda_to_device_ahead_copies_one_batch_ahead_on_a_side_stream_without_host_syncs():
    from fastcifar.loaders.torch_loader import to_device_ahead

    batches = [(torch.full((4, 8, 8, 3), i, dtype=torch.uint8).pin_memory(), torch.tensor([i] * 4).pin_memory())
               for i in range(5)]
    pulled = []

    def source():
        for batch in batches:
            pulled.append(len(pulled))
            yield batch

    device = torch.device("cuda", torch.cuda.current_device())
    out = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, y) in enumerate(to_device_ahead(source(), device)):
            assert len(pulled) == min(i + 2, 5)  # the next batch is already on its way
            out.append((x.float().mean() * 1, y.sum() * 1))  # compute on the current stream
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert [(float(m), int(s)) for m, s in out] == [(float(i), 4 * i) for i in range(5)]


# ---------------------------------------------------------------------------- native augment


def shifted_versions(images: np.ndarray, pad: int) -> dict[bytes, tuple[int, int, int]]:
    """Every zero-filled translate by (dy, dx) in [-pad, pad]^2 of every image: bytes -> (index, dy, dx)."""
    n = len(images)
    padded = np.zeros((n, 32 + 2 * pad, 32 + 2 * pad, 3), np.uint8)
    padded[:, pad:pad + 32, pad:pad + 32] = images
    table = {}
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            window = padded[:, pad + dy:pad + dy + 32, pad + dx:pad + dx + 32]
            for i in range(n):
                table.setdefault(window[i].tobytes(), (i, dy, dx))
    return table


# ffcv: translate only, since numba needs ~10-30 s on 2 cores to compile its flip as well; the flip's
# place in ffcv's pipeline is checked without JIT below. DALI runs both.
@pytest.mark.parametrize("name, hflip", [("ffcv", 0.0), ("dali", 1.0)])
def test_native_augment_mirrors_and_translates_in_the_library(name, hflip, root, train_src):
    cfg = make_cfg(root, name, native_augment=True)
    cfg.augment.hflip, cfg.augment.crop_padding, cfg.augment.cutout = hflip, 2, 0.5
    loader = build_loader(cfg, "train", train=True, device="cpu")
    assert loader.native_ops == ({"hflip", "crop"} if hflip else {"crop"}) and not loader.per_image_ops_done
    rest = remaining_augment(cfg.augment, loader)
    assert (rest.hflip, rest.crop_padding, rest.cutout) == (0.0, 0, 0.5)  # cutout stays for GpuAugment
    stored = train_src.images[:, :, ::-1] if hflip else train_src.images
    table = shifted_versions(stored, pad=2)  # mirrored (p = 1), then translated
    images, labels = epoch(loader)
    found = [table.get(x.tobytes()) for x in np.concatenate(images)]
    assert None not in found, "an output is not a mirrored translate of a stored image"
    index = np.array([f[0] for f in found])
    np.testing.assert_array_equal(np.sort(index), np.arange(512))
    np.testing.assert_array_equal(np.concatenate(labels), train_src.labels[index])
    shifts = {(f[1], f[2]) for f in found}
    assert len(shifts) > 10  # many of the 25 offsets drawn

    evaluator = build_loader(cfg, "test", train=False, device="cpu")
    assert evaluator.native_ops == frozenset()  # never augments eval


def test_ffcv_native_pipeline_order():
    pytest.importorskip("ffcv", reason="ffcv is an optional extra")
    from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToDevice

    from fastcifar.loaders.ffcv_loader import _pipelines

    pipelines = _pipelines(torch.device("cpu"), "coarse_label", hflip=0.25, padding=3)
    image = pipelines["image"]
    assert isinstance(image[1], RandomHorizontalFlip) and image[1].flip_prob == 0.25
    assert isinstance(image[2], RandomTranslate) and image[2].padding == 3
    assert isinstance(image[-1], ToDevice) and pipelines["label"] is None and len(pipelines["coarse_label"]) == 4


def test_native_augment_refuses_one_of(root):
    cfg = make_cfg(root, "dali", native_augment=True)
    cfg.augment.one_of, cfg.augment.hflip = True, 0.5
    with pytest.raises(FastcifarError, match="one_of"):
        build_loader(cfg, "train", train=True, device="cpu")


# ---------------------------------------------------------------------------- dali specifics


def test_parse_ascii_labels():
    raw = torch.tensor([list(b"7\0\0\0"), list(b"42\0\0"), list(b"99\n\0"), list(b"0\0\0\0")], dtype=torch.uint8)
    assert parse_ascii_labels(raw).tolist() == [7, 42, 99, 0]


def test_dali_png_shards_decode_pixel_exact(prepared_root, test_src):
    root_png = prepared_root("cifar10", formats=("dali",), dali_encoding="png")
    cfg = make_cfg(root_png, "dali", dali_encoding="png")
    np.testing.assert_array_equal(order_of(build_loader(cfg, "test", train=False, device="cpu"), test_src),
                                  np.arange(256))


def test_dali_reads_many_tar_shards_in_the_contracts_order(synth_root, tmp_path):
    from fastcifar.data.prepare import prepare

    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    prepare("cifar10", root, formats=("npy", "dali"), progress=False, dali_shard_size=150)  # 4 train tars
    train_src, test_src = Source(root, "cifar10", "train"), Source(root, "cifar10", "test")
    cfg = make_cfg(root, "dali")
    np.testing.assert_array_equal(order_of(build_loader(cfg, "train", train=False, device="cpu"), train_src),
                                  np.arange(512))
    # 512 over 3 ranks: padded by wrapping to 3 x 171, 2 batches each, the same samples as the gpu loader.
    for name in ("dali", "gpu"):
        cfg.data.loader = name
        loaders = [build_loader(cfg, "train", train=True, device="cpu", rank=r, world_size=3) for r in range(3)]
        assert [len(loader) for loader in loaders] == [2, 2, 2]
        for r, loader in enumerate(loaders):
            loader.set_epoch(2)
            expected = sample_order(512, seed=3, epoch=2, rank=r, world_size=3, train=True, drop_last=False)
            np.testing.assert_array_equal(order_of(loader, train_src), expected.numpy())
    cfg.data.loader, cfg.data.eval_batch_size = "dali", 85
    loaders = [build_loader(cfg, "test", train=False, device="cpu", rank=r, world_size=3) for r in range(3)]
    assert [len(loader) for loader in loaders] == [2, 1, 1]  # 86, 85, 85 samples: strided, no padding
    for r, loader in enumerate(loaders):
        np.testing.assert_array_equal(order_of(loader, test_src), np.arange(r, 256, 3))


def batches_of(loader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.cpu().numpy().copy(), y.cpu().numpy().copy()) for x, y in loader]


@pytest.mark.parametrize("world_size, drop_last", [(1, False), (2, True)])
def test_dali_gives_the_gpu_loaders_batches_every_epoch_with_indices(world_size, drop_last, root):
    """Batch for batch, pixel for pixel, the same as the gpu loader, on every rank and epoch, with a subset."""
    indices = np.sort(np.random.default_rng(0).choice(512, size=300, replace=False))  # a val_split's train part
    for rank in range(world_size):
        loaders = {name: build_loader(make_cfg(root, name, drop_last=drop_last), "train", train=True, device="cpu",
                                      rank=rank, world_size=world_size, indices=indices) for name in ("gpu", "dali")}
        assert len(loaders["gpu"]) == len(loaders["dali"])
        for e in (0, 1, 2):
            got = {}
            for name, loader in loaders.items():
                loader.set_epoch(e)
                got[name] = batches_of(loader)
            assert len(got["dali"]) == len(got["gpu"]) == len(loaders["gpu"])
            for (x, y), (gx, gy) in zip(got["dali"], got["gpu"]):
                np.testing.assert_array_equal(x, gx)
                np.testing.assert_array_equal(y, gy)


def test_dali_pipeline_persists_and_an_epoch_starts_without_reading_a_shard(root, train_src):
    """No epoch-boundary stall, structurally: one pipeline for all epochs, and when the first batch of an
    epoch is out, DALI has been handed only the prefetch queue's batches, not the shard."""
    cfg = make_cfg(root, "dali", prefetch=2)
    loader = build_loader(cfg, "train", train=True, device="cpu")
    handed = []

    class CountingFeed(Feed):
        def __call__(self):
            batch = super().__call__()  # raises StopIteration at the end of an epoch
            handed.append(len(batch[1]))
            return batch

    loader._source = CountingFeed()  # before the first epoch: the pipeline is built with it
    for e in range(3):
        loader.set_epoch(e)
        handed.clear()
        batches = iter(loader)
        x, _ = next(batches)
        assert handed and handed[0] == B, handed  # the counting feed is the one DALI calls
        assert sum(handed) <= (cfg.data.prefetch + 1) * B < 512, handed  # the shard is 512 samples
        rest = order_of_batches([x] + [x for x, _ in batches], train_src)
        np.testing.assert_array_equal(rest, sample_order(512, seed=3, epoch=e, train=True, drop_last=False))
        assert loader.builds == 1  # the same pipeline: built once, reset between epochs


def order_of_batches(images: list[torch.Tensor], src: Source) -> np.ndarray:
    flat = np.concatenate([x.permute(0, 2, 3, 1).numpy() for x in images])
    return np.array([src.index[image.tobytes()] for image in flat])


def test_dali_epoch_stopped_early_leaves_the_next_epoch_whole(root, train_src):
    loader = build_loader(make_cfg(root, "dali", prefetch=3), "train", train=True, device="cpu")
    first = next(iter(loader))[0]  # the bench and early stopping abandon epochs like this
    np.testing.assert_array_equal(order_of_batches([first], train_src),
                                  sample_order(512, seed=3, epoch=0, train=True, drop_last=False)[:B])
    batches = iter(loader)
    next(batches)
    loader.set_epoch(1)
    np.testing.assert_array_equal(order_of(loader, train_src),  # a new iter() drains the unfinished one
                                  sample_order(512, seed=3, epoch=1, train=True, drop_last=False))
    assert loader.builds == 1


def test_dali_pipeline_is_freed_with_its_loader_even_mid_epoch(root):
    """No reference cycle: the pipeline stops when the loader goes, never later in a garbage collection that
    could run in a forked DataLoader worker, where DALI's shutdown would wait forever for its threads."""
    import weakref

    loader = build_loader(make_cfg(root, "dali"), "train", train=True, device="cpu")
    batches = iter(loader)
    next(batches)
    pipe = weakref.ref(loader._pipe)
    del batches, loader
    assert pipe() is None


def test_dali_native_augment_replays_any_epoch(root):
    """Flip flags and translate anchors come from (seed, epoch, rank): a resumed run sees the same images."""
    cfg = make_cfg(root, "dali", native_augment=True)
    cfg.augment.hflip, cfg.augment.crop_padding = 0.5, 3
    continued = build_loader(cfg, "train", train=True, device="cpu")
    batches_of(continued)
    continued.set_epoch(1)
    resumed = build_loader(cfg, "train", train=True, device="cpu")
    resumed.set_epoch(1)
    a, b = batches_of(continued), batches_of(resumed)
    assert len(a) == len(b) > 0
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    resumed.set_epoch(2)
    assert not all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, batches_of(resumed)))


# ---------------------------------------------------------------------------- worker counts


def test_worker_count_is_clamped_to_the_usable_cores_with_one_note(monkeypatch, capsys):
    from fastcifar.loaders import base

    monkeypatch.setattr(base.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(base, "_NOTED", set())
    cfg = Config()
    cfg.data.workers = 8
    assert [base.worker_count(cfg, "torch") for _ in range(2)] == [3, 3]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.workers is 8 but this process may use 3 CPU core(s)" in err  # once
    cfg.data.workers = 0  # each library's own meaning of 0, never clamped up
    assert [base.worker_count(cfg, name) for name in ("torch", "ffcv", "dali")] == [0, 0, 1]
    cfg.data.workers = 2
    assert base.worker_count(cfg, "ffcv") == 2 and capsys.readouterr().err == ""
    cfg.data.workers = -1
    with pytest.raises(FastcifarError, match="0 or more"):
        base.worker_count(cfg, "dali")


@pytest.mark.parametrize("name", ["ffcv", "dali", "torch"])
def test_more_workers_than_cores_runs_with_a_note(name, root, capfd, monkeypatch):
    """ffcv's numba used to die with `ValueError: The number of threads must be between 1 and N` here."""
    from fastcifar.loaders import base

    monkeypatch.setattr(base, "_NOTED", set())
    cores = base.usable_cores()
    loader = build_loader(make_cfg(root, name, workers=cores + 2), "test", train=False, device="cpu")
    assert f"note: data.workers is {cores + 2} but this process may use {cores} CPU core(s); the {name} loader uses " \
           f"{cores}." in capfd.readouterr().err
    if name != "ffcv":  # ffcv: building was what failed; iterating would add a numba compilation
        assert sum(len(y) for _, y in loader) == 256


# ---------------------------------------------------------------------------- registry and errors


def _choices(parser, *path: str, option: str) -> tuple:
    """The choices of `option` on the sub-command `path` of an argparse parser."""
    for name in path:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return tuple(next(a for a in parser._actions if option in a.option_strings or a.dest == option).choices)


def test_every_list_derives_from_its_one_source():
    """Loaders, AMP modes, datasets and DALI encodings are each listed once; config, CLI, bench and the
    README read them from there (this test fails if any list is written out by hand and drifts)."""
    from pathlib import Path

    from fastcifar.bench import cli as bench_cli
    from fastcifar.bench.suites import FORMATS, VARIANTS
    from fastcifar.cli import build_parser
    from fastcifar.data.cifar import DATASETS
    from fastcifar.data.manifest import DALI_ENCODINGS
    from fastcifar.data.manifest import FORMATS as PREPARED
    from fastcifar.engine.amp_modes import AMP_MODES
    from fastcifar.engine.precision import AMP_DTYPES

    parser = build_parser()
    assert CHOICES["data.loader"] == _choices(parser, "train", option="--loader") == tuple(LOADERS) == NAMES
    assert bench_cli.DEFAULT_LOADERS.split(",") == list(LOADERS)
    assert list(VARIANTS) == [*LOADERS, "ffcv-native", "dali-native"]  # -native: loaders whose spec has native_ops
    assert FORMATS == {name: spec.format for name, spec in LOADERS.items()} and set(FORMATS.values()) <= set(PREPARED)
    assert CHOICES["train.amp"] == tuple(AMP_MODES) == tuple(AMP_DTYPES) == ("bf16", "fp16", "none")
    assert AMP_DTYPES["bf16"] is torch.bfloat16 and AMP_DTYPES["none"] is None
    assert CHOICES["data.dataset"] == tuple(DATASETS) == _choices(parser, "data", "prepare", option="dataset")
    encodings = _choices(parser, "data", "prepare", option="--dali-encoding")
    assert CHOICES["data.dali_encoding"] == DALI_ENCODINGS == encodings

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("## Loaders"):].split("\n\n")[1].splitlines()[2:]  # rows after the header
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
    assert [row[0].split("`")[1] for row in rows] == list(LOADERS)
    for row, spec in zip(rows, LOADERS.values()):
        assert (f"fastcifar[{spec.extra}]" in row[3]) if spec.extra else row[3] == "none"


def test_the_config_reads_its_lists_without_importing_torch():
    import subprocess

    code = "import sys, fastcifar.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_a_loader_is_one_registry_entry(root, monkeypatch):
    """A new loader needs its module and its LoaderSpec, nothing else; its facts are enforced where they apply."""
    import types

    from fastcifar.loaders import LoaderSpec

    module = types.ModuleType("fake_loader")
    module.build = lambda cfg, split, **kw: ("built", split, kw["indices"])
    monkeypatch.setitem(sys.modules, "fake_loader", module)
    spec = LoaderSpec("fake", "fake_loader", "npy", None, None, frozenset(), takes_indices=False, description="test")
    monkeypatch.setitem(LOADERS, "fake", spec)
    cfg = make_cfg(root, "gpu")
    cfg.data.loader = "fake"
    assert build_loader(cfg, "test", train=False, device="cpu") == ("built", "test", None)
    with pytest.raises(FastcifarError, match="cannot hold out a val split; set data.val_split: 0 or use data.loader: "
                                             "gpu, torch, ffcv, dali"):
        build_loader(cfg, "train", train=True, device="cpu", indices=np.arange(10))


def test_unknown_loader_lists_the_valid_names(root):
    cfg = make_cfg(root, "gpu")
    cfg.data.loader = "tensorflow"
    with pytest.raises(FastcifarError, match="Unknown loader 'tensorflow'; choose one of gpu, torch, ffcv, dali"):
        build_loader(cfg, "train", train=True, device="cpu")


@pytest.mark.parametrize("name, module", [("ffcv", "ffcv"), ("dali", "nvidia.dali")])
def test_missing_library_names_the_pip_extra(name, module, root, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(FastcifarError, match=rf"pip install 'fastcifar\[{name}\]'"):
        build_loader(make_cfg(root, name), "train", train=True, device="cpu")


def test_missing_prepared_format_names_the_prepare_command(synth_root, tmp_path):
    from fastcifar.data.prepare import prepare

    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    prepare("cifar10", root, formats=("npy",), progress=False)
    assert len(build_loader(make_cfg(root, "gpu"), "test", train=False, device="cpu")) == 3
    with pytest.raises(FastcifarError, match="fastcifar data prepare cifar10 .*--formats ffcv"):
        build_loader(make_cfg(root, "ffcv"), "train", train=True, device="cpu")
    with pytest.raises(FastcifarError, match="--dali-encoding png"):
        build_loader(make_cfg(root, "dali", dali_encoding="png"), "train", train=True, device="cpu")


def test_loader_flag_is_just_the_config_field(root):
    from fastcifar.loaders.gpu import GpuLoader
    from fastcifar.loaders.torch_loader import TorchLoader

    data = {"data": {"root": str(root), "dataset": "cifar10", "workers": 0, "batch_size": 64}}
    for flag, cls in (("torch", TorchLoader), ("gpu", GpuLoader)):
        cfg = from_dict(apply_overrides(data, [f"data.loader={flag}"]))  # what `--loader FLAG` does
        loader = build_loader(cfg, "train", train=True, device="cpu")
        assert isinstance(loader, cls) and len(loader) == 512 // 64


def test_bad_indices_and_rank_are_refused(root):
    cfg = make_cfg(root, "gpu")
    with pytest.raises(FastcifarError, match="keep them in"):
        build_loader(cfg, "train", train=True, device="cpu", indices=np.array([0, 512]))
    with pytest.raises(FastcifarError, match="rank 2"):
        build_loader(cfg, "train", train=True, device="cpu", rank=2, world_size=2)


# ---------------------------------------------------------------------------- on a GPU


@cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_epoch_is_the_split_on_the_device(name, root, train_src):
    loader = build_loader(make_cfg(root, name), "train", train=True, device="cuda:0")
    order = order_of(loader, train_src, device="cuda:0")
    np.testing.assert_array_equal(np.sort(order), np.arange(512))


@cuda
def test_cuda_dali_mixed_decoder_is_pixel_exact_on_png(prepared_root, test_src):
    root_png = prepared_root("cifar10", formats=("dali",), dali_encoding="png")
    loader = build_loader(make_cfg(root_png, "dali", dali_encoding="png"), "test", train=False, device="cuda:0")
    np.testing.assert_array_equal(order_of(loader, test_src, device="cuda:0"), np.arange(256))


@cuda
def test_cuda_native_augment_in_dali(root, train_src):
    cfg = make_cfg(root, "dali", native_augment=True)
    cfg.augment.hflip, cfg.augment.crop_padding = 1.0, 2
    table = shifted_versions(train_src.images[:, :, ::-1], pad=2)
    images, _ = epoch(build_loader(cfg, "train", train=True, device="cuda:0"), device="cuda:0")
    assert all(x.tobytes() in table for x in np.concatenate(images))


def test_torch_augmentation_depends_on_seed_epoch_index_only(root):
    """The baseline's per-sample draws replay exactly on resume: epoch 1 of a loader that ran epoch 0 with
    persistent workers equals epoch 1 of a fresh loader, and equals the same epoch loaded in-process."""
    def augmented(workers: int, epochs: list[int]) -> list[np.ndarray]:
        cfg = make_cfg(root, "torch", workers=workers)
        cfg.augment.crop_padding, cfg.augment.hflip = 4, 0.5
        loader = build_loader(cfg, "train", train=True, device="cpu")
        out = []
        for e in epochs:
            loader.set_epoch(e)
            out = [x.numpy() for x, _ in loader]
        return out

    continued = augmented(workers=2, epochs=[0, 1])
    resumed = augmented(workers=2, epochs=[1])
    in_process = augmented(workers=0, epochs=[1])
    assert all(np.array_equal(a, b) for a, b in zip(continued, resumed))
    assert all(np.array_equal(a, b) for a, b in zip(continued, in_process))
    assert not all(np.array_equal(a, b) for a, b in zip(continued, augmented(workers=0, epochs=[0])))


def test_a_run_that_stops_ffcv_mid_epoch_and_exits_at_once_exits_cleanly(root):
    # ffcv's epoch thread, told to stop while its queue is full, used to still be freeing its tensors when the
    # interpreter exited: the process aborted in torch's C++ dealloc (exit 134) after writing its results. DALI
    # first shortens the time from ffcv's last batch to the exit enough to hit that every time on this machine.
    pytest.importorskip("ffcv", reason="ffcv is an optional extra")
    pytest.importorskip("nvidia.dali", reason="DALI is an optional extra")
    done = subprocess.run(
        [sys.executable, "-m", "fastcifar", "bench", "--root", str(root), "--dataset", "cifar10", "--device", "cpu",
         "--views", "loader", "--loaders", "dali,ffcv", "--image-sizes", "32", "--batch-size", "16", "--iters", "2",
         "--warmup", "1", "--workers", "1", "--min-seconds", "0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
