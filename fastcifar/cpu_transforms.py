"""Per-image CPU transforms for the `torch` DataLoader baseline: the GpuAugment policy, one image at a time.

This is what users run today (torchvision transforms in DataLoader workers), kept honest: the same
ops and probabilities as `GpuAugment`, on uint8 tensors so torchvision takes its fast uint8 resize.
Normalization and mixup/cutmix are not here: they stay batched on the device
(`GpuAugment(..., per_image_ops=False)`).

Known differences from GpuAugment: ColorJitter applies its four steps in a random order per image
(GpuAugment: fixed order), and RandomAffine fills uncovered pixels with zeros (GpuAugment reflects
when pad_mode is reflect).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from fastcifar.config import AugmentConfig


class Cutout(nn.Module):
    """Zero one size x size square centred on a uniform pixel, clipped at the borders, with probability p.

    Args:
        size: side of the square, px. p: probability per image.
    """

    def __init__(self, size: int, p: float = 1.0):
        super().__init__()
        self.size, self.p = size, p

    def forward(self, img: Tensor) -> Tensor:
        """uint8 [C, H, W] -> uint8 [C, H, W] (a new tensor when a hole is cut)."""
        if self.p < 1.0 and torch.rand(()) >= self.p:
            return img
        H, W = img.shape[-2:]
        cy, cx = int(torch.randint(0, H, ())), int(torch.randint(0, W, ()))
        y0, x0 = max(cy - self.size // 2, 0), max(cx - self.size // 2, 0)
        y1, x1 = min(cy - self.size // 2 + self.size, H), min(cx - self.size // 2 + self.size, W)
        out = img.clone()
        out[..., y0:y1, x0:x1] = 0
        return out


class HwcMemory(nn.Module):
    """The same pixels in HWC memory: uint8 [3, H, W] with strides (1, 3W, 3).

    torch's uint8 antialiased resize works in channels-last; given CHW memory it transposes the input in and
    the 3 x S x S output back out. Given HWC memory (a 3 KB copy at 32 px) it does neither, about 4x faster at
    224 px, and the loader's NHWC batch becomes a plain copy of each image.
    """

    def forward(self, img: Tensor) -> Tensor:
        return img.permute(1, 2, 0).contiguous().permute(2, 0, 1)


class CpuTransform:
    """Picklable per-sample transform: uint8 [3, 32, 32] tensor -> uint8 [3, S, S] tensor (S = cfg.image_size).

    Train: RandomCrop(padding) -> flips / ssr / jitter (or RandomChoice of them when one_of) ->
    cutout -> Resize(antialias). Eval: Resize only. The output is in HWC memory (see HwcMemory).
    """

    def __init__(self, cfg: AugmentConfig, train: bool):
        self.image_size = cfg.image_size
        steps: list = _train_steps(cfg) if train else []
        steps.append(HwcMemory())
        steps.append(v2.Resize([cfg.image_size, cfg.image_size], interpolation=InterpolationMode.BILINEAR, antialias=True))
        self.pipeline = v2.Compose(steps)

    def __call__(self, img: Tensor) -> Tensor:
        return self.pipeline(img)

    def __repr__(self) -> str:
        return f"CpuTransform({self.pipeline})"


def cpu_transform(cfg: AugmentConfig, train: bool) -> CpuTransform:
    """The per-image CPU transform for the torch baseline loader (see `CpuTransform`)."""
    return CpuTransform(cfg, train)


def _train_steps(cfg: AugmentConfig) -> list:
    steps: list = []
    if cfg.crop_padding:
        steps.append(v2.RandomCrop(32, padding=cfg.crop_padding, padding_mode=cfg.pad_mode))
    ops = {  # each op applied unconditionally; its probability is handled below
        "ssr": v2.RandomAffine(
            degrees=cfg.rotate_limit,
            translate=(cfg.shift_limit, cfg.shift_limit),
            scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
            interpolation=InterpolationMode.BILINEAR,
        ),
        "jitter": v2.ColorJitter(
            brightness=cfg.brightness or None,
            contrast=cfg.contrast or None,
            saturation=cfg.saturation or None,
            hue=cfg.hue or None,
        ),
        "hflip": v2.RandomHorizontalFlip(p=1.0),
        "vflip": v2.RandomVerticalFlip(p=1.0),
        "cutout": Cutout(cfg.cutout_size, p=1.0),
    }
    probs = {name: getattr(cfg, name) for name in ("ssr", "cutout", "jitter", "hflip", "vflip") if getattr(cfg, name) > 0}
    if cfg.one_of and probs:
        steps.append(v2.RandomChoice([ops[n] for n in probs], p=list(probs.values())))
        return steps
    for name in ("hflip", "vflip", "ssr", "jitter", "cutout"):  # GpuAugment's order: flips, ssr, jitter, cutout
        if name in probs:
            steps.append(ops[name] if probs[name] >= 1.0 else v2.RandomApply([ops[name]], p=probs[name]))
    return steps
