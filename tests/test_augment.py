"""GpuAugment and the CPU baseline transforms, checked by value on CPU (the same code runs on CUDA)."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from fastcifar import augment_ops as ops
from fastcifar.augment import OPS, GpuAugment
from fastcifar.config import AugmentConfig
from fastcifar.cpu_transforms import cpu_transform
from fastcifar.errors import FastcifarError

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]  # CIFAR-ish, 0-255 scale


def make_images(n: int, size: int = 32, low: int = 0, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, size, size] channels_last, random so that no image equals its own mirror."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(low, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return x.contiguous(memory_format=torch.channels_last)


def augment(**fields) -> GpuAugment:
    extra = {k: fields.pop(k) for k in ("per_image_ops", "out_dtype", "num_classes") if k in fields}
    extra.setdefault("num_classes", 10)
    return GpuAugment(AugmentConfig(**fields), MEAN, STD, **extra)


# ---------------------------------------------------------------------------- geometry


def test_flips_mirror_exactly_the_drawn_images():
    torch.manual_seed(0)
    aug = augment(hflip=0.5, vflip=0.5)
    x = make_images(64)
    p = aug.sample(64, 32, 32, x.device)
    out = aug.apply(x, p)
    expected = torch.where(p.hflip[:, None, None, None], x.flip(3), x)
    expected = torch.where(p.vflip[:, None, None, None], expected.flip(2), expected)
    assert torch.equal(out, expected)
    assert 0 < int(p.hflip.sum()) < 64 and 0 < int(p.vflip.sum()) < 64  # both branches exercised


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_translate_shifts_by_the_drawn_offset_with_the_right_fill(pad_mode):
    torch.manual_seed(1)
    pad = 4
    aug = augment(crop_padding=pad, pad_mode=pad_mode, hflip=0.5)
    x = make_images(48, low=1)  # no zeros in the data: zeros in the output come from the fill
    p = aug.sample(48, 32, 32, x.device)
    out = aug.apply(x, p)
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode=pad_mode).to(torch.uint8)  # torch's own reflect / zeros
    for b in range(48):
        top, left = pad + int(p.dy[b]), pad + int(p.dx[b])
        window = padded[b, :, top : top + 32, left : left + 32]
        assert torch.equal(out[b], window.flip(2) if p.hflip[b] else window), b
    assert len(set(zip(p.dy.tolist(), p.dx.tolist()))) > 10  # offsets really vary
    assert p.dy.abs().max() == pad
    zeros = (out == 0).all(1).sum(dim=(1, 2))  # zero pixels per image
    if pad_mode == "constant":
        rows, cols = 32 - p.dy.abs(), 32 - p.dx.abs()
        assert torch.equal(zeros, 32 * 32 - rows * cols)
    else:
        assert zeros.sum() == 0


def test_cutout_zeroes_exactly_a_clipped_square():
    x = make_images(4, low=1)
    y0 = torch.tensor([10, -3, 28, 5])
    x0 = torch.tensor([10, 2, 30, 5])
    mask = torch.tensor([True, True, True, False])
    out = ops.cutout(x, y0, x0, 8, mask)
    for b, area in enumerate([64, 5 * 8, 4 * 2]):  # corners at (10, 10), (-3, 2), (28, 30): full, clipped, clipped
        hole = torch.zeros(32, 32, dtype=torch.bool)
        hole[max(int(y0[b]), 0) : int(y0[b]) + 8, max(int(x0[b]), 0) : int(x0[b]) + 8] = True
        assert int(hole.sum()) == area
        assert (out[b][:, hole] == 0).all() and torch.equal(out[b][:, ~hole], x[b][:, ~hole])
    assert torch.equal(out[3], x[3])


def test_cutout_through_gpuaugment_matches_drawn_centres():
    torch.manual_seed(2)
    aug = augment(cutout=1.0, cutout_size=6)
    x = make_images(32, low=1)
    p = aug.sample(32, 32, 32, x.device)
    out = aug.apply(x, p)
    side = lambda start: (start + 6).clamp(max=32) - start.clamp(min=0)  # noqa: E731
    expected = side(p.cut_y0) * side(p.cut_x0)
    assert torch.equal((out == 0).all(1).sum(dim=(1, 2)), expected)
    assert (expected < 36).any()  # at least one hole clipped at a border


def test_shift_scale_rotate_is_exact_for_pixel_aligned_matrices():
    x = make_images(3, low=1)
    shift = torch.tensor([[0, 0], [3 / 32, 0], [0, 0]])
    theta = ops.ssr_matrices(torch.tensor([90.0, 0.0, 0.0]), torch.ones(3), shift, 32, 32)
    out = ops.shift_scale_rotate(x, theta, torch.tensor([True, True, False]), "zeros")
    assert torch.equal(out[0], torch.rot90(x[0], 1, (1, 2))) or torch.equal(out[0], torch.rot90(x[0], -1, (1, 2)))
    assert torch.equal(out[1][:, :, 3:], x[1][:, :, :-3]) and (out[1][:, :, :3] == 0).all()  # shift right 3 px
    assert torch.equal(out[2], x[2])  # not drawn: untouched


def test_affine_grid_matches_torch():
    shift = torch.tensor([[0.05, -0.02], [0.0, 0.06]])
    theta = ops.ssr_matrices(torch.tensor([30.0, -45.0]), torch.tensor([0.9, 1.1]), shift, 24, 32)
    expected = F.affine_grid(theta, [2, 3, 24, 32], align_corners=False)
    assert torch.allclose(ops.affine_grid(theta, 24, 32), expected, atol=1e-6)


def test_color_jitter_matches_torchvision_reference():
    x = make_images(6)
    factors = torch.tensor(
        [  # brightness, contrast, saturation, hue shift
            [1.3, 0.7, 1.2, 0.1], [0.6, 1.4, 0.5, -0.2], [1.0, 1.0, 1.0, 0.0],
            [0.8, 1.1, 0.0, 0.3], [1.2, 0.6, 1.6, -0.45], [1.0, 1.0, 1.0, 0.0],
        ]
    )
    mask = torch.tensor([True, True, True, True, True, False])
    out = ops.color_jitter(x, factors, mask, hue=True).float()
    for b in range(5):
        ref = x[b].float() / 255
        ref = TF.adjust_brightness(ref, float(factors[b, 0]))
        ref = TF.adjust_contrast(ref, float(factors[b, 1]))
        ref = TF.adjust_saturation(ref, float(factors[b, 2]))
        ref = TF.adjust_hue(ref, float(factors[b, 3])) * 255
        assert (out[b] - ref).abs().max() <= 0.51, b  # only the final rounding to uint8
    assert torch.equal(out[5], x[5].float())


# ---------------------------------------------------------------------------- to the model's input


@pytest.mark.parametrize("size", [32, 56, 20])
def test_resize_matches_interpolate(size):
    x = make_images(8)
    out = augment(image_size=size, normalize=False).eval_batch(x) * 255
    ref = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=size < 32)
    assert out.shape == (8, 3, size, size)
    assert (out - ref).abs().max() <= 1.0 + 1e-3  # uint8 kernel: at most one grey level off
    assert (out - ref).abs().mean() < 0.4  # rounding to integers alone gives ~0.25


def test_train_batch_size_overrides_the_side_for_multi_scale_training():
    aug = augment(image_size=64, hflip=0.5)
    labels = torch.arange(4)
    x, _ = aug.train_batch(make_images(4), labels, size=48)
    assert x.shape == (4, 3, 48, 48)
    assert aug.train_batch(make_images(4), labels)[0].shape == (4, 3, 64, 64)
    assert aug.eval_batch(make_images(4)).shape == (4, 3, 64, 64)  # evaluation stays at image_size


def test_normalize_then_resize_equals_resize_then_normalize():
    """The CUDA order (normalize at 32 px, resize the float result) gives the CPU order's values."""
    x = make_images(4)
    scale, shift = 1 / torch.tensor(STD), -torch.tensor(MEAN) / torch.tensor(STD)
    a = ops.resize(ops.normalize(x, scale, shift, torch.float32), 72)
    b = ops.resize(x.float(), 72) * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)
    assert torch.allclose(a, b, atol=1e-4)
    assert a.is_contiguous(memory_format=torch.channels_last)


