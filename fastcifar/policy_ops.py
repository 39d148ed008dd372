"""torchvision's auto-augment ops, batched: every image of a batch runs its own op with its own magnitude.

Image b gets op `op[b]` (an index into OPS) with the signed magnitude `magnitude[b]`, in the units
torchvision's `_apply_image_or_video_transform` takes (shear: the tangent; translate: px; rotate: degrees;
brightness/color/contrast/sharpness: factor - 1; posterize: bits; solarize: threshold as a fraction of 255).
Each op reproduces `torchvision.transforms.v2.functional` on uint8 images with `interpolation=NEAREST` and
`fill=None` (zeros), torchvision's auto-augment defaults (tests/test_policy_ops.py checks every op by value).

The 15 ops fall into three families (FAMILIES) by what they compute, and `apply_family` runs any mix of one
family's ops (and Identity) as one batched pass:

    geometric (shear, translate, rotate)   one nearest-neighbour gather with a per-image source index
    blends (color, sharpness)              a float blend with a per-image degenerate image, per op
    tables (brightness, contrast, posterize, solarize, invert, autocontrast, equalize)
                                           one per-image-and-channel lookup table [B*C, 256], one gather

It is told which rows run which op (`segments`) instead of looking: no Python branch reads a drawn value and
no shape depends on one, so a step never waits for the device, and each op's own steps (a luma, a blur, a
histogram) run on its own rows only. The policies know those rows from their stratified draw (policy.py);
`apply_op`, the reference for any hand-made draw, sorts the batch on the host instead. Images are uint8 NCHW
at the stored 32 px; nothing here resizes.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# torchvision's op names, in the order of RandAugment's augmentation space (+ Invert, used by AutoAugment).
OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
    "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)
OP_ID = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
BLENDS = ("Color", "Sharpness")
GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights (rgb_to_grayscale)


_SCRATCH: dict[tuple, Tensor] = {}
_CONSTANTS: dict[tuple, Tensor] = {}  # read-only tensors (`constant`)


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, fill: float | None = None
            ) -> Tensor:
    """A reused buffer per (name, shape, dtype, device). On CPU a fresh multi-MB tensor is page-faulted in on
    every call (the int64 pixel indices cost more in faults than the gather itself); CUDA's caching
    allocator would reuse the memory anyway. Each user overwrites what it reads, except the parts a buffer
    made with `fill` keeps that value in because no user ever writes them (the warp's zero border)."""
    key = (name, shape, dtype, device)
    if key not in _SCRATCH:
        _SCRATCH[key] = torch.empty(shape, dtype=dtype, device=device) if fill is None else torch.full(
            shape, fill, dtype=dtype, device=device)
    return _SCRATCH[key]


def constant(key: tuple, make: Callable[[], Tensor]) -> Tensor:
    """A read-only tensor made once per key (name, device, sizes): inside a step no constant is built again, so
    none is copied from the host. Callers never write to it."""
    if key not in _CONSTANTS:
        _CONSTANTS[key] = make()
    return _CONSTANTS[key]


def _pixel_index(x: Tensor) -> Tensor:
    """uint8 [B, C, H, W] -> its values as int64 [B*C, H*W] (a scratch buffer: use before the next call)."""
    B, C, H, W = x.shape
    return scratch("index", (B * C, H * W), torch.int64, x.device).copy_(x.reshape(B * C, H * W))


# ---------------------------------------------------------------------------- geometry, exact nearest


def inverse_affine(op: Tensor, magnitude: Tensor, height: int, width: int) -> Tensor:
    """torchvision's inverse affine matrix per image (`_get_inverse_affine_matrix`, scale 1), float64 [B, 6].

    Pixel units, coordinates relative to the image centre; identity for non-geometric ops. Computed in
    float64 like torchvision's Python floats, then rounded to float32 once by the caller.
    """
    m = magnitude.double()
    zero = torch.zeros_like(m)
    shear = torch.rad2deg(torch.atan(m))  # torchvision passes degrees(atan(magnitude)) as the shear angle
    shear_x = torch.where(op == OP_ID["ShearX"], shear, zero)
    shear_y = torch.where(op == OP_ID["ShearY"], shear, zero)
    tx = torch.where(op == OP_ID["TranslateX"], torch.trunc(m), zero)  # int(magnitude): toward zero
    ty = torch.where(op == OP_ID["TranslateY"], torch.trunc(m), zero)
    # F.rotate(angle) takes angle % 360 and builds the matrix with -angle
    angle = torch.where(op == OP_ID["Rotate"], -torch.remainder(m, 360.0), zero)
    # torchvision shears about the top-left corner (center=[0, 0])
    shearing = (op == OP_ID["ShearX"]) | (op == OP_ID["ShearY"])
    cx = torch.where(shearing, zero - width * 0.5, zero)
    cy = torch.where(shearing, zero - height * 0.5, zero)

    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    cxt, cyt = cx + tx, cy + ty
    m2 = cx - m0 * cxt - m1 * cyt
    m5 = cy - m3 * cxt - m4 * cyt
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1)


