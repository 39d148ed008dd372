"""Auto-augment policies drawn per image on the device: RandAugment, TrivialAugment (Wide), AutoAugment (CIFAR-10).

A policy turns a batch size into per-image draws, `ops` int64 [S, B] (indices into `policy_ops.OPS`) and
`magnitudes` float64 [S, B] (signed, torchvision's units), for S slots applied in order by
`policy_ops.apply_op`. Everything is drawn with tensor ops on the batch's device from its global RNG: no
Python branch looks at a drawn value, so a step never waits for the device.

The op tables, magnitude bins and the AutoAugment CIFAR-10 sub-policies are read from torchvision's own
classes (`_AUGMENTATION_SPACE`, `_policies`), so they cannot drift from the CPU baseline that runs those
classes per image (cpu_transforms.py). How each policy draws, as torchvision does per image:

    randaugment     N slots; each picks one of the 14 ops uniformly; magnitude bin M of 31
                    (+ timm's Gaussian noise of std policy_magnitude_std per op, clipped to [0, 30],
                    bins between integers interpolated linearly; inf = uniform in [0, M])
    trivialaugment  1 slot; one of the 14 ops uniformly; a bin uniform over the 31 of TrivialAugmentWide
    autoaugment     2 slots from one of the 25 CIFAR-10 sub-policies, picked uniformly; each op runs with
                    its probability (else identity), at its bin of 10

Signed ops (shear, translate, rotate, brightness, color, contrast, sharpness) are negated with
probability 1/2, independently per image and slot.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms import v2

from fastcifar.policy_ops import OP_ID, OPS, apply_op

POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment")
RANDAUGMENT_BINS = 31  # torchvision's num_magnitude_bins default, for RandAugment and TrivialAugmentWide
AUTOAUGMENT_BINS = 10  # AutoAugment evaluates its magnitude functions with 10 bins


def magnitude_table(space: dict, num_bins: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """One of torchvision's augmentation spaces as tables over all OPS.

    Args:
        space: a torchvision `_AUGMENTATION_SPACE` ({name: (magnitudes_fn, signed)}).
        num_bins: bins the magnitude functions are evaluated with.
        height, width: the image side the translate ranges scale with, px.

    Returns:
        (magnitudes float64 [len(OPS), num_bins], 0 for ops without a magnitude or outside the space;
        signed bool [len(OPS)]).
    """
    table = torch.zeros(len(OPS), num_bins, dtype=torch.float64)
    signed = torch.zeros(len(OPS), dtype=torch.bool)
    for name, (magnitudes_fn, is_signed) in space.items():
        values = magnitudes_fn(num_bins, height, width)
        if values is not None:
            table[OP_ID[name]] = values.double()  # float32 / int32 values, exact in float64
        signed[OP_ID[name]] = is_signed
    return table, signed


def autoaugment_cifar10() -> tuple[Tensor, Tensor, Tensor]:
    """The 25 CIFAR-10 sub-policies: (ops int64 [25, 2], probabilities float64 [25, 2], bins int64 [25, 2])."""
    policies = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies
    ops = torch.tensor([[OP_ID[name] for name, _, _ in sub] for sub in policies])
    probs = torch.tensor([[p for _, p, _ in sub] for sub in policies], dtype=torch.float64)
    bins = torch.tensor([[b or 0 for _, _, b in sub] for sub in policies])
    return ops, probs, bins


class Policy:
    """Per-image draws of one auto-augment policy, and their application to a uint8 batch.

    Args:
        name: randaugment | trivialaugment | autoaugment.
        num_ops: randaugment's N (slots per image).
        magnitude: randaugment's M, a bin of 31 (0..30).
        magnitude_std: randaugment: std of timm's Gaussian noise on M per op, in bins; 0 = fixed M,
            inf = uniform in [0, M].
    """

    def __init__(self, name: str, num_ops: int = 2, magnitude: int = 9, magnitude_std: float = 0.0):
        if name not in POLICIES[1:]:
            raise ValueError(f"unknown policy {name!r}; one of {POLICIES[1:]}")
        self.name, self.num_ops, self.magnitude, self.magnitude_std = name, num_ops, magnitude, magnitude_std
        self._tables: dict[tuple, tuple[Tensor, ...]] = {}

    @property
    def slots(self) -> int:
        """Ops applied in sequence per image (S)."""
        return {"randaugment": self.num_ops, "trivialaugment": 1, "autoaugment": 2}[self.name]

    def _device_tables(self, device: torch.device, height: int, width: int) -> tuple[Tensor, ...]:
        key = (device, height, width)
        if key not in self._tables:
            if self.name == "autoaugment":
                table, signed = magnitude_table(v2.AutoAugment._AUGMENTATION_SPACE, AUTOAUGMENT_BINS, height, width)
                tensors = (table, signed, *autoaugment_cifar10())
            else:
                space = (v2.RandAugment if self.name == "randaugment" else v2.TrivialAugmentWide)._AUGMENTATION_SPACE
                tensors = magnitude_table(space, RANDAUGMENT_BINS, height, width)
            self._tables[key] = tuple(t.to(device) for t in tensors)
        return self._tables[key]

    def sample(self, batch: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Draw every image's ops and signed magnitudes: (ops int64 [S, B], magnitudes float64 [S, B])."""
        tables = self._device_tables(torch.device(device), height, width)
        table, signed = tables[:2]
        shape = (self.slots, batch)
        if self.name == "autoaugment":
            sub_ops, probs, sub_bins = tables[2:]
            pick = torch.randint(0, sub_ops.shape[0], (batch,), device=device)  # [B] sub-policy per image
            ops, bins = sub_ops[pick].T, sub_bins[pick].T  # [2, B]
            fires = torch.rand(shape, device=device, dtype=torch.float64) <= probs[pick].T  # torchvision's rand() <= p
            ops = torch.where(fires, ops, OP_ID["Identity"])
            magnitudes = table[ops, bins]
        else:
            ops = torch.randint(0, len(OPS) - 1, shape, device=device)  # the 14 ops, Invert excluded
            if self.name == "trivialaugment":
                magnitudes = table[ops, torch.randint(0, RANDAUGMENT_BINS, shape, device=device)]
            else:
                magnitudes = _interpolate(table, ops, self._bins(shape, device))
        negate = signed[ops] & (torch.rand(shape, device=device) <= 0.5)
        return ops, torch.where(negate, -magnitudes, magnitudes)

    def _bins(self, shape: tuple[int, int], device: torch.device) -> Tensor:
        """RandAugment's magnitude bin per slot and image, float64 [S, B] in [0, 30]."""
        m = torch.full(shape, float(self.magnitude), dtype=torch.float64, device=device)
        if math.isinf(self.magnitude_std):  # timm: uniform in [0, M]
            return m * torch.rand(shape, dtype=torch.float64, device=device)
        if self.magnitude_std > 0:
            m = m + self.magnitude_std * torch.randn(shape, dtype=torch.float64, device=device)
        return m.clamp(0, RANDAUGMENT_BINS - 1)

    def apply(self, x: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
        """Run the S slots in order. x: uint8 [B, 3, H, W] -> uint8 [B, 3, H, W] NCHW."""
        for slot in range(ops.shape[0]):
            x = apply_op(x, ops[slot], magnitudes[slot])
        return x

    def __call__(self, x: Tensor) -> Tensor:
        """Draw and apply: uint8 [B, 3, H, W] -> uint8 [B, 3, H, W] NCHW."""
        ops, magnitudes = self.sample(x.shape[0], x.shape[-2], x.shape[-1], x.device)
        return self.apply(x, ops, magnitudes)


def _interpolate(table: Tensor, ops: Tensor, bins: Tensor) -> Tensor:
    """table[ops, bins] for fractional bins: linear between the two neighbouring bins, exact at integers."""
    low = bins.floor().long().clamp(max=table.shape[1] - 1)
    high = (low + 1).clamp(max=table.shape[1] - 1)
    frac = bins - low
    return table[ops, low] + frac * (table[ops, high] - table[ops, low])