def test_normalize_gives_zero_mean_unit_std_on_the_split():
    g = torch.Generator().manual_seed(3)
    split = torch.stack(
        [torch.randint(lo, hi, (256, 32, 32), generator=g) for lo, hi in ((0, 256), (40, 200), (100, 140))], dim=1
    ).to(torch.uint8)
    mean = split.double().mean(dim=(0, 2, 3)).tolist()
    std = split.double().std(dim=(0, 2, 3)).tolist()
    out = GpuAugment(AugmentConfig(), mean, std, 10).eval_batch(split).double()
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-4)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.double), atol=1e-4)
    raw = GpuAugment(AugmentConfig(normalize=False), mean, std, 10).eval_batch(split)
    assert torch.allclose(raw, split.float() / 255)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [32, 48])
def test_output_is_channels_last_in_the_requested_dtype(dtype, size):
    torch.manual_seed(4)
    x = make_images(16)
    labels = torch.arange(16) % 10
    full = dict(crop_padding=2, hflip=0.5, cutout=0.5, jitter=0.5, ssr=0.5, image_size=size)
    out, targets = augment(**full, out_dtype=dtype).train_batch(x, labels)
    assert out.dtype == dtype and out.shape == (16, 3, size, size)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert targets.dtype == torch.int64 and torch.equal(targets, labels)
    ev = augment(image_size=size, out_dtype=dtype).eval_batch(x)
    ref = augment(image_size=size).eval_batch(x)
    tol = {torch.float32: 1e-6, torch.bfloat16: 0.04, torch.float16: 0.004}[dtype]
    assert ev.dtype == dtype and (ev.float() - ref).abs().max() <= tol


