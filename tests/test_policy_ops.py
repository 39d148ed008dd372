"""The batched auto-augment ops, checked by value against torchvision.transforms.v2.functional per image.

Tolerance: every op is compared exactly (max abs diff 0) on 64 random images per op, magnitudes drawn
from torchvision's own bins with random signs. Color and Sharpness are the one documented exception
(policy_ops.blend: two roundings where torchvision's add_ fuses a multiply-add); they may be 1 off on at
most 0.01 % of pixels, and in practice match exactly here too.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fastcifar import policy_ops as P

NEAREST = InterpolationMode.NEAREST
# the widest ranges torchvision uses (TrivialAugmentWide): shear tan, px, degrees, factor - 1
RANGES = {"ShearX": 0.99, "ShearY": 0.99, "TranslateX": 32.0, "TranslateY": 32.0, "Rotate": 135.0,
          "Brightness": 0.99, "Color": 0.99, "Contrast": 0.99, "Sharpness": 0.99}


def reference(img: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """torchvision's `_apply_image_or_video_transform` for one uint8 image (NEAREST, fill None)."""
    shear = math.degrees(math.atan(m))
    return {
        "Identity": lambda: img,
        "ShearX": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[shear, 0.0],
                                    interpolation=NEAREST, fill=None, center=[0, 0]),
        "ShearY": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, shear],
                                    interpolation=NEAREST, fill=None, center=[0, 0]),
        "TranslateX": lambda: TF.affine(img, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0],
                                        interpolation=NEAREST, fill=None),
        "TranslateY": lambda: TF.affine(img, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0],
                                        interpolation=NEAREST, fill=None),
        "Rotate": lambda: TF.rotate(img, angle=m, interpolation=NEAREST, fill=None),
        "Brightness": lambda: TF.adjust_brightness(img, 1.0 + m),
        "Color": lambda: TF.adjust_saturation(img, 1.0 + m),
        "Contrast": lambda: TF.adjust_contrast(img, 1.0 + m),
        "Sharpness": lambda: TF.adjust_sharpness(img, 1.0 + m),
        "Posterize": lambda: TF.posterize(img, int(m)),
        "Solarize": lambda: TF.solarize(img, 255 * m),
        "AutoContrast": lambda: TF.autocontrast(img),
        "Equalize": lambda: TF.equalize(img),
        "Invert": lambda: TF.invert(img),
    }[name]()