def grid_coefficients(op: Tensor, magnitude: Tensor, height: int, width: int) -> Tensor:
    """The per-image numbers the pixel grid is mapped with: float32 [B, 6], `inverse_affine` rounded to float32
    and divided by half the side, as torchvision's `_affine_grid` does (theta / [W/2, W/2, W/2, H/2, H/2, H/2]).

    A function of the draw alone (tiny [B] tensors): a policy computes it once for all its slots.
    """
    theta = inverse_affine(op, magnitude, height, width).float()
    half = constant(("half sides", theta.device, height, width),
                    lambda: torch.tensor([0.5 * width] * 3 + [0.5 * height] * 3).to(theta.device))
    return theta / half  # float32 / float32, as torchvision's div_ by a float32 tensor


def source_pixels(coefficients: Tensor, height: int, width: int) -> Tensor:
    """Where each output pixel reads from, as torchvision's affine (NEAREST) + grid_sample decide it.

    torchvision maps output pixel centres (relative to the image centre) through the float32 matrix divided by
    half the side (`_affine_grid`); CPU grid_sample then unnormalizes with (g + 1) * size / 2 - 0.5 and rounds
    half to even. The same float32 steps here, one [B, H, W] plane per coordinate instead of a
    [B, H*W, 3] x [B, 3, 2] bmm (which spent most of its time on the tiny matrices).

    grid_sample reads zeros outside the image. Clamping each coordinate to [-1, side] keeps every such read
    on a one-pixel zero border around the image, so the caller gathers from the image padded by one pixel
    and needs no validity mask (two float compares and a multiply fewer per pixel).

    Args:
        coefficients: float32 [B, 6] (see `grid_coefficients`).

    Returns:
        flat source index int64 [B, H*W] into the image zero-padded by one pixel, (H + 2) x (W + 2).
    """
    c = coefficients[:, :, None, None]  # [B, 6, 1, 1]
    xs, ys = _centres(coefficients.device, height, width)
    # the same float32 operations in the same order, in place where the operand is a fresh [B, H, W] tensor
    gx = torch.add(xs * c[:, 0], ys * c[:, 1]).add_(c[:, 2])  # [B, H, W]
    gy = torch.add(xs * c[:, 3], ys * c[:, 4]).add_(c[:, 5])
    ix = gx.add_(1).mul_(width / 2).sub_(0.5).round_().clamp_(-1, width)  # column, -1 and width: on the border
    iy = gy.add_(1).mul_(height / 2).sub_(0.5).round_().clamp_(-1, height)
    # (iy + 1) * (W + 2) + ix + 1 in the padded image: integers below 2^24, exact in float32
    index = torch.add(ix, iy, alpha=width + 2).add_(width + 3)
    return index.int().long().view(-1, height * width)  # via int32: twice as fast as float32 -> int64 on CPU