def test_eval_batch_applies_no_randomness():
    aug = augment(crop_padding=4, hflip=0.5, vflip=0.5, cutout=0.5, jitter=0.5, ssr=0.5, mixup_alpha=1.0, image_size=40)
    x = make_images(16)
    torch.manual_seed(5)
    a = aug.eval_batch(x)
    b = aug.eval_batch(x)
    assert torch.equal(a, b)
    assert torch.equal(a, augment(image_size=40).eval_batch(x))  # same as a config with no augmentation


def test_per_image_ops_false_leaves_geometry_untouched():
    torch.manual_seed(6)
    geometric = dict(crop_padding=4, hflip=1.0, vflip=1.0, cutout=1.0, ssr=1.0, jitter=1.0)
    x = make_images(8, size=40)  # already cropped and resized by the CPU transform
    out, _ = augment(**geometric, image_size=40, per_image_ops=False).train_batch(x, torch.zeros(8, dtype=torch.long))
    assert torch.equal(out, augment(image_size=40).eval_batch(x))
    y = make_images(8)  # still 32 px: only resized
    out, _ = augment(**geometric, image_size=40, per_image_ops=False).train_batch(y, torch.zeros(8, dtype=torch.long))
    assert torch.equal(out, augment(image_size=40).eval_batch(y))


# ---------------------------------------------------------------------------- mixup / cutmix


def test_mixup_images_and_soft_labels():
    torch.manual_seed(7)
    B = 12
    aug = augment(mixup_alpha=0.4, num_classes=B)
    x, labels = make_images(B), torch.arange(B)  # distinct labels: lam readable from the targets
    out, targets = aug.train_batch(x, labels)
    clean = aug.eval_batch(x)
    partner = ops.partner_index(B, x.device)
    lam = targets[0, 0]
    assert targets.shape == (B, B) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(B))
    assert 0 < lam < 1
    assert torch.allclose(targets[labels, labels], lam.expand(B))
    assert torch.allclose(targets[labels, partner], 1 - lam.expand(B))
    assert torch.allclose(out, lam * clean + (1 - lam) * clean[partner], atol=1e-5)


