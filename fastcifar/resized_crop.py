"""RandomResizedCrop on the device: a per-image box of the stored image, resized to the model's side in one op.

`sample_boxes` draws like torchvision's `RandomResizedCrop.make_params` (10 tries of a uniform area fraction
and a log-uniform aspect ratio, the first box that fits, else the centre-crop fallback), batched: all 10
candidates of every image are drawn at once and the first valid one is picked with argmax, so nothing waits
for the device. `resized_crop` is torchvision's `resized_crop(..., BILINEAR, antialias=False)` per image
(crop, then bilinear resize with align_corners=False, which clamps at the box's own edges): two batched
matmuls with per-image interpolation matrices, no full-size intermediate and no per-image loop.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

TRIES = 10  # torchvision's attempts before the centre-crop fallback


def sample_boxes(batch: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                 device: torch.device) -> Tensor:
    """One crop box per image: int64 [B, 4] = (top, left, box height, box width), px of the stored image."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(batch, TRIES, device=device, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(batch, TRIES, device=device, dtype=torch.float64))
    w = torch.sqrt(target * aspect).round().long()  # round half to even, like Python's round
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [B, TRIES]
    first = fits.int().argmax(dim=1, keepdim=True)  # first fitting try (0 when none fits)
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    fallback_w, fallback_h = _fallback(height, width, ratio)
    w = torch.where(found, w, fallback_w)
    h = torch.where(found, h, fallback_h)
    u = torch.rand(2, batch, device=device, dtype=torch.float64)  # torch.randint(0, n - size + 1) per image
    top = torch.where(found, (u[0] * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(found, (u[1] * (width - w + 1)).long(), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def _fallback(height: int, width: int, ratio: Sequence[float]) -> tuple[int, int]:
    """torchvision's centre-crop box (width, height) when no try fits: the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def interpolation_matrix(start: Tensor, length: Tensor, size: int, source: int, dtype: torch.dtype) -> Tensor:
    """Per-image bilinear weights [B, size, source] of F.interpolate(align_corners=False) over [start, start+length).

    Output pixel j reads at (j + 0.5) * length / size - 0.5 inside the box, clamped below at 0, between
    the two neighbouring box pixels (the upper one clamped to the box's last pixel).
    """
    j = torch.arange(size, device=start.device, dtype=torch.float64)
    scale = (length.double() / size)[:, None]  # [B, 1]
    src = ((j + 0.5) * scale - 0.5).clamp(min=0)  # [B, size]
    low = src.floor()
    frac = src - low
    low = low.long()
    high = torch.minimum(low + 1, length[:, None] - 1)
    cols = torch.arange(source, device=start.device)
    at_low = cols == (start[:, None] + low)[..., None]  # [B, size, source]
    at_high = cols == (start[:, None] + high)[..., None]
    weights = (1 - frac)[..., None] * at_low + frac[..., None] * at_high
    return weights.to(dtype)


def resized_crop(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Cut each image's box and resize it to size x size, bilinear, antialias off.

    Args:
        x: float [B, C, H, W] (any float dtype: the matmuls run in it), any memory format.
        boxes: int64 [B, 4] (top, left, height, width) from `sample_boxes`.
        size: output side, px.

    Returns:
        [B, C, size, size] x.dtype, channels_last (born NHWC: the second matmul writes rows of (j, c)).
    """
    B, C, H, W = x.shape
    top, left, h, w = boxes.unbind(1)
    rows = interpolation_matrix(top, h, size, H, x.dtype)  # [B, S, H]
    cols = interpolation_matrix(left, w, size, W, x.dtype)  # [B, S, W]
    t = torch.bmm(x.contiguous().view(B, C * H, W), cols.transpose(1, 2))  # [B, C*H, S]: along W first
    t = t.view(B, C, H, size).permute(0, 2, 3, 1).reshape(B, H, size * C)  # [B, H, (j, c)], small
    out = torch.bmm(rows, t)  # [B, S, S*C] = NHWC
    return out.view(B, size, size, C).permute(0, 3, 1, 2)
