"""CUDA-only checks of the paths CPU tests cannot reach: device-side augment on a GPU, and a compiled bf16
run. Skipped with a reason on CPU-only machines; `scripts/gpu_session.sh tests` runs them on a lent GPU."""

from __future__ import annotations

import pytest
import torch
from tiny_run import run_tiny

from fastcifar.augment import GpuAugment
from fastcifar.config import AugmentConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


@pytest.mark.parametrize("size", [32, 224])
def test_cuda_eval_batch_matches_the_cpu_path(size):
    """CUDA normalizes then resizes in float, the CPU resizes uint8 then normalizes: same values up to the
    CPU's rounding to whole grey levels (1 level / std ~ 0.016)."""
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = GpuAugment(AugmentConfig(image_size=size), MEAN, STD, num_classes=10)
    cpu = augment.eval_batch(images)
    gpu = augment.eval_batch(images.cuda())
    assert gpu.device.type == "cuda" and gpu.is_contiguous(memory_format=torch.channels_last)
    assert (gpu.cpu() - cpu).abs().max() < 0.05


def test_cuda_train_batch_keeps_everything_on_the_device_in_bf16():
    cfg = AugmentConfig(image_size=224, crop_padding=4, hflip=0.5, cutout=0.5, jitter=0.5, ssr=0.3,
                        mixup_alpha=0.2, cutmix_alpha=1.0)
    augment = GpuAugment(cfg, MEAN, STD, num_classes=10, out_dtype=torch.bfloat16)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (32,), device="cuda")
    x, targets = augment.train_batch(images, labels)
    assert x.shape == (32, 3, 224, 224) and x.dtype == torch.bfloat16 and x.device.type == "cuda"
    assert targets.device.type == "cuda" and torch.allclose(targets.sum(1), torch.ones(32, device="cuda"))


def test_cuda_compiled_bf16_run_learns(prepared_root, tmp_path):
    root = prepared_root("cifar10", ("npy",))
    run, records, summary = run_tiny(
        root, tmp_path, train={"epochs": 3, "device": "cuda", "amp": "bf16", "compile": True}
    )
    assert summary["compile_s"] > 0 and summary["device"].startswith("cuda")
    assert records[-1]["test_acc"] >= 0.8, records
