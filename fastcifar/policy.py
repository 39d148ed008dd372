"""Auto-augment policies drawn per image on the device: RandAugment, TrivialAugment (Wide), AutoAugment (CIFAR-10).

A policy turns a batch size into per-image draws, `ops` int64 [S, B] (indices into `policy_ops.OPS`) and
`magnitudes` float64 [S, B] (signed, torchvision's units), for S slots applied in order, and the `order`
that groups them. Everything is drawn with tensor ops on the batch's device from its global RNG (so a
resumed run that restores the RNG replays it): no Python branch looks at a drawn value and no shape depends
on one, so a step never waits for the device.

Stratified draws. The op of each image (AutoAugment: its sub-policy) is drawn per slot as its position in
a uniform random permutation of P = K * G positions, G = ceil(B / K), K = 14 ops (25 sub-policies);
positions j*G .. j*G + G - 1 run op (sub-policy) j and the P - B positions no image takes are padding.
Each image is therefore marginally uniform over the K, exactly as torchvision draws it, and its magnitude
and sign are its own; only the joint counts are fixed instead of binomial: every op owns exactly G
positions of each batch (G images when K divides B, else G less the padding that lands in its share).
That makes each op's share of the batch a static shape: `apply` gathers the images of each family of ops
(`policy_ops.FAMILIES`: geometric, blends, tables) and runs only that family's
kernels on them, each op's on its own rows, without reading the draw on the host (`policy_ops.apply_op`,
used without an order, e.g. for a hand-made `ops`, sorts on the host instead). AutoAugment's per-op
probability stays an independent coin per image (a failed coin is Identity, which every family passes
through unchanged).

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

from fastcifar.policy_ops import FAMILY, OP_ID, OPS, apply_family, apply_op, grid_coefficients, segments_of

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
        self._tables: dict[tuple, tuple[Tensor, ...]] = {}  # (device, height, width) -> op tables on it
        self._layouts: dict[tuple, tuple[Tensor, list]] = {}  # (slot, G, device) -> `_groups`

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

    @property
    def strata(self) -> int:
        """K: what a batch is stratified over, the 14 ops (RandAugment, TrivialAugment) or the 25 sub-policies."""
        return 25 if self.name == "autoaugment" else len(OPS) - 1

    def sample(self, batch: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Draw every image's ops and signed magnitudes, stratified (see the module docstring).

        Returns:
            ops int64 [S, B]; magnitudes float64 [S, B]; order int64 [S, K*G], G = ceil(B / K): the image at
            each position of a random permutation of K*G slots (values >= B are padding), position j
            running op (sub-policy) j // G. `apply` runs each family of ops on its own positions only, so it
            needs the ops and the order of the same draw.
        """
        tables = self._device_tables(torch.device(device), height, width)
        table, signed = tables[:2]
        shape = (self.slots, batch)
        group = -(-batch // self.strata)  # G
        rows = 1 if self.name == "autoaugment" else self.slots  # AutoAugment's two slots share the sub-policy
        # float64 keys: a tie (which would bias the permutation) has probability ~ P^2 / 2^54
        order = torch.rand(rows, self.strata * group, dtype=torch.float64, device=device).argsort(dim=1)
        slots = torch.arange(order.shape[1], device=device).expand_as(order)
        position = torch.empty_like(order).scatter_(1, order, slots)  # position[s, i]: where image i sits
        stratum = position[:, :batch] // group  # [rows, B]: each image's op (sub-policy), uniform over K
        if self.name == "autoaugment":
            sub_ops, probs, sub_bins = tables[2:]
            pick = stratum[0]  # [B] sub-policy per image
            ops, bins = sub_ops[pick].T, sub_bins[pick].T  # [2, B]
            fires = torch.rand(shape, device=device, dtype=torch.float64) <= probs[pick].T  # torchvision's rand() <= p
            ops = torch.where(fires, ops, OP_ID["Identity"])
            magnitudes = table[ops, bins]
            order = order.expand(self.slots, -1)
        else:
            ops = stratum  # the 14 ops are OPS[0:14], Invert excluded
            if self.name == "trivialaugment":
                magnitudes = table[ops, torch.randint(0, RANDAUGMENT_BINS, shape, device=device)]
            else:
                magnitudes = _interpolate(table, ops, self._bins(shape, device))
        negate = signed[ops] & (torch.rand(shape, device=device) <= 0.5)
        return ops, torch.where(negate, -magnitudes, magnitudes), order

    def _bins(self, shape: tuple[int, int], device: torch.device) -> Tensor:
        """RandAugment's magnitude bin per slot and image, float64 [S, B] in [0, 30]."""
        m = torch.full(shape, float(self.magnitude), dtype=torch.float64, device=device)
        if math.isinf(self.magnitude_std):  # timm: uniform in [0, M]
            return m * torch.rand(shape, dtype=torch.float64, device=device)
        if self.magnitude_std > 0:
            m = m + self.magnitude_std * torch.randn(shape, dtype=torch.float64, device=device)
        return m.clamp(0, RANDAUGMENT_BINS - 1)

    def apply(self, x: Tensor, ops: Tensor, magnitudes: Tensor, order: Tensor | None = None) -> Tensor:
        """Run the S slots in order. x: uint8 [B, 3, H, W] -> uint8 [B, 3, H, W] NCHW.

        With `order` (from the same `sample`), each family of ops runs on its own images only
        (`policy_ops.apply_family`); without it, every slot is `policy_ops.apply_op` (any ops, the same
        values, but it reads the ops on the host: a sync per slot).
        """
        if order is None:
            for slot in range(ops.shape[0]):
                x = apply_op(x, ops[slot], magnitudes[slot])
            return x
        B, P = x.shape[0], order.shape[1]
        xp = x.contiguous()  # NCHW (crop/flip gives it already)
        ops = torch.cat([ops, ops.new_full((ops.shape[0], P - B), OP_ID["Identity"])], dim=1)
        magnitudes = torch.cat([magnitudes.double(), magnitudes.new_zeros(ops.shape[0], P - B).double()], dim=1)
        geometry = grid_coefficients(ops.flatten(), magnitudes.flatten(), *x.shape[-2:]).view(*ops.shape, 6)
        where = None  # row of each image in the previous slot's output y (None: xp, in image order)
        for slot in range(ops.shape[0]):
            positions, groups = self._groups(slot, P // self.strata, x.device)
            index = order[slot][positions]  # [P] the images, grouped by family
            # ... and where to read them; the P - B padding positions (images >= B) read image B - 1: they run
            # Identity and their rows are never read back
            rows = index.clamp(max=B - 1) if where is None else where[index]
            xs, op, magnitude = xp.index_select(0, rows), ops[slot][index], magnitudes[slot][index]
            coefficients = geometry[slot][index]
            y = torch.empty_like(xs)
            for family, a, b, segments in groups:
                apply_family(xs[a:b], family, op[a:b], magnitude[a:b], segments, coefficients[a:b], out=y[a:b])
            # image i is row where[i] of y (an index_select is far cheaper than an index_copy_ back)
            where = torch.empty_like(index).scatter_(0, index, torch.arange(P, device=x.device))
            xp = y
        return xp.index_select(0, where[:B])

    def _groups(self, slot: int, group: int, device: torch.device) -> tuple[Tensor, list[tuple]]:
        """The positions of `slot` sorted by family of ops (policy_ops.FAMILIES), and by op within a family.

        Positions j*G .. j*G + G - 1 belong to stratum j (an op, or an AutoAugment sub-policy: its op in this
        slot); the strata whose ops share a family run as one group of a size fixed by the batch size, and
        within it each op's rows are known too (every image there runs that op, or Identity).

        Returns:
            (positions int64 [K*G], made with arange on the device: no host-to-device copy; groups
            [(family, start, stop, segments)]: positions[start:stop] run `family`, and segments
            ((op name, start, stop), ...) say which op each of those rows runs, counted from the group's
            start), cached per (slot, G, device).
        """
        key = (slot, group, device)
        if key not in self._layouts:
            if self.name == "autoaugment":
                names = [OPS[int(op)] for op in autoaugment_cifar10()[0][:, slot]]  # per sub-policy
            else:
                names = list(OPS[: self.strata])
            ranges, groups, start = [], [], 0
            for family in dict.fromkeys(FAMILY[name] for name in names):  # distinct, in order of first use
                strata = sorted((j for j, name in enumerate(names) if FAMILY[name] == family),
                                key=lambda j: family.index(names[j]))  # one op's strata together, in family order
                ranges += [torch.arange(j * group, (j + 1) * group, device=device) for j in strata]
                segments = segments_of([names[j] for j in strata for _ in range(group)])
                groups.append((family, start, start + segments[-1][2], segments))
                start += segments[-1][2]
            self._layouts[key] = (torch.cat(ranges), groups)
        return self._layouts[key]

    def __call__(self, x: Tensor) -> Tensor:
        """Draw and apply: uint8 [B, 3, H, W] -> uint8 [B, 3, H, W] NCHW."""
        return self.apply(x, *self.sample(x.shape[0], x.shape[-2], x.shape[-1], x.device))


def _interpolate(table: Tensor, ops: Tensor, bins: Tensor) -> Tensor:
    """table[ops, bins] for fractional bins: linear between the two neighbouring bins, exact at integers."""
    low = bins.floor().long().clamp(max=table.shape[1] - 1)
    high = (low + 1).clamp(max=table.shape[1] - 1)
    frac = bins - low
    return table[ops, low] + frac * (table[ops, high] - table[ops, low])
