"""Per-image CPU transforms for the `torch` DataLoader baseline: the GpuAugment policy, one image at a time.

This is what users run today (torchvision transforms in DataLoader workers), kept honest: the same
ops and probabilities as `GpuAugment`, on uint8 tensors so torchvision takes its fast uint8 resize.
Normalization and mixup/cutmix are not here: they stay batched on the device
(`GpuAugment(..., per_image_ops=False)`).

Auto-augment policies run torchvision's own RandAugment / TrivialAugmentWide / AutoAugment(CIFAR10) per
image with the same N and M (GpuAugment reproduces their ops by value, policy_ops.py); RandomResizedCrop
replaces the final Resize, as on the device; alternating flips call the same pixel hash
(alternate_flip.py), given the epoch by the torch loader.

Known differences from GpuAugment: ColorJitter applies its four steps in a random order per image
(GpuAugment: fixed order), and RandomAffine fills uncovered pixels with zeros (GpuAugment reflects
when pad_mode is reflect).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from fastcifar.alternate_flip import alternate_flips
from fastcifar.config import STORED_SIDE, AugmentConfig
from fastcifar.policy import RANDAUGMENT_BINS, _interpolate, magnitude_table


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


class NoisyRandAugment(v2.RandAugment):
    """torchvision's RandAugment with timm's magnitude noise: each op draws its bin from N(M, std) clipped to
    [0, 30] (std = inf: uniform in [0, M]), interpolated between torchvision's bins as GpuAugment does."""

    def __init__(self, num_ops: int, magnitude: int, magnitude_std: float):
        super().__init__(num_ops=num_ops, magnitude=magnitude)
        self.magnitude_std = magnitude_std
        self._names = list(self._AUGMENTATION_SPACE)

    def forward(self, img: Tensor) -> Tensor:
        from fastcifar.policy_ops import OP_ID

        height, width = img.shape[-2:]
        table, signed = magnitude_table(self._AUGMENTATION_SPACE, RANDAUGMENT_BINS, height, width)
        for _ in range(self.num_ops):
            name = self._names[int(torch.randint(len(self._names), ()))]
            if self.magnitude_std == float("inf"):
                m = float(torch.rand(())) * self.magnitude
            else:
                m = min(max(self.magnitude + self.magnitude_std * float(torch.randn(())), 0.0), RANDAUGMENT_BINS - 1.0)
            op = torch.tensor([OP_ID[name]])
            magnitude = float(_interpolate(table, op, torch.tensor([m], dtype=torch.float64))[0])
            if signed[OP_ID[name]] and torch.rand(()) <= 0.5:
                magnitude = -magnitude
            img = self._apply_image_or_video_transform(img, name, magnitude, interpolation=self.interpolation,
                                                       fill=self._fill)
        return img


class CpuTransform:
    """Picklable per-sample transform: uint8 [3, 32, 32] tensor -> uint8 [3, S, S] tensor (S = cfg.image_size).

    Train: RandomCrop(padding) -> flips (random, or alternating from the pixels and the epoch) ->
    auto-augment policy -> ssr / jitter (or RandomChoice of them when one_of) -> cutout ->
    Resize(antialias) or RandomResizedCrop. Eval: Resize only. The output is in HWC memory (see HwcMemory).

    Args:
        cfg: the augment section. train: training or evaluation pipeline.
        seed: train.seed, for alternating flips (the torch loader calls `set_epoch` before each image).
    """

    takes_epoch = True  # the torch loader tells it the epoch of each sample (alternating flips)

    def __init__(self, cfg: AugmentConfig, train: bool, seed: int = 0):
        self.image_size, self.seed, self.epoch = cfg.image_size, seed, 0
        self.alternate = train and cfg.hflip_mode == "alternate"
        head, tail = _train_steps(cfg) if train else ([], [])
        tail.append(HwcMemory())  # the resize below then skips two transposes
        if train and cfg.rrc_scale:
            tail.append(v2.RandomResizedCrop([cfg.image_size] * 2, scale=tuple(cfg.rrc_scale),
                                             ratio=tuple(cfg.rrc_ratio), interpolation=InterpolationMode.BILINEAR,
                                             antialias=False))
        elif cfg.image_size != STORED_SIDE:  # a resize to the stored side is the identity: skip its cost
            tail.append(v2.Resize([cfg.image_size] * 2, interpolation=InterpolationMode.BILINEAR, antialias=True))
        self.head, self.pipeline = v2.Compose(head or [v2.Identity()]), v2.Compose(tail)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, img: Tensor) -> Tensor:
        flip = self.alternate and bool(alternate_flips(img[None], self.seed, self.epoch)[0])  # from the stored pixels
        img = self.head(img)
        return self.pipeline(img.flip(-1) if flip else img)

    def __repr__(self) -> str:
        return f"CpuTransform({self.pipeline})"


def cpu_transform(cfg: AugmentConfig, train: bool, seed: int = 0) -> CpuTransform:
    """The per-image CPU transform for the torch baseline loader (see `CpuTransform`)."""
    return CpuTransform(cfg, train, seed)


def _policy(cfg: AugmentConfig):
    if cfg.policy == "randaugment" and cfg.policy_magnitude_std > 0:
        return NoisyRandAugment(cfg.policy_ops, cfg.policy_magnitude, cfg.policy_magnitude_std)
    return {
        "randaugment": lambda: v2.RandAugment(num_ops=cfg.policy_ops, magnitude=cfg.policy_magnitude),
        "trivialaugment": v2.TrivialAugmentWide,
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
    }[cfg.policy]()


def _train_steps(cfg: AugmentConfig) -> tuple[list, list]:
    """(steps up to the crop, steps after the flips): alternating flips go in between."""
    head: list = []
    if cfg.crop_padding:
        head.append(v2.RandomCrop(32, padding=cfg.crop_padding, padding_mode=cfg.pad_mode))
    steps: list = []
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
    probs = {name: getattr(cfg, name) for name in ("ssr", "cutout", "jitter", "hflip", "vflip")
             if getattr(cfg, name) > 0}
    if cfg.hflip_mode == "alternate":
        probs.pop("hflip", None)  # CpuTransform mirrors from the pixel hash instead
    if cfg.one_of and probs:
        if cfg.policy != "none":  # before the choice: flips commute with the policy in distribution
            steps.append(_policy(cfg))
        steps.append(v2.RandomChoice([ops[n] for n in probs], p=list(probs.values())))
        return head, steps
    for name in ("hflip", "vflip", "policy", "ssr", "jitter", "cutout"):  # GpuAugment's order
        if name == "policy" and cfg.policy != "none":
            steps.append(_policy(cfg))
        elif name in probs:
            steps.append(ops[name] if probs[name] >= 1.0 else v2.RandomApply([ops[name]], p=probs[name]))
    return head, steps