def test_cutmix_lambda_matches_the_pasted_area():
    B, S = 8, 40
    aug = augment(cutmix_alpha=1.0, image_size=S, num_classes=B)
    x, labels = make_images(B), torch.arange(B)
    clean = aug.eval_batch(x)
    partner = ops.partner_index(B, x.device)
    clipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out, targets = aug.train_batch(x, labels)
        pasted = (out == clean[partner]).all(1) & (out != clean).any(1)  # [B, S, S]
        assert torch.equal(pasted | (out == clean).all(1), torch.ones_like(pasted))  # every pixel is one or the other
        box = pasted[0]
        assert (pasted == box).all()  # one box for the whole batch
        rows, cols = box.any(1), box.any(0)
        assert torch.equal(box, rows[:, None] & cols[None, :])  # a rectangle
        lam = targets[0, 0]
        assert torch.allclose(lam, 1 - box.float().mean(), atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(B))
        clipped += int(box.any() and (rows[0] or rows[-1] or cols[0] or cols[-1]))
    assert clipped > 0  # the border clipping path was exercised


def test_mix_prob_and_switch_are_per_batch_decisions():
    torch.manual_seed(8)
    aug = augment(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.6, mix_switch_prob=0.25)
    draws = [aug.sample_mix(16, torch.device("cpu")) for _ in range(600)]
    mixed = torch.stack([d.mixed for d in draws])
    cut = torch.stack([d.cutmix for d in draws])
    _within_3_sigma(mixed.float().mean(), 0.6, 600)
    _within_3_sigma(cut.float().mean(), 0.25, 600)
    for d in draws:
        w = d.other_weight.expand(1, 1, 16, 16)[0, 0]
        if not d.mixed:  # unmixed batch: own image and own label only
            assert (w == 0).all() and d.lam == 1
        elif d.cutmix:  # a 0/1 box whose area is the partner's label weight
            assert set(w.unique().tolist()) <= {0.0, 1.0} and torch.allclose(1 - d.lam, w.mean())
        else:  # mixup: one weight everywhere, equal to the partner's label weight
            assert (w == w[0, 0]).all() and torch.allclose(1 - d.lam, w[0, 0])


# ---------------------------------------------------------------------------- probabilities


def _within_3_sigma(frac, p: float, n: int) -> None:
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(float(frac) - p) <= 3 * sigma, (float(frac), p, n)


def test_each_op_fires_with_its_probability():
    torch.manual_seed(9)
    probs = dict(hflip=0.3, vflip=0.1, cutout=0.5, jitter=0.7, ssr=0.2)
    aug = augment(**probs)
    p = aug.sample(4000, 32, 32, torch.device("cpu"))
    for name, prob in probs.items():
        _within_3_sigma(getattr(p, name).float().mean(), prob, 4000)


def test_one_of_applies_exactly_one_op_per_image():
    torch.manual_seed(10)
    probs = dict(ssr=0.5, cutout=0.5, jitter=0.5, hflip=1.0, vflip=0.5)
    aug = augment(one_of=True, **probs)
    p = aug.sample(3000, 32, 32, torch.device("cpu"))
    masks = torch.stack([getattr(p, name) for name in OPS])  # [5, B]
    assert torch.equal(masks.sum(0), torch.ones(3000, dtype=torch.long))
    total = sum(probs.values())
    for name in OPS:
        _within_3_sigma(getattr(p, name).float().mean(), probs[name] / total, 3000)
    # by value: with only the flips active, each image is exactly one of its two mirrors
    flips = augment(one_of=True, hflip=0.5, vflip=0.5)
    x = make_images(64)
    out = flips.apply(x, flips.sample(64, 32, 32, x.device))
    h = (out == x.flip(3)).flatten(1).all(1)
    v = (out == x.flip(2)).flatten(1).all(1)
    assert torch.equal(h ^ v, torch.ones(64, dtype=torch.bool)) and 0 < int(h.sum()) < 64


