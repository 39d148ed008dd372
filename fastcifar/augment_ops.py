"""Batched image ops for `GpuAugment`: pure functions of a batch and explicit per-image parameters.

Every op takes a batch [B, 3, H, W] and tensors of per-image parameters drawn by the caller, so the
same code runs on CPU (tests) and CUDA, and a test can pass known parameters and check pixels.
No op loops over images in Python and none calls `.item()`: decisions are boolean masks [B].

Dtypes and memory formats are chosen on purpose (measured on a 2-core CPU and by the bench):
  - geometry runs on uint8 at the stored 32 px, exact: crop/translate and both flips are one
    gather with per-image index vectors; cutout is one masked_fill;
  - shift-scale-rotate and colour jitter go through float32 at 32 px and are rounded back to uint8;
  - at 32 px the ops work in NCHW (contiguous): on CPU, a per-image or per-channel broadcast over
    channels_last data leaves a 3-long innermost loop and ran ~10x slower; the switch to
    channels_last happens once, in `resize` / `normalize`, where the big tensors are made;
  - on CPU the resize runs on uint8 (torch's vectorised channels_last kernel: 32 ms for 256 images
    32->224 px on 2 cores, 5-15x faster than float32), then convert + normalize is one copy and one
    in-place affine pass;
  - on CUDA, where bilinear resize has no uint8 kernel, we normalize at 32 px (cheap) and resize in
    the output dtype; both orders give the same values because bilinear weights sum to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


# ---------------------------------------------------------------------------- geometry, uint8


def _reflect(index: Tensor, size: int) -> Tensor:
    """Reflect indices into [0, size) without repeating the edge (numpy 'reflect'); valid for |pad| < size."""
    last = size - 1
    return last - (last - index.abs()).abs()


def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, hflip: Tensor, vflip: Tensor, padding: int, pad_mode: str) -> Tensor:
    """Random crop after padding (a translate) and horizontal / vertical mirrors, as one gather.

    Output pixel (i, j) of image b reads the padded input at (i' + dy[b], j' + dx[b]), where
    i' = H-1-i if vflip[b] else i (and j' likewise with hflip): the crop window starts `dy` rows
    below the top of the unpadded image (dy in [-padding, padding]) and the window is then mirrored.

    Args:
        x: [B, C, H, W] any dtype (uint8 here), any memory format.
        dy, dx: [B] int64 window offsets in px.
        hflip, vflip: [B] bool, which images are mirrored.
        padding: the largest |offset|, px (static; < H and < W for reflect).
        pad_mode: "reflect" (mirror without repeating the edge) or "constant" (zeros).

    Returns:
        [B, C, H, W] same dtype and device, contiguous (NCHW).
    """
    B, C, H, W = x.shape
    i = torch.arange(H, device=x.device)
    j = torch.arange(W, device=x.device)
    rows = torch.where(vflip[:, None], H - 1 - i, i) + dy[:, None]  # [B, H] source row
    cols = torch.where(hflip[:, None], W - 1 - j, j) + dx[:, None]  # [B, W] source col
    src, width = x, W
    if padding and pad_mode == "reflect":  # reflect by index arithmetic: no padded copy
        rows, cols = _reflect(rows, H), _reflect(cols, W)
    elif padding:  # zeros: gather from a zero-padded copy (cheap at 32 px), so no validity mask
        src, width = F.pad(x, (padding,) * 4), W + 2 * padding
        rows, cols = rows + padding, cols + padding
    flat = rows[:, :, None] * width + cols[:, None, :]  # [B, H, W] int64 source pixel
    if x.device.type == "cpu" and src.is_contiguous(memory_format=torch.channels_last) and C > 1:
        # the loaders' layout: one gather per channel plane of the NHWC memory, straight into the NCHW
        # output, instead of a permuting copy to NCHW first (a quarter faster on CPU at 32 px; on CUDA one
        # kernel either way, so the single gather stays)
        planes = src.permute(0, 2, 3, 1).reshape(B, -1, C)  # [B, H'*W', C], a view
        out = torch.empty(B, C, H * W, dtype=x.dtype, device=x.device)
        for c in range(C):
            torch.gather(planes[:, :, c], 1, flat.view(B, H * W), out=out[:, c])
        return out.view(B, C, H, W)
    out = torch.gather(src.reshape(B, C, -1), 2, flat.view(B, 1, H * W).expand(B, C, H * W))
    return out.view(B, C, H, W)


def cutout(x: Tensor, y0: Tensor, x0: Tensor, size: int, mask: Tensor) -> Tensor:
    """Zero one size x size square per masked image, clipped at the borders.

    Args:
        x: [B, C, H, W] any dtype, any memory format (NCHW is the fast one).
        y0, x0: [B] int64 top-left corner of the square, px (may be negative or past the edge).
        size: side of the square, px.
        mask: [B] bool, which images get a hole.

    Returns:
        [B, C, H, W] same dtype, contiguous (NCHW).
    """
    B, C, H, W = x.shape
    i = torch.arange(H, device=x.device)
    j = torch.arange(W, device=x.device)
    in_rows = (i >= y0[:, None]) & (i < y0[:, None] + size)  # [B, H]
    in_cols = (j >= x0[:, None]) & (j < x0[:, None] + size)  # [B, W]
    hole = (in_rows[:, :, None] & in_cols[:, None, :] & mask[:, None, None])[:, None]  # [B, 1, H, W]
    return x.contiguous().masked_fill(hole, 0)


def ssr_matrices(angle_deg: Tensor, scale: Tensor, shift: Tensor, height: int, width: int) -> Tensor:
    """Per-image affine_grid matrices for rotate (degrees), scale (x) and shift (fraction of the side).

    Args:
        angle_deg, scale: [B] float32. shift: [B, 2] float32 (x, y), fractions of width / height.

    Returns:
        theta [B, 2, 3] float32 mapping output normalized coords to input normalized coords.
    """
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale  # inverse map: rotate by -a, scale by 1/s
    aspect = height / width  # pixel rotation expressed in normalized [-1, 1] coords
    A = torch.stack([torch.stack([cos, sin * aspect], -1), torch.stack([-sin / aspect, cos], -1)], -2)  # [B, 2, 2]
    t = 2.0 * shift  # fraction of the side -> normalized units (the side spans 2)
    return torch.cat([A, -(A @ t[:, :, None])], dim=2)


def affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """F.affine_grid(theta, [B, C, H, W], align_corners=False) by broadcasting: [B, H, W, 2] float32.

    The same values as torch's, whose batched matmul over H*W points was the slowest step of
    shift-scale-rotate on CPU (~14 ms for 256 images at 32 px, 1 thread).
    """
    dev = theta.device
    xs = (torch.arange(width, device=dev, dtype=theta.dtype) * 2 + 1) / width - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(height, device=dev, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # [B, 2, 3, 1, 1]
    grid = t[:, :, 0] * xs[None, None, None, :] + t[:, :, 1] * ys[None, None, :, None] + t[:, :, 2]  # [B, 2, H, W]
    return grid.permute(0, 2, 3, 1)


def shift_scale_rotate(x: Tensor, theta: Tensor, mask: Tensor, padding_mode: str) -> Tensor:
    """Warp the masked images with one affine matrix each (bilinear, in float32), back to uint8.

    Args:
        x: [B, C, H, W] uint8. theta: [B, 2, 3] float32 (see `ssr_matrices`). mask: [B] bool.
        padding_mode: grid_sample's "reflection" or "zeros" for pixels pulled from outside.

    Returns:
        [B, C, H, W] uint8, contiguous (NCHW); unmasked images are bit-exact copies.
    """
    B, C, H, W = x.shape
    xf = x.to(torch.float32, memory_format=torch.contiguous_format)
    warped = F.grid_sample(
        xf, affine_grid(theta, H, W), mode="bilinear", padding_mode=padding_mode, align_corners=False
    )
    warped = torch.where(mask[:, None, None, None], warped, xf)  # unmasked: exact integers, survive the round
    return warped.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------- colour, float32 at 32 px


def _gray(x: Tensor) -> Tensor:
    """[B, 3, H, W] float -> [B, 1, H, W] luma."""
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b)[:, None]


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by `shift` turns per image. x: [B, 3, H, W] float in [0, 1]; shift: [B]."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    chroma = v - x.amin(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(chroma > 0, h, torch.zeros_like(h))  # hue in sextants, [-1, 5)
    h = torch.remainder(h + 6.0 * shift[:, None, None], 6.0)
    s = chroma / torch.where(v > 0, v, torch.ones_like(v))
    # HSV -> RGB in closed form: channel n (R=5, G=3, B=1) = v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + h) mod 6
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # [5, 3, 1], made on the device
    k = torch.remainder(n + h[:, None], 6.0)
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(x: Tensor, factors: Tensor, mask: Tensor, hue: bool) -> Tensor:
    """Brightness, contrast, saturation, then hue, on the masked images; back to uint8.

    The order is fixed (torchvision draws a random order per image); each step clamps to [0, 255].

    Args:
        x: [B, 3, H, W] uint8.
        factors: [B, 4] float32: brightness, contrast and saturation multipliers, hue shift in turns.
        mask: [B] bool.
        hue: whether to run the (costlier) hue rotation at all (static).

    Returns:
        [B, 3, H, W] uint8, contiguous (NCHW); unmasked images are bit-exact copies.
    """
    f = factors[:, :, None, None, None]  # [B, 4, 1, 1, 1]: f[:, k] broadcasts over [3, H, W]
    xf = x.to(torch.float32, memory_format=torch.contiguous_format)
    y = (xf * f[:, 0]).clamp_(0, 255)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)  # [B, 1, 1, 1] contrast pivot
    y = (f[:, 1] * y + (1 - f[:, 1]) * mean).clamp_(0, 255)
    y = (f[:, 2] * y + (1 - f[:, 2]) * _gray(y)).clamp_(0, 255)
    if hue:
        y = _shift_hue(y / 255.0, factors[:, 3]) * 255.0
    y = torch.where(mask[:, None, None, None], y, xf)  # unmasked: exact integers, survive the round
    return y.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------- to the model's input


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize to size x size (align_corners=False, antialias only when downscaling).

    Args:
        x: [B, C, H, W] uint8 (CPU) or float (any device).

    Returns:
        [B, C, size, size] same dtype, channels_last; x itself (any format) when it already has that size.
    """
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    x = x.contiguous(memory_format=torch.channels_last)  # torch's fast uint8 kernel wants NHWC
    antialias = size < min(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


def normalize(x: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype) -> Tensor:
    """y = x * scale + shift per channel, in `dtype`, as one copy plus one in-place pass.

    The affine runs on a [B*H, W*C] view with per-column constants (scale repeated W times): a
    per-channel [1, C, 1, 1] broadcast over channels_last data makes the innermost loop 3 long and
    ran ~4x slower on CPU.

    Args:
        x: [B, C, H, W] uint8 (always copied, never modified).
        scale, shift: [C] float32 on x's device (1/std and -mean/std).
        dtype: output dtype (float32, bfloat16, float16).

    Returns:
        [B, C, H, W] `dtype`, channels_last.
    """
    B, C, H, W = x.shape
    if x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last):
        y = x.to(dtype=dtype, memory_format=torch.channels_last)  # new tensor: x is uint8
    else:  # NCHW on a CPU (after crop/flip or a policy at the stored size): one plane per channel into the
        # channels_last output, 2-3x faster than a converting copy that permutes 3-long rows (on CUDA it is one
        # kernel either way)
        y = torch.empty(B, H, W, C, dtype=dtype, device=x.device).permute(0, 3, 1, 2)
        for c in range(C):
            y[:, c].copy_(x[:, c])
    rows = y.permute(0, 2, 3, 1).view(B * H, W * C)
    torch.addcmul(shift.repeat(W).to(dtype), rows, scale.repeat(W).to(dtype), out=rows)
    return y


