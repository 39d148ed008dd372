"""torchvision's auto-augment ops, batched: every image of a batch runs its own op with its own magnitude.

`apply_op(x, op, magnitude)` is one "slot" of a policy: image b gets op `op[b]` (an index into OPS) with
the signed magnitude `magnitude[b]`, in the units torchvision's `_apply_image_or_video_transform` takes
(shear: the tangent; translate: px; rotate: degrees; brightness/color/contrast/sharpness: factor - 1;
posterize: bits; solarize: threshold as a fraction of 255). Each op reproduces
`torchvision.transforms.v2.functional` on uint8 images with `interpolation=NEAREST` and `fill=None` (zeros),
torchvision's auto-augment defaults (tests/test_policy_ops.py checks every op by value).

No op branches on a value in Python and no shape depends on the data, so a slot is a fixed sequence of
batched kernels whatever the draw; to keep it cheap the 15 ops share three passes, run in this order:

    geometric (shear, translate, rotate)   one nearest-neighbour gather with a per-image source index
    blends (color, sharpness)              one float blend with a per-image degenerate image
    pointwise (brightness, contrast, posterize, solarize, autocontrast, equalize, invert, identity)
                                           one per-image-and-channel lookup table [B*C, 256], one gather

Every pass is the identity for images whose op belongs to another pass (identity matrix, blend weight 0,
identity table), so no per-image selection is needed. `apply_family` runs one of these passes alone (or
none, for Identity) on images whose ops all belong to it: the policies group each batch that way
(policy.py), so every image pays for its own pass only, and within a pass each op's table or degenerate
image is computed on its own rows only. Images are uint8 NCHW at the stored 32 px; nothing here resizes.
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


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A reused buffer per (name, shape, dtype, device). On CPU a fresh multi-MB tensor is page-faulted in on
    every call (the int64 pixel indices cost more in faults than the gather itself); CUDA's caching
    allocator would reuse the memory anyway. Contents are overwritten by each user before reading."""
    key = (name, shape, dtype, device)
    if key not in _SCRATCH:
        _SCRATCH[key] = torch.empty(shape, dtype=dtype, device=device)
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


def _is(op: Tensor, *names: str) -> Tensor:
    """[B] bool: op[b] is one of `names`."""
    out = torch.zeros_like(op, dtype=torch.bool)
    for name in names:
        out |= op == OP_ID[name]
    return out


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
    shearing = _is(op, "ShearX", "ShearY")  # torchvision shears about the top-left corner (center=[0, 0])
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
    ix = gx.add_(1).mul_(width / 2).sub_(0.5).round_().clamp_(-1, width).add_(1)  # column in the padded image
    iy = gy.add_(1).mul_(height / 2).sub_(0.5).round_().clamp_(-1, height).add_(1)
    index = iy.mul_(width + 2).add_(ix)  # integers below 2^24: exact in float32
    return index.int().long().view(-1, height * width)  # via int32: twice as fast as float32 -> int64 on CPU