def _centres(device: torch.device, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel centres relative to the image centre: float32 [1, 1, W] (x) and [1, H, 1] (y), made once."""
    xs = constant(("x centres", device, width), lambda: torch.linspace(
        (1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device)[None, None, :])
    ys = constant(("y centres", device, height), lambda: torch.linspace(
        (1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)[None, :, None])
    return xs, ys


def warp_nearest(x: Tensor, coefficients: Tensor, out: Tensor | None = None) -> Tensor:
    """Warp each image by its inverse affine map, nearest neighbour, zeros outside: uint8 in, uint8 out.

    Args:
        x: uint8 [B, C, H, W] NCHW. coefficients: float32 [B, 6] (see `grid_coefficients`).
        out: uint8 [B, C, H, W] contiguous to write into; None = a new tensor.

    Returns:
        uint8 [B, C, H, W] NCHW: exactly torchvision's affine/rotate (NEAREST, fill=None) per image.
    """
    B, C, H, W = x.shape
    index = source_pixels(coefficients, H, W)  # [B, H*W] into the padded image
    padded = scratch("padded", (B, C, H + 2, W + 2), x.dtype, x.device, fill=0)  # only the interior is written:
    padded[:, :, 1:-1, 1:-1] = x  # the zero border the outside reads land on
    out = torch.empty_like(x) if out is None else out
    torch.gather(padded.view(B, C, -1), 2, index[:, None].expand(B, C, H * W), out=out.view(B, C, H * W))
    return out


# ---------------------------------------------------------------------------- tables: one lookup per image and channel


def histograms(x: Tensor, index: Tensor) -> Tensor:
    """Per image and channel histogram of uint8 [B, C, H, W]: int32 [B*C, 256] (scatter_add_, no host sync).

    index: x's pixels as int64 [B*C, H*W] (`_pixel_index`; the caller looks the same pixels up afterwards).
    """
    B, C, H, W = x.shape
    hist = torch.zeros(B * C, 256, dtype=torch.int32, device=x.device)
    # contiguous, made once: scatter_add_ runs 2x faster from it than from an expand on CPU
    ones = constant(("ones", x.device, B * C, H * W),
                    lambda: torch.ones(B * C, H * W, dtype=torch.int32, device=x.device))
    return hist.scatter_add_(1, index, ones)


def equalize_lut(hist: Tensor, pixels: int) -> Tensor:
    """torchvision's (PIL's) equalize table from each row's histogram: int32 [R, 256] -> float32 [R, 256].

    lut[k] = (cum[k-1] + step // 2) // step (lut[0] = 0), step = (pixels - count of the last non-empty bin) // 255;
    rows with step 0 get the identity table, as torchvision returns such images unchanged. The floor divisions
    run in floating point (vectorized, unlike integer division) and are exact: for integers a < 2^24 and b >= 1,
    float32(a / b) rounds up to the next integer only if a + b >= 2^24, and here a + b <= 1.01 * pixels
    (`pixels`: per row, H * W); float64 above 2^23 pixels.
    """
    h = hist.to(torch.float32 if pixels < 2**23 else torch.float64)
    cum = h.cumsum(dim=1)
    last = cum.argmax(dim=1, keepdim=True)  # first bin holding the maximum of the cumulative = last non-empty bin
    step = torch.floor((pixels - h.gather(1, last)) / 255)  # [R, 1]
    # cum - h: the count below each bin; 0 for bin 0, whose entry (step // 2) // step is then 0, as PIL's
    lut = torch.floor((cum - h + torch.floor(step / 2)) / step.clamp(min=1)).clamp_(0, 255).float()
    return torch.where(step != 0, lut, _values(hist.device))


def autocontrast_lut(x: Tensor) -> Tensor:
    """torchvision's autocontrast per image and channel: (v - min) / ((max - min) / 255), a flat channel
    unchanged. uint8 [B, C, H, W] -> float32 [B*C, 256], clamped, not yet truncated."""
    rows = x.reshape(x.shape[0] * x.shape[1], -1)
    low, high = rows.amin(dim=1, keepdim=True).float(), rows.amax(dim=1, keepdim=True).float()  # aminmax: 6x slower
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255))
    return ((_values(x.device) - torch.where(flat, 0.0, low)) / inv_scale).clamp_(0, 255)


def value_tables(x: Tensor, segments: tuple[tuple[str, int, int], ...], magnitude: Tensor, table: Tensor) -> None:
    """Write each segment's table of the pixel value alone into `table` (uint8 [B, 256]), each with the steps of
    torchvision's op, on its own rows only:

        Brightness  v * f, f = float32(1 + magnitude)
        Contrast    v * f + offset in float64, offset = float32(-magnitude) * mean of the floored luma, rounded
                    to float32 once, as torchvision's fused add_
        Solarize    255 - v where v >= float32(255 * magnitude)
        Posterize   v & the top `magnitude` bits
        Invert      255 - v
    then clamped to [0, 255] and truncated (torchvision's clamp and .to(uint8)). Segments of other ops are left
    for the caller. x: uint8 [B, C, H, W] (Contrast's luma). magnitude: float64 [B], torchvision's units.
    """
    v = _values(x.device)
    for name, a, b in segments:
        m = magnitude[a:b, None]  # [n, 1] float64
        if name in ("Brightness", "Contrast"):
            y = v * (1.0 + m).float()
            if name == "Contrast":
                mean = gray_floor(x[a:b].float()).mean(dim=(1, 2, 3))[:, None]  # integer sums: exact
                y = (y.double() + (-m).float().double() * mean.double()).float()
        elif name == "Solarize":
            y = torch.where(v >= (255.0 * m).float(), 255.0 - v, v)
        elif name == "Invert":
            y = 255.0 - v
        elif name == "Posterize":
            keep = torch.bitwise_left_shift(255, 8 - m.long().clamp(0, 8)) & 255  # [n, 1] int64
            table[a:b] = keep.to(torch.uint8) & _values(x.device, torch.uint8)
            continue
        else:
            continue
        table[a:b] = y.clamp(0, 255)  # copy_ to uint8 truncates


def table_lut(x: Tensor, op: Tensor, magnitude: Tensor, segments: tuple[tuple[str, int, int], ...],
              index: Tensor) -> Tensor:
    """The lookup table of each image and channel for TABLES ops: uint8 [B*C, 256].

    `value_tables` per image, spread to its channels, then AutoContrast's and Equalize's per-channel tables on
    their own segments' rows (from the pixels' min and max, and from the histograms; index: `_pixel_index(x)`),
    and the identity table for every Identity row (a padding row, a failed AutoAugment coin).
    """
    B, C, H, W = x.shape
    per_image = torch.empty(B, 256, dtype=torch.uint8, device=x.device)
    value_tables(x, segments, magnitude, per_image)
    table = per_image.repeat_interleave(C, dim=0)
    for name, a, b in segments:
        if name == "AutoContrast":
            table[a * C : b * C] = autocontrast_lut(x[a:b])  # copy_ to uint8 truncates, as torchvision's .to
        elif name == "Equalize":
            table[a * C : b * C] = equalize_lut(histograms(x[a:b], index[a * C : b * C]), H * W)
    # Identity rows get the identity table: table + (v - table) * 1 wraps around to v in uint8 (and * 0 keeps the
    # row); a broadcast torch.where runs 4x slower on CPU
    identity = (op == OP_ID["Identity"]).to(torch.uint8).repeat_interleave(C)[:, None]
    return table.add_((_values(x.device, torch.uint8) - table).mul_(identity))


# ---------------------------------------------------------------------------- blends: color and sharpness


def gray_floor(xf: Tensor) -> Tensor:
    """torchvision's luma, floored (as adjust_saturation/contrast do): float32 [B, 3, H, W] -> [B, 1, H, W].

    xf holds uint8 values as float32: uint8 * float would take torch's slow mixed-dtype path, same values.
    """
    r, g, b = xf.unbind(1)
    return r.mul(GRAY[0]).add_(g, alpha=GRAY[1]).add_(b, alpha=GRAY[2]).floor_()[:, None]


def blur_3x3(xf: Tensor) -> Tensor:
    """adjust_sharpness's degenerate image minus the image: round(blur) - x on the interior, 0 on the border.

    The blur is [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13. Its 3x3 sums are integers below 2^24, so float32
    holds them exactly in any summation order, and sum / 13 is never within 1/26 of a half: rounding
    agrees with torchvision's float convolution exactly. The sums run on the flat buffer with shifts of
    1 and W (contiguous 1-D adds, several times faster on CPU than 2-D slices); they are wrong only on
    border pixels, which the interior mask zeroes.

    Args:
        xf: float32 [B, C, H, W] contiguous, holding uint8 values.

    Returns:
        float32 [B, C, H, W] of integers (a scratch buffer: use before the next call).
    """
    B, C, H, W = xf.shape
    flat = xf.view(-1)
    n = flat.numel()
    rows = torch.add(flat[:-2], flat[1:-1], out=scratch("rows", (n - 2,), xf.dtype, xf.device)).add_(flat[2:])
    sums = torch.add(rows[: -2 * W], rows[W:-W], out=scratch("sums", (n - 2 - 2 * W,), xf.dtype, xf.device))
    sums.add_(rows[2 * W :])  # sums[k]: 3x3 sum centred on k + 1 + W; rows[k]: 3-sum centred on k + 1
    centre = flat[W + 1 : W + 1 + sums.numel()]
    out = scratch("blur", tuple(xf.shape), xf.dtype, xf.device)
    out_flat = out.view(-1)
    out_flat[: W + 1] = 0  # the two ends the shifted sums do not reach: border pixels
    out_flat[W + 1 + sums.numel() :] = 0
    torch.sub(sums.add_(centre, alpha=4.0).div_(13.0).round_(), centre, out=out_flat[W + 1 : W + 1 + sums.numel()])
    interior = constant(("interior", xf.device, H, W),
                        lambda: F.pad(torch.ones(H - 2, W - 2, device=xf.device), (1, 1, 1, 1)))
    return out.mul_(interior)


def blend(x: Tensor, name: str, magnitude: Tensor, out: Tensor) -> Tensor:
    """adjust_saturation (Color) or adjust_sharpness (Sharpness), each image with its own factor, into `out`.

    torchvision computes Color as x * f + (1 - f) * gray and Sharpness as x + (1 - f) * (blur - x), both
    with `add_(alpha=1 - f)`, which CPU torch runs as one fused multiply-add. Here both are
    x * p + alpha * D in float32 with two roundings (addcmul), D = gray or blur - x, p = f or 1. The two can
    differ only where the blend lands within one float32 ulp (~1.5e-5) of an integer before truncation; no
    pixel differed in 3 million random ones per op (tests/test_policy_ops.py allows 1 off on 0.01 % of pixels).

    Args:
        x: uint8 [B, 3, H, W]. name: Color or Sharpness. magnitude: float64 [B]; 0 leaves an image unchanged
            (p 1 and alpha 0 give x back exactly). out: uint8 [B, 3, H, W].
    """
    xf = x.float()
    m = magnitude[:, None, None, None]
    if name == "Color":
        gray = gray_floor(xf)
        xf = xf.mul_((1.0 + m).float()).addcmul_(gray, (-m).float())  # p = float32(1 + magnitude)
    else:
        xf = xf.addcmul_(blur_3x3(xf), (-m).float())  # alpha = float32(1 - f) = -magnitude
    return out.copy_(xf.clamp_(0, 255))  # copy_ truncates, as torchvision's .to(uint8)


# ---------------------------------------------------------------------------- the three families


# the ops that share one batched pass, by what they compute: any mix of one family's ops (and Identity) runs as
# one call of `apply_family`; Identity alone costs nothing
TABLES = ("Brightness", "Posterize", "Solarize", "Invert", "Contrast", "AutoContrast", "Equalize")
FAMILIES = (("Identity",), GEOMETRIC, BLENDS, TABLES)
FAMILY = {name: family for family in FAMILIES for name in family}


def apply_family(x: Tensor, family: tuple[str, ...], op: Tensor, magnitude: Tensor,
                 segments: tuple[tuple[str, int, int], ...], coefficients: Tensor | None = None,
                 out: Tensor | None = None) -> Tensor:
    """Image b gets OPS[op[b]], every op one of `family` (one of FAMILIES) or Identity, running only that
    family's kernels, and each op's own steps only where it has rows: exactly torchvision's op per image.

    Args:
        x: uint8 [B, 3, H, W] contiguous NCHW. family: one of FAMILIES. op: int64 [B].
        magnitude: float64 [B], torchvision's units.
        segments: ((name, start, stop), ...) covering rows 0..B-1: every image of rows start..stop-1 runs
            `name` or Identity (a padding row, an AutoAugment op whose coin failed). The policies know
            them without looking at a drawn value (policy.Policy._groups): a stratum's rows are fixed.
        coefficients: GEOMETRIC only, `grid_coefficients(op, magnitude, H, W)` if the caller has it (a policy
            computes it for all slots at once); None = computed here.
        out: uint8 [B, 3, H, W] contiguous to write into; None = a new tensor.

    Returns:
        uint8 [B, 3, H, W] NCHW: `out`.
    """
    B, C, H, W = x.shape
    out = torch.empty_like(x) if out is None else out
    if family == ("Identity",):
        return out.copy_(x)
    if family == GEOMETRIC:  # the five share one gather; only their matrices differ
        return warp_nearest(x, grid_coefficients(op, magnitude, H, W) if coefficients is None else coefficients, out)
    if family == BLENDS:  # Color needs the luma only, Sharpness the blur only
        kept = magnitude.masked_fill(op == OP_ID["Identity"], 0.0)  # magnitude 0 is the identity blend
        for name, a, b in segments:
            blend(x[a:b], name, kept[a:b], out[a:b])
        return out
    index = _pixel_index(x)  # [B*C, H*W]: the histograms and the lookup read the same pixels
    table = table_lut(x, op, magnitude, segments, index)
    return torch.gather(table, 1, index, out=out.view(B * C, H * W)).view_as(x)


def apply_op(x: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
    """Image b gets torchvision's op OPS[op[b]] with signed magnitude magnitude[b], any mix of ops.

    The reference for a hand-made draw: it sorts the batch by family and op and reads the sorted ops on the
    host (a sync, so no step calls it: a policy knows its groups without looking, policy.Policy.apply), then
    runs `apply_family` on each group.

    Args:
        x: uint8 [B, 3, H, W], any memory format.
        op: int64 [B] indices into OPS. magnitude: float [B], torchvision's units (see the module docstring).

    Returns:
        uint8 [B, 3, H, W] NCHW (contiguous).
    """
    rank = torch.tensor([FAMILIES.index(FAMILY[name]) * len(OPS) + i for i, name in enumerate(OPS)])
    order = torch.argsort(rank.to(op.device)[op], stable=True)
    xs, op, magnitude = x.contiguous()[order], op[order], magnitude.double()[order]
    names = [OPS[i] for i in op.tolist()]
    y, start = torch.empty_like(xs), 0
    for family, rows in itertools.groupby(names, FAMILY.__getitem__):
        stop = start + len(list(rows))
        segments = segments_of(names[start:stop])
        apply_family(xs[start:stop], family, op[start:stop], magnitude[start:stop], segments, out=y[start:stop])
        start = stop
    return torch.empty_like(y).index_copy_(0, order, y)


def segments_of(names: list[str]) -> tuple[tuple[str, int, int], ...]:
    """The op of each row -> `apply_family`'s segments: (name, start, stop) of each run of equal names."""
    segments, start = [], 0
    for name, run in itertools.groupby(names):
        stop = start + sum(1 for _ in run)
        segments.append((name, start, stop))
        start = stop
    return tuple(segments)


def _values(device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """[256]: 0..255, the identity table (made once per device and dtype, read only)."""
    return constant(("values", device, dtype), lambda: torch.arange(256, device=device).to(dtype))