# ---------------------------------------------------------------------------- mixup / cutmix


def partner_index(batch: int, device: torch.device) -> Tensor:
    """Image i is mixed with image (i + B//2) mod 2*(B//2); with odd B the last image keeps itself. [B] int64."""
    half = batch // 2
    idx = torch.arange(batch, device=device)
    return torch.where(idx < 2 * half, (idx + half) % max(2 * half, 1), idx)


def mix_(x: Tensor, other_weight: Tensor) -> Tensor:
    """In place: x[i] = (1 - w) * x[i] + w * x[partner(i)], pairing the two halves of the batch.

    Two in-place `lerp_` on the half views and one half-size copy: a fresh 224 px float batch costs
    more in page faults on CPU than the math. lerp is exact at w = 0 and w = 1, so cutmix pastes
    the partner's pixels bit for bit.

    Args:
        x: [B, C, S, S] float, modified in place.
        other_weight: weight of the partner image, broadcastable to [B//2, C, S, S]: a scalar
            tensor for mixup or a [1, 1, S, S] box map for cutmix; or one per image (mix_mode elem):
            [B, 1, 1, 1] or [B, 1, S, S], image i taking weight i; cast to x.dtype.

    Returns:
        x.
    """
    B, C, H, W = x.shape
    half = B // 2
    a, b = x[:half], x[half : 2 * half]
    w = other_weight.to(x.dtype)
    if w.dim() == 4 and w.shape[-1] > 1:  # a map: lay it out like x, or the 3-long channel loop runs ~3x slower on CPU
        w = w.expand(w.shape[0], C, H, W).contiguous(memory_format=torch.channels_last)
    per_image = w.dim() == 4 and w.shape[0] == B and B > 1  # mix_mode elem: [B, ...], one weight (map) per image
    w_a, w_b = (w[:half], w[half : 2 * half]) if per_image else (w, w)
    a_before = a.clone()
    a.lerp_(b, w_a)
    b.lerp_(a_before, w_b)
    return x


def box_map(size: int, cy: Tensor, cx: Tensor, cut: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """A cutmix box centred at (cy, cx) with side `cut` (int64 scalar tensors), clipped to the image.

    Returns:
        (box [1, 1, size, size] float32 with ones inside, area fraction as a float32 scalar tensor).
    """
    y0, x0 = cy - cut // 2, cx - cut // 2
    y0, y1 = y0.clamp(0, size), (y0 + cut).clamp(0, size)
    x0, x1 = x0.clamp(0, size), (x0 + cut).clamp(0, size)
    i = torch.arange(size, device=device)
    box = ((i >= y0) & (i < y1))[:, None] & ((i >= x0) & (i < x1))[None, :]  # [S, S]
    area = ((y1 - y0) * (x1 - x0)).float() / float(size * size)
    return box.float()[None, None], area