def _centres(device: torch.device, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel centres relative to the image centre: float32 [1, 1, W] (x) and [1, H, 1] (y), made once."""
    xs = constant(("x centres", device, width), lambda: torch.linspace(
        (1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device)[None, None, :])
    ys = constant(("y centres", device, height), lambda: torch.linspace(
        (1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)[None, :, None])
    return xs, ys


def warp_nearest(x: Tensor, coefficients: Tensor) -> Tensor:
    """Warp each image by its inverse affine map, nearest neighbour, zeros outside: uint8 in, uint8 out.

    Args:
        x: uint8 [B, C, H, W] NCHW. coefficients: float32 [B, 6] (see `grid_coefficients`).

    Returns:
        uint8 [B, C, H, W] NCHW: exactly torchvision's affine/rotate (NEAREST, fill=None) per image.
    """
    B, C, H, W = x.shape
    index = source_pixels(coefficients, H, W)  # [B, H*W] into the padded image
    padded = F.pad(x, (1, 1, 1, 1)).view(B, C, (H + 2) * (W + 2))  # the zero border outside reads land on
    return torch.gather(padded, 2, index[:, None].expand(B, C, H * W)).view(B, C, H, W)


# ---------------------------------------------------------------------------- pointwise: per-image tables


def histograms(x: Tensor, index: Tensor | None = None) -> Tensor:
    """Per image and channel histogram of uint8 [B, C, H, W]: int32 [B*C, 256] (scatter_add_, no host sync).

    `index`: x's `_pixel_index` when the caller has it already (it then looks the same pixels up).
    """
    B, C, H, W = x.shape
    hist = torch.zeros(B * C, 256, dtype=torch.int32, device=x.device)
    # contiguous, made once: scatter_add_ runs 2x faster from it than from an expand on CPU
    ones = constant(("ones", x.device, B * C, H * W),
                    lambda: torch.ones(B * C, H * W, dtype=torch.int32, device=x.device))
    return hist.scatter_add_(1, _pixel_index(x) if index is None else index, ones)


def equalize_lut(hist: Tensor) -> Tensor:
    """torchvision's (PIL's) equalize table from each row's histogram: int32 [R, 256] -> float32 [R, 256].

    lut[0] = 0, lut[k] = (cum[k-1] + step // 2) // step, step = (pixels - count of the last non-empty bin) // 255;
    rows with step 0 get the identity table, as torchvision returns such images unchanged. The floor
    divisions run in float64: every operand is an integer below 2^24 and a quotient is never closer than
    1 / step to an integer unless it is one, so the floors are exact (and vectorized, unlike int64 division).
    """
    h = hist.double()
    n = h.sum(dim=1, keepdim=True)  # pixels per row
    cum = h.cumsum(dim=1)
    last = cum.argmax(dim=1, keepdim=True)  # first bin holding the maximum of the cumulative = last non-empty bin
    step = torch.floor((n - h.gather(1, last)) / 255)  # [R, 1]
    lut = torch.floor((cum[:, :-1] + torch.floor(step / 2)) / step.clamp(min=1)).clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], dim=1).float()
    return torch.where(step != 0, lut, _values(hist.device))


def autocontrast_lut(hist: Tensor) -> Tensor:
    """torchvision's autocontrast per row: (v - min) / ((max - min) / 255), truncated. int32 [R, 256] -> float32."""
    seen = hist > 0
    values = _values(hist.device)
    low = torch.where(seen, values, 255.0).amin(dim=1, keepdim=True)  # [R, 1] darkest value present
    high = torch.where(seen, values, 0.0).amax(dim=1, keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255))
    low = torch.where(flat, 0.0, low)
    return ((values - low) / inv_scale).clamp_(0, 255)


VALUE_TABLES = ("Identity", "Brightness", "Contrast", "Posterize", "Solarize", "Invert")  # tables of v alone


def value_table(name: str, magnitude: Tensor, gray_mean: Tensor | None = None) -> Tensor:
    """The table of one pointwise op that needs no histogram, per image: float32 [B, 256], not yet clamped.

    Brightness and Contrast are v * float32(1 + magnitude) (+ Contrast's offset -magnitude * mean added in
    float64, so that x * f + (1 - f) * mean rounds once, like torchvision's fused add_); Invert 255 - v;
    Posterize keeps the top `magnitude` bits; Solarize inverts where v >= 255 * magnitude.

    Args:
        name: one of VALUE_TABLES. magnitude: float64 [B] (signed, torchvision's units).
        gray_mean: float32 [B] mean of the floored luma (Contrast only).
    """
    v = _values(magnitude.device)[None]  # [1, 256]
    m = magnitude[:, None]  # [B, 1] float64
    if name == "Identity":
        return v.expand(m.shape[0], 256)
    if name == "Invert":
        return (255.0 - v).expand(m.shape[0], 256)
    if name == "Posterize":
        return torch.bitwise_and(v.long(), torch.bitwise_left_shift(255, 8 - m.long().clamp(0, 8)) & 255).float()
    if name == "Solarize":
        return torch.where(v >= (255.0 * m).float(), 255.0 - v, v)
    scaled = v * (1.0 + m).float()  # float32(1 + magnitude), as torchvision's factor
    if name == "Brightness":
        return scaled
    return (scaled.double() + (-m).float().double() * gray_mean[:, None].double()).float()  # Contrast


