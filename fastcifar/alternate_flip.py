"""airbench's alternating flip: each image is mirrored in every other epoch, half of them starting in epoch 0.

airbench mirrors a random half of the (device-resident, unshuffled) training set once, then mirrors every
image in odd epochs, so each image alternates between its two orientations. fastcifar's loaders shuffle,
shard and may be ffcv or dali pipelines that never tell the augmentation which dataset index an image has,
so the "which half" bit is computed from the image itself: a seeded hash of its stored pixels.

    flipped(image, epoch) = bit(seed, pixels of the stored image) XOR (epoch is odd)

It needs no index, no state and no change to the loader contract; it is the same on every loader (the
torch baseline's CPU transform calls the same function on each stored image), on every DDP rank, and
after a resume (it depends on nothing but seed, epoch and pixels). Identical images get the same bit,
which is harmless. The hash is exact integer arithmetic carried out in float64 (every partial sum is an
integer below 2^53), so CPU and CUDA agree bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHT_BITS = 24  # weights in [0, 2^24): 3*H*W*255*2^24 < 2^53 for stored images up to ~1400 px a side
_weights: dict[tuple, Tensor] = {}


def _hash_weights(seed: int, numel: int, device: torch.device) -> Tensor:
    key = (seed, numel, device)
    if key not in _weights:
        generator = torch.Generator().manual_seed(int(seed))  # on the CPU: the same weights on every device
        w = torch.randint(0, 2**WEIGHT_BITS, (numel,), generator=generator, dtype=torch.int64)
        _weights[key] = w.double().to(device)
    return _weights[key]


def image_bits(images: Tensor, seed: int) -> Tensor:
    """A seeded pseudo-random bit per image, a function of its pixels only: uint8 [B, C, H, W] -> bool [B]."""
    B = images.shape[0]
    flat = images.reshape(B, -1).double()  # any memory format: reshape copies when it must
    h = flat @ _hash_weights(seed, flat.shape[1], images.device)  # [B] exact integers < 2^53
    return torch.remainder(torch.floor(h / 2.0 ** (WEIGHT_BITS - 1)), 2) == 1  # bit 23 of the weighted sum


def alternate_flips(images: Tensor, seed: int, epoch: int) -> Tensor:
    """Which images to mirror this epoch: bool [B] = image_bits XOR (epoch odd)."""
    bits = image_bits(images, seed)
    return ~bits if epoch % 2 else bits