def images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, 32, 32]: random, some low-contrast, one flat and one two-valued (edge cases of the tables)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    x[: n // 4] = x[: n // 4] // 4 + 60  # narrow histograms: autocontrast / equalize really stretch
    x[n // 4] = 77  # flat: autocontrast and equalize leave it unchanged
    x[n // 4 + 1] = torch.where(x[n // 4 + 1] > 128, 200, 10).to(torch.uint8)  # two values
    return x


def magnitudes(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """float64 [n] magnitudes on torchvision's bins, with random signs where the op is signed."""
    g = torch.Generator().manual_seed(seed)
    if name in RANGES:
        values = torch.linspace(0, RANGES[name], 31)[torch.randint(31, (n,), generator=g)].double()
        return values * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    if name == "Posterize":
        return torch.randint(0, 9, (n,), generator=g).double()
    if name == "Solarize":
        return torch.linspace(1.0, 0.0, 31)[torch.randint(31, (n,), generator=g)].double()
    return torch.zeros(n, dtype=torch.float64)


def compare(out: torch.Tensor, x: torch.Tensor, names: list[str], mags: torch.Tensor) -> tuple[int, int]:
    """(max abs diff, differing pixels) of out against torchvision per image."""
    worst = differing = 0
    for b in range(x.shape[0]):
        diff = (out[b].int() - reference(x[b], names[b], float(mags[b])).int()).abs()
        worst, differing = max(worst, int(diff.max())), differing + int((diff > 0).sum())
    return worst, differing


@pytest.mark.parametrize("name", P.OPS)
def test_each_op_matches_torchvision(name):
    x, n = images(64), 64
    mags = magnitudes(name, n)
    out = P.apply_op(x, torch.full((n,), P.OP_ID[name]), mags)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    worst, differing = compare(out, x, [name] * n, mags)
    if name in P.BLENDS:
        assert worst <= 1 and differing <= 1e-4 * out.numel(), (worst, differing)
    else:
        assert worst == 0, (name, worst, differing)


def test_mixed_ops_in_one_batch_each_image_gets_its_own():
    n = 120
    x = images(n, seed=3)
    g = torch.Generator().manual_seed(4)
    op = torch.randint(0, len(P.OPS), (n,), generator=g)
    names = [P.OPS[i] for i in op.tolist()]
    mags = torch.stack([magnitudes(name, 1, seed=i)[0] for i, name in enumerate(names)])
    out = P.apply_op(x.contiguous(memory_format=torch.channels_last), op, mags)
    worst, differing = compare(out, x, names, mags)
    assert worst <= 1 and differing <= 1e-4 * out.numel()
    assert len(set(names)) == len(P.OPS)  # every op exercised next to the others


@pytest.mark.parametrize("angle", [0.0, 90.0, -90.0, 180.0, 45.0, -135.0])
def test_rotate_matches_torchvision_fast_paths(angle):
    """F.rotate takes rot90 shortcuts at multiples of 90 degrees; the batched affine lands on the same pixels."""
    x = images(4)
    out = P.apply_op(x, torch.full((4,), P.OP_ID["Rotate"]), torch.full((4,), angle, dtype=torch.float64))
    assert compare(out, x, ["Rotate"] * 4, torch.full((4,), angle))[0] == 0


def test_geometric_ops_fill_zeros_and_identity_is_a_copy():
    x = images(8).clamp(min=1)  # no zeros in the data: zeros in the output are the fill
    shift = P.apply_op(x, torch.full((8,), P.OP_ID["TranslateX"]), torch.full((8,), 5.0, dtype=torch.float64))
    assert (shift[..., :5] == 0).all() and torch.equal(shift[..., 5:], x[..., :-5])
    same = P.apply_op(x, torch.full((8,), P.OP_ID["Identity"]), torch.zeros(8, dtype=torch.float64))
    assert torch.equal(same, x)


def test_equalize_and_autocontrast_tables_are_per_image_and_channel():
    """One image's histogram must not leak into its neighbour's table (batched scatter_add_ rows)."""
    x = images(6)
    x[1, 2] = x[1, 2] // 8  # one dark channel
    for name in ("Equalize", "AutoContrast"):
        batch = P.apply_op(x, torch.full((6,), P.OP_ID[name]), torch.zeros(6, dtype=torch.float64))
        for b in range(6):
            alone = P.apply_op(x[b : b + 1], torch.full((1,), P.OP_ID[name]), torch.zeros(1, dtype=torch.float64))
            assert torch.equal(batch[b], alone[0])


@pytest.mark.parametrize("family, names", [
    (P.TABLES, ["Equalize", "Brightness", "AutoContrast", "Solarize", "Contrast", "Posterize", "Invert"]),
    (P.BLENDS, ["Sharpness", "Color"]),
    (P.GEOMETRIC, ["Rotate", "ShearX", "TranslateY", "ShearY", "TranslateX"]),
])
def test_a_family_takes_its_segments_in_any_order(family, names):
    # apply_family's segments may come in any order (the policies sort them; a caller need not): the pixels are
    # those of the whole-batch pass, Identity rows inside a segment (a failed AutoAugment coin) included
    torch.manual_seed(3)
    group = 3
    op = torch.tensor([P.OP_ID[name] for name in names]).repeat_interleave(group)
    op[1] = P.OP_ID["Identity"]
    magnitude = torch.empty(len(op), dtype=torch.float64).uniform_(-0.5, 0.5)
    for k, name in enumerate(names):
        rows = slice(k * group, (k + 1) * group)
        if name == "Posterize":
            magnitude[rows] = 4.0  # bits
        elif name == "Solarize":
            magnitude[rows] = 0.5  # threshold, a fraction of 255
        elif name in ("TranslateX", "TranslateY", "Rotate"):
            magnitude[rows] *= 20  # px, degrees
    x = torch.randint(0, 256, (len(op), 3, 32, 32), dtype=torch.uint8)
    segments = tuple((name, k * group, (k + 1) * group) for k, name in enumerate(names))
    assert torch.equal(P.apply_family(x, family, op, magnitude, segments), P.apply_op(x, op, magnitude))


@pytest.mark.parametrize("pixels", [1024, 50_000, 2**23 - 1])
def test_equalize_table_floors_are_exact_in_float32_up_to_its_limit(pixels):
    # equalize_lut floors float quotients; the same table in int64 floor division, on histograms of `pixels` values
    # (random, a few bins only, one bin only), must agree entry by entry
    g = torch.Generator().manual_seed(pixels)
    rows = [torch.multinomial(torch.rand(256, generator=g) ** k, pixels, replacement=True, generator=g)
            for k in (1, 8, 64)]
    one_bin = torch.zeros(256, dtype=torch.int64).index_fill_(0, torch.tensor([7]), pixels)
    hist = torch.stack([torch.bincount(r, minlength=256) for r in rows] + [one_bin])
    cum = hist.cumsum(dim=1)
    last = torch.stack([row[row.nonzero().max()] for row in hist])[:, None]
    step = (pixels - last) // 255
    below = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=1)
    expected = ((below + step // 2) // step.clamp(min=1)).clamp(0, 255)
    expected = torch.where(step != 0, expected, torch.arange(256))
    assert torch.equal(P.equalize_lut(hist.int(), pixels), expected.float())