def pointwise_lut(op: Tensor, magnitude: Tensor, hist: Tensor, gray_mean: Tensor, channels: int) -> Tensor:
    """The lookup table of each image's pointwise op (identity for other ops): uint8 [B*C, 256].

    Every image's row is `value_table` of its op (AutoContrast and Equalize per channel, from the histograms).

    Args:
        op: int64 [B]. magnitude: float64 [B] (signed, torchvision's units).
        hist: int32 [B*C, 256] (see `histograms`). gray_mean: float32 [B] mean of the floored luma.
        channels: C.
    """
    op = op[:, None]
    table = value_table("Identity", magnitude)
    for name in VALUE_TABLES[1:]:
        table = torch.where(op == OP_ID[name], value_table(name, magnitude, gray_mean), table)
    table = table.clamp(0, 255).repeat_interleave(channels, dim=0)  # [B*C, 256]
    per_channel = op.repeat_interleave(channels, dim=0)  # [B*C, 1]
    table = torch.where(per_channel == OP_ID["AutoContrast"], autocontrast_lut(hist), table)
    table = torch.where(per_channel == OP_ID["Equalize"], equalize_lut(hist), table)
    return table.to(torch.uint8)  # truncation toward zero, like torchvision's .to(uint8) after clamp


def apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """out[b, c, i, j] = lut[row, x[b, c, i, j]], row b*C + c (lut uint8 [B*C, 256]) or b (lut [B, 256]).

    x: uint8 [B, C, H, W]. Returns uint8 [B, C, H, W] NCHW.
    """
    return torch.gather(lut, 1, _pixel_index(x).view(lut.shape[0], -1)).view(x.shape)


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
    interior = torch.zeros(H, W, device=xf.device)
    interior[1:-1, 1:-1] = 1.0
    return out.mul_(interior)


def blend(xf: Tensor, op: Tensor, magnitude: Tensor, degenerate: Tensor) -> Tensor:
    """adjust_saturation (Color) and adjust_sharpness (Sharpness) per image; other images pass unchanged.

    torchvision computes Color as x * f + (1 - f) * gray and Sharpness as x + (1 - f) * (blur - x), both
    with `add_(alpha=1 - f)`, which CPU torch runs as one fused multiply-add. Here both are
    p * x + alpha * D in float32 with two roundings (addcmul), D = gray or blur - x. The two can differ
    only where the blend lands within one float32 ulp (~1.5e-5) of an integer before truncation; no pixel
    differed in 3 million random ones per op (tests/test_policy_ops.py allows 1 off on 0.01 % of pixels).

    Args:
        xf: float32 [B, 3, H, W] holding uint8 values. op: int64 [B]. magnitude: float64 [B].
        degenerate: D per image, float32 [B, 3 or 1, H, W]: `gray_floor(xf)` for Color images, `blur_3x3(xf)`
            for Sharpness images (`degenerate_image` picks per image); any values for other images.

    Returns:
        float32 [B, 3, H, W] (a scratch buffer: use before the next call), clamped to [0, 255], not yet
        truncated; exactly xf for other ops.
    """
    is_color = (op == OP_ID["Color"])[:, None, None, None]
    m = magnitude[:, None, None, None]
    p = torch.where(is_color, (1.0 + m).float(), 1.0)  # [B, 1, 1, 1] float32: torchvision's float32(1 + magnitude)
    alpha = torch.where(_is(op, *BLENDS)[:, None, None, None], (-m).float(), 0.0)  # float32(1 - f) = -magnitude
    out = torch.mul(xf, p, out=scratch("blend", tuple(xf.shape), xf.dtype, xf.device))
    return out.addcmul_(degenerate, alpha).clamp_(0, 255)


def degenerate_image(xf: Tensor, op: Tensor, gray: Tensor) -> Tensor:
    """`blend`'s D for a batch mixing both ops: gray for Color images, blur - x for the others, float32 [B, 3, H, W].

    (lerp with weight exactly 0 or 1 selects a side exactly.)
    """
    is_color = (op == OP_ID["Color"]).float()[:, None, None, None]
    return blur_3x3(xf).lerp_(gray.expand_as(xf), is_color)


# ---------------------------------------------------------------------------- one slot


