"""RandomResizedCrop on the device, alternating flips, TTA views and per-image mixup, checked by value."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fastcifar.alternate_flip import alternate_flips, image_bits
from fastcifar.augment import GpuAugment, tta_batches
from fastcifar.config import AugmentConfig
from fastcifar.cpu_transforms import cpu_transform
from fastcifar.resized_crop import resized_crop, sample_boxes

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


def make_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


# ---------------------------------------------------------------------------- RandomResizedCrop


@pytest.mark.parametrize("size", [32, 56, 224])
def test_resized_crop_matches_torchvision_per_image(size):
    """Tolerance 1e-3 on the 0-255 scale: both are float32 bilinear interpolation, summed in a different order."""
    torch.manual_seed(0)
    x = make_images(12).float()
    boxes = sample_boxes(12, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), torch.device("cpu"))
    out = resized_crop(x, boxes, size)
    assert out.shape == (12, 3, size, size) and out.is_contiguous(memory_format=torch.channels_last)
    for b, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(x[b], top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=False)
        assert (out[b] - ref).abs().max() <= 1e-3, (b, top, left, h, w)


def test_sample_boxes_follow_torchvisions_rules():
    torch.manual_seed(1)
    boxes = sample_boxes(20_000, 32, 32, (0.25, 1.0), (3 / 4, 4 / 3), torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert torch.all((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32))
    area = (h * w).double() / 1024
    assert 0.22 <= float(area.min()) and float(area.max()) <= 1.0  # the scale range, up to rounding of w, h
    ratio = (w / h).double()
    assert float(ratio.min()) >= 0.6 and float(ratio.max()) <= 1.45
    assert len(set(top.tolist())) > 10 and len(set(left.tolist())) > 10  # positions really vary
    # no try fits (aspect ratio far from square, area near the whole image): torchvision's centre-crop fallback
    fallback = sample_boxes(8, 32, 32, (0.9, 1.0), (4.0, 5.0), torch.device("cpu"))
    assert fallback.tolist() == [[12, 0, 8, 32]] * 8  # w = 32, h = round(32 / 4), centred


def test_gpuaugment_rrc_outputs_the_model_side_and_eval_does_not_crop():
    torch.manual_seed(2)
    aug = GpuAugment(AugmentConfig(rrc_scale=[0.2, 1.0], image_size=64), MEAN, STD, 10)
    x = make_images(8).contiguous(memory_format=torch.channels_last)
    out, _ = aug.train_batch(x, torch.zeros(8, dtype=torch.long))
    assert out.shape == (8, 3, 64, 64) and out.is_contiguous(memory_format=torch.channels_last)
    p = aug.sample(8, 32, 32, x.device)
    scale, shift = aug._device_consts(x.device)
    manual = resized_crop((x.float() * scale[None, :, None, None] + shift[None, :, None, None]), p.rrc_box, 64)
    assert torch.allclose(aug.to_model_input(x, None, p.rrc_box), manual, atol=1e-4)
    assert torch.allclose(aug.eval_batch(x), GpuAugment(AugmentConfig(image_size=64), MEAN, STD, 10).eval_batch(x))


# ---------------------------------------------------------------------------- alternating flips


def test_alternate_flip_bits_are_balanced_and_a_function_of_the_pixels():
    x = make_images(4000)
    bits = image_bits(x, seed=0)
    assert abs(float(bits.float().mean()) - 0.5) < 0.03
    assert torch.equal(image_bits(x.contiguous(memory_format=torch.channels_last), 0), bits)  # layout-free
    perm = torch.randperm(4000)
    assert torch.equal(image_bits(x[perm], 0), bits[perm])  # order-free: no index needed
    assert not torch.equal(image_bits(x, 1), bits)  # the seed picks another half
    assert torch.equal(alternate_flips(x, 0, 3), ~bits) and torch.equal(alternate_flips(x, 0, 4), bits)


def test_gpuaugment_alternates_each_image_between_epochs():
    aug = GpuAugment(AugmentConfig(hflip=0.5, hflip_mode="alternate", normalize=False), MEAN, STD, 10, seed=5)
    x = make_images(64)
    mirrored = []
    for epoch in range(3):
        aug.set_epoch(epoch)
        out, _ = aug.train_batch(x, torch.zeros(64, dtype=torch.long))
        pixels = (out * 255).round().to(torch.uint8)
        flipped = torch.tensor([torch.equal(pixels[b], x[b].flip(-1)) for b in range(64)])
        assert torch.all(flipped | torch.tensor([torch.equal(pixels[b], x[b]) for b in range(64)]))
        mirrored.append(flipped)
    assert torch.equal(mirrored[1], ~mirrored[0]) and torch.equal(mirrored[2], mirrored[0])
    assert 10 < int(mirrored[0].sum()) < 54


def test_cpu_baseline_flips_the_same_images_as_the_device():
    cfg = AugmentConfig(hflip=0.5, hflip_mode="alternate")
    fn = cpu_transform(cfg, train=True, seed=5)
    x = make_images(32)
    for epoch in (0, 1):
        fn.set_epoch(epoch)
        device_says = alternate_flips(x, 5, epoch)
        cpu_flipped = torch.tensor([torch.equal(fn(x[b]), x[b].flip(-1)) for b in range(32)])
        assert torch.equal(cpu_flipped, device_says)


# ---------------------------------------------------------------------------- TTA


def test_flip_translate_views_and_weights():
    x = make_images(4)
    groups = tta_batches(x, lambda images: images.float(), "flip_translate")
    assert [(views, weight) for _, views, weight in groups] == [(2, 0.5), (2, 0.25), (2, 0.25)]
    up_left = groups[1][0][:4]
    padded = torch.nn.functional.pad(x.float(), (1, 1, 1, 1), mode="reflect")
    assert torch.equal(up_left, padded[:, :, 0:32, 0:32])  # airbench's crops of the 1 px reflect padding
    assert torch.equal(groups[2][0][:4], padded[:, :, 2:34, 2:34])
    assert torch.equal(groups[2][0][4:], padded[:, :, 2:34, 2:34].flip(3))
    assert len(tta_batches(x, lambda i: i, True)) == 1 and tta_batches(x, lambda i: i, "none")[0][1] == 1


def test_eval_pass_flip_translate_is_the_weighted_mean_of_softmaxes():
    from fastcifar.engine.step import eval_pass

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    x = make_images(6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    sums = eval_pass(model, [(x, labels)], lambda images: images.float() / 255, nullcontext(), 3, tta="flip_translate")
    probs = sum(weight * model(v.float() / 255).softmax(1).view(2, 6, 3).mean(0)
                for v, _, weight in tta_batches(x, lambda i: i, "flip_translate"))
    expected = -probs.log().gather(1, labels[:, None]).sum()
    assert math.isclose(float(sums["loss_sum"]), float(expected.detach()), rel_tol=1e-5)


# ---------------------------------------------------------------------------- per-image mixup / cutmix


def test_mix_elem_gives_each_image_its_own_lambda_and_matching_labels():
    torch.manual_seed(4)
    aug = GpuAugment(AugmentConfig(mixup_alpha=1.0, mix_mode="elem", normalize=False), MEAN, STD, 4)
    x = make_images(8).float() / 255
    labels = torch.tensor([0, 1, 2, 3, 1, 2, 3, 0])  # partners differ in label
    p = aug.sample_mix(32, x.device, 8)
    assert p.lam.shape == (8,) and len(set(p.lam.tolist())) == 8  # one lambda per image
    out, targets = aug.mix(x.clone(), labels, p)
    w = p.other_weight.view(8)
    partner = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    assert torch.allclose(out, (1 - w)[:, None, None, None] * x + w[:, None, None, None] * x[partner], atol=1e-6)
    assert torch.allclose(targets[torch.arange(8), labels], p.lam, atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(8))


def test_cutmix_elem_pastes_a_box_per_image_with_its_area_as_label_weight():
    torch.manual_seed(5)
    aug = GpuAugment(AugmentConfig(cutmix_alpha=1.0, mix_mode="elem", normalize=False), MEAN, STD, 8)
    x = make_images(8).float() / 255
    p = aug.sample_mix(32, x.device, 8)
    out, targets = aug.mix(x.clone(), torch.arange(8), p)  # every image its own class: the weights are visible
    partner = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    for b in range(8):
        pasted = (out[b] == x[partner[b]]).all(0) & (out[b] != x[b]).any(0)
        assert math.isclose(float(pasted.float().mean()), 1 - float(p.lam[b]), abs_tol=0.02)
        assert math.isclose(float(targets[b, b]), float(p.lam[b]), abs_tol=1e-6)
        assert math.isclose(float(targets[b, partner[b]]), 1 - float(p.lam[b]), abs_tol=1e-6)
    assert len(set(p.lam.tolist())) > 4


def test_tta_config_modes_and_the_old_boolean_spelling():
    from fastcifar.config import apply_overrides, from_dict
    from fastcifar.errors import FastcifarError

    assert from_dict({"train": {"tta": True}}).train.tta == "flip"
    assert from_dict({"train": {"tta": False}}).train.tta == "none"
    assert from_dict(apply_overrides({}, ["train.tta=flip_translate"])).train.tta == "flip_translate"
    assert from_dict(apply_overrides({}, ["train.tta=true"])).train.tta == "flip"
    with pytest.raises(FastcifarError, match="flip_translate"):
        from_dict({"train": {"tta": "flip_translat"}})