# ---------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "fields, mean, std",
    [
        ({}, MEAN, [63.0, 0.0, 66.7]),
        ({}, MEAN[:2], STD),
    ],  # the config's own ranges (augment.hflip: 1.5, ...) are refused by fastcifar.config: tests/test_config.py
)
def test_bad_settings_raise_one_sentence(fields, mean, std):
    with pytest.raises(FastcifarError) as err:
        GpuAugment(AugmentConfig(**fields), mean, std, 10)
    message = str(err.value)
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    assert all(f"augment.{key}" in message for key in fields) and ("std" in message or fields)


# ---------------------------------------------------------------------------- CPU baseline transforms


def test_cpu_transform_shape_dtype_and_pickles():
    cfg = AugmentConfig(image_size=48, crop_padding=4, hflip=0.5, vflip=0.5, cutout=0.5, jitter=0.5, ssr=0.5)
    img = make_images(1)[0]
    for one_of in (False, True):
        for train in (True, False):
            fn = pickle.loads(pickle.dumps(cpu_transform(dataclasses.replace(cfg, one_of=one_of), train)))
            out = fn(img)
            assert out.shape == (3, 48, 48) and out.dtype == torch.uint8
    ref = F.interpolate(img[None].float(), size=(48, 48), mode="bilinear", align_corners=False)[0]
    assert (cpu_transform(cfg, train=False)(img).float() - ref).abs().max() <= 1.0 + 1e-3


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_cpu_transform_flip_and_crop_are_exact(pad_mode):
    torch.manual_seed(11)
    img = make_images(1)[0]
    assert torch.equal(cpu_transform(AugmentConfig(hflip=1.0), True)(img), img.flip(2))
    assert torch.equal(cpu_transform(AugmentConfig(vflip=1.0), True)(img), img.flip(1))
    crop = cpu_transform(AugmentConfig(crop_padding=3, pad_mode=pad_mode), True)
    padded = F.pad(img[None].float(), (3, 3, 3, 3), mode=pad_mode)[0].to(torch.uint8)
    windows = {(top, left): padded[:, top : top + 32, left : left + 32] for top in range(7) for left in range(7)}
    seen = set()
    for _ in range(40):
        out = crop(img)
        match = [k for k, w in windows.items() if torch.equal(out, w)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 5


def test_cpu_transform_flip_probability():
    torch.manual_seed(12)
    img = make_images(1)[0]
    fn = cpu_transform(AugmentConfig(hflip=0.3), True)
    flipped = sum(torch.equal(fn(img), img.flip(2)) for _ in range(1000))
    _within_3_sigma(flipped / 1000, 0.3, 1000)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_crop_flip_and_normalize_give_the_same_pixels_from_either_memory_format(pad_mode):
    # the CPU takes a per-plane path for channels_last input (crop/flip) and NCHW input (normalize)
    from fastcifar import augment_ops

    torch.manual_seed(5)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    dy, dx = torch.randint(-4, 5, (2, 6))
    hflip, vflip = torch.rand(6) < 0.5, torch.rand(6) < 0.5
    nchw = augment_ops.crop_flip(x, dy, dx, hflip, vflip, 4, pad_mode)
    nhwc = augment_ops.crop_flip(x.contiguous(memory_format=torch.channels_last), dy, dx, hflip, vflip, 4, pad_mode)
    assert torch.equal(nchw, nhwc) and nhwc.is_contiguous()
    scale, shift = torch.tensor([0.02, 0.03, 0.04]), torch.tensor([-1.0, -2.0, -3.0])
    for dtype in (torch.float32, torch.bfloat16):
        a = augment_ops.normalize(nchw, scale, shift, dtype)
        b = augment_ops.normalize(nchw.contiguous(memory_format=torch.channels_last), scale, shift, dtype)
        assert torch.equal(a, b) and a.is_contiguous(memory_format=torch.channels_last)
        want = nchw.double() * scale.double().view(1, 3, 1, 1) + shift.double().view(1, 3, 1, 1)
        bf16 = dtype == torch.bfloat16  # scale and shift are rounded to bf16 too: ~1e-3 of 255 * scale
        torch.testing.assert_close(a.double(), want, rtol=1e-2 if bf16 else 1e-6, atol=5e-2 if bf16 else 1e-5)