def apply_op(x: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
    """Image b gets torchvision's op OPS[op[b]] with signed magnitude magnitude[b].

    Args:
        x: uint8 [B, 3, H, W], any memory format.
        op: int64 [B] indices into OPS. magnitude: float [B], torchvision's units (see the module docstring).

    Returns:
        uint8 [B, 3, H, W] NCHW (contiguous).
    """
    B, C, H, W = x.shape
    magnitude = magnitude.double()
    # 1. geometry; other images get the identity matrix, whose nearest source pixel is the pixel itself
    x = warp_nearest(x.contiguous(), grid_coefficients(op, magnitude, H, W))
    # 2. blends; every other image comes out exactly as it went in (weight 0, then truncation of an integer)
    xf = scratch("xf", (B, C, H, W), torch.float32, x.device).copy_(x)
    gray = gray_floor(xf)  # [B, 1, H, W]
    y = blend(xf, op, magnitude, degenerate_image(xf, op, gray)).to(torch.uint8)  # truncation, as torchvision
    # 3. tables, from the statistics of x (equal to y for every image with a table op), applied to y
    gray_mean = gray.sum(dim=(1, 2, 3)) / (H * W)  # integers below 2^24: the sum is exact in any order
    lut = pointwise_lut(op, magnitude, histograms(x), gray_mean, C)
    return apply_lut(y, lut)



# the ops that share one batched pass, by what they compute (the three passes of the module docstring): any mix
# of one family's ops (and Identity) runs as one call of `apply_family`; Identity alone costs nothing
TABLES = ("Brightness", "Posterize", "Solarize", "Invert", "Contrast", "AutoContrast", "Equalize")
FAMILIES = (("Identity",), GEOMETRIC, BLENDS, TABLES)
FAMILY = {name: family for family in FAMILIES for name in family}


def apply_family(x: Tensor, family: tuple[str, ...], op: Tensor, magnitude: Tensor,
                 segments: tuple[tuple[str, int, int], ...], coefficients: Tensor | None = None) -> Tensor:
    """Image b gets OPS[op[b]], every op one of `family` (one of FAMILIES) or Identity, running only that
    family's kernels, and each op's tables only on its own rows; the values are `apply_op`'s for the same op
    and magnitude (the same functions).

    Args:
        x: uint8 [B, 3, H, W] contiguous NCHW. family: one of FAMILIES. op: int64 [B].
        magnitude: float64 [B], torchvision's units.
        segments: ((name, start, stop), ...) covering rows 0..B-1 in order: every image of rows start..stop-1
            runs `name` or Identity (a padding row, an AutoAugment op whose coin failed). The policies know
            them without looking at a drawn value (policy.Policy._groups): a stratum's rows are fixed.
        coefficients: GEOMETRIC only, `grid_coefficients(op, magnitude, H, W)` if the caller has it (a policy
            computes it for all slots at once); None = computed here.

    Returns:
        uint8 [B, 3, H, W] NCHW (x itself for the Identity family).
    """
    B, C, H, W = x.shape
    if family == ("Identity",):
        return x
    if family == GEOMETRIC:  # the five share one gather; only their matrices differ
        return warp_nearest(x, grid_coefficients(op, magnitude, H, W) if coefficients is None else coefficients)
    if family == BLENDS:  # Color needs the luma only, Sharpness the blur only
        parts = []
        for name, a, b in segments:
            xf = x[a:b].float()
            degenerate = gray_floor(xf) if name == "Color" else blur_3x3(xf)
            parts.append(blend(xf, op[a:b], magnitude[a:b], degenerate).to(torch.uint8))
        return torch.cat(parts)
    # TABLES: each op's table on its own rows (AutoContrast and Equalize per channel, from the histograms;
    # Contrast from the mean luma), one lookup for them all
    index = _pixel_index(x)  # [B*C, H*W]: the histograms and the lookup read the same pixels
    per_channel = []  # [n*C, 256] per run of segments, in segment order
    for histogram, run in itertools.groupby(segments, lambda segment: segment[0] in ("AutoContrast", "Equalize")):
        if histogram:
            for name, a, b in run:
                hist = histograms(x[a:b], index[a * C:b * C])
                per_channel.append((autocontrast_lut if name == "AutoContrast" else equalize_lut)(hist))
            continue
        values = []  # tables of the pixel value alone: one row per image, spread to the channels together
        for name, a, b in run:
            gray_mean = gray_floor(x[a:b].float()).sum(dim=(1, 2, 3)) / (H * W) if name == "Contrast" else None
            values.append(value_table(name, magnitude[a:b], gray_mean))  # [n, 256]
        per_channel.append(torch.cat(values).clamp_(0, 255).repeat_interleave(C, dim=0))
    identity = (op == OP_ID["Identity"]).repeat_interleave(C)[:, None]  # [B*C, 1]
    table = torch.where(identity, _values(x.device), torch.cat(per_channel)).to(torch.uint8)  # truncates
    return torch.gather(table, 1, index).view(x.shape)


def _values(device: torch.device) -> Tensor:
    """float32 [256]: 0..255, the identity table (made once per device, read only)."""
    return constant(("values", device), lambda: torch.arange(256, device=device, dtype=torch.float32))
