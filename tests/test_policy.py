"""Policies drawn per image on the device: tables from torchvision, draw frequencies, no host sync, the CPU baseline."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from fastcifar.augment import GpuAugment
from fastcifar.config import AugmentConfig, from_dict
from fastcifar.cpu_transforms import NoisyRandAugment, cpu_transform
from fastcifar.engine.host_sync import HostSyncDetector
from fastcifar.errors import FastcifarError
from fastcifar.policy import Policy, _interpolate, autoaugment_cifar10
from fastcifar.policy_ops import OP_ID, OPS

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]
N = 20_000  # draws per frequency check: 3 sigma of a 1/14 frequency is ~0.55 %


def within(observed: float, expected: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-9


def per_image_draws(policy: Policy, batch: int, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ops and magnitudes [S, batches * batch] from `batches` separate draws of `batch` images."""
    draws = [policy.sample(batch, 32, 32, torch.device("cpu"))[:2] for _ in range(batches)]
    return torch.cat([d[0] for d in draws], dim=1), torch.cat([d[1] for d in draws], dim=1)


@pytest.mark.parametrize("name, strata", [("randaugment", 14), ("trivialaugment", 14), ("autoaugment", 25)])
def test_each_image_draws_every_op_uniformly_across_batches(name, strata):
    # image i of every batch: its op (AutoAugment: its sub-policy) is uniform over the K strata, whatever its
    # place; a batch of 20 is not a multiple of K (14 ops, 25 sub-policies): padding positions keep it exact
    torch.manual_seed(6)
    policy, batch, batches = Policy(name), 20, 2000
    picks = []
    for _ in range(batches):
        _, _, order = policy.sample(batch, 32, 32, torch.device("cpu"))
        position = torch.argsort(order[0])[:batch]  # where each image sits in the permutation
        picks.append(position // (order.shape[1] // strata))  # the op (sub-policy) of its position
    picks = torch.stack(picks)  # [batches, B]
    for image in (0, 7, 19):
        counts = torch.bincount(picks[:, image], minlength=strata)
        assert all(within(float(c) / batches, 1 / strata, batches, sigmas=4.5) for c in counts), (image, counts)


@pytest.mark.parametrize("batch", [28, 256, 5])
def test_ops_per_batch_are_the_fixed_stratified_counts(batch):
    # every op owns G = ceil(B / 14) of the 14 G positions; B images fill all but 14 G - B of them
    torch.manual_seed(7)
    ops, _, order = Policy("randaugment", num_ops=2).sample(batch, 32, 32, torch.device("cpu"))
    group = -(-batch // 14)
    assert order.shape == (2, 14 * group)
    for slot in range(2):
        assert torch.equal(order[slot].sort().values, torch.arange(14 * group))  # a permutation of the positions
        counts = torch.bincount(ops[slot], minlength=14)
        assert counts.sum() == batch and int(counts.max()) <= group
        assert int(counts.min()) >= group - (14 * group - batch)  # at worst all the padding in one op's share
        # an image runs the op of its position
        position = torch.argsort(order[slot])[:batch]
        assert torch.equal(ops[slot], position // group)
    if batch == 28:
        assert torch.all(torch.bincount(ops.flatten(), minlength=14) == 4)  # exactly 2 images per op per slot


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment"])
@pytest.mark.parametrize("batch", [64, 13])
def test_grouped_apply_equals_the_whole_batch_pass(name, batch):
    # each op on its own images (apply with order) computes exactly what every op over the whole batch does
    torch.manual_seed(8)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    x[0] = x[0] // 4 + 60  # a narrow histogram: equalize and autocontrast really stretch
    policy = Policy(name, num_ops=3)
    ops, mags, order = policy.sample(batch, 32, 32, x.device)
    assert torch.equal(policy.apply(x, ops, mags, order), policy.apply(x, ops, mags))


def test_randaugment_draws_uniform_ops_fixed_magnitude_and_fair_signs():
    torch.manual_seed(0)
    policy = Policy("randaugment", num_ops=3, magnitude=9)
    ops, mags, _ = policy.sample(N, 32, 32, torch.device("cpu"))
    assert ops.shape == mags.shape == (3, N)
    counts = torch.bincount(ops.flatten(), minlength=len(OPS))
    assert counts[OP_ID["Invert"]] == 0  # not in RandAugment's space
    for k in range(len(OPS) - 1):
        assert within(float(counts[k]) / ops.numel(), 1 / 14, ops.numel()), OPS[k]
    space = v2.RandAugment._AUGMENTATION_SPACE
    for name in ("Rotate", "ShearX", "TranslateY", "Brightness", "Solarize", "Posterize"):
        fn, signed = space[name]
        expected = float(fn(31, 32, 32)[9])  # torchvision's value at bin 9, float32
        m = mags[ops == OP_ID[name]]
        assert torch.all(m.abs() == expected), name  # exactly torchvision's bin, not an approximation
        if signed:
            assert within(float((m < 0).float().mean()), 0.5, m.numel())
        else:
            assert torch.all(m >= 0)


def test_trivialaugment_draws_every_bin_uniformly():
    torch.manual_seed(1)
    ops, mags, _ = Policy("trivialaugment").sample(N, 32, 32, torch.device("cpu"))
    assert ops.shape == (1, N)
    rotate = mags[ops == OP_ID["Rotate"]].abs()
    bins = torch.linspace(0.0, 135.0, 31).double()
    index = (rotate[:, None] == bins[None]).float().argmax(1)
    assert torch.all((rotate[:, None] == bins[None]).any(1))  # every magnitude is one of torchvision's bins
    freq = torch.bincount(index, minlength=31).double() / rotate.numel()
    assert all(within(float(f), 1 / 31, rotate.numel(), sigmas=4.5) for f in freq)


def test_autoaugment_follows_the_cifar10_sub_policies():
    torch.manual_seed(2)
    ops, mags = per_image_draws(Policy("autoaugment"), 20, N // 20)
    sub_ops, probs, bins = autoaugment_cifar10()
    assert sub_ops.shape == (25, 2)
    # P(slot 0 runs Invert) = P(sub-policy 0) * 0.1; Invert appears only in sub-policies 0, 14 (p 0) and 23 (slot 1)
    assert within(float((ops[0] == OP_ID["Invert"]).float().mean()), 0.1 / 25, N)
    # TranslateY in slot 0: sub-policies 12 (p 0.4), 21 (p 0.9), 24 (p 0.7), all at bin 3 or 9 of 10
    expected = (0.4 + 0.9 + 0.7) / 25
    assert within(float((ops[0] == OP_ID["TranslateY"]).float().mean()), expected, N)
    table = v2.AutoAugment._AUGMENTATION_SPACE["TranslateY"][0](10, 32, 32)
    allowed = {float(table[3]), float(table[9])}
    assert set(mags[0][ops[0] == OP_ID["TranslateY"]].abs().tolist()) == allowed


def test_magnitude_std_adds_noise_around_m_and_inf_is_uniform():
    torch.manual_seed(3)
    bins = Policy("randaugment", magnitude=9, magnitude_std=2.0)._bins((1, N), torch.device("cpu"))
    assert abs(float(bins.mean()) - 9) < 0.1 and abs(float(bins.std()) - 2.0) < 0.1
    bins = Policy("randaugment", magnitude=30, magnitude_std=2.0)._bins((1, N), torch.device("cpu"))
    assert float(bins.max()) == 30.0  # clipped to the last bin
    bins = Policy("randaugment", magnitude=10, magnitude_std=float("inf"))._bins((1, N), torch.device("cpu"))
    assert 0 <= float(bins.min()) and float(bins.max()) <= 10 and abs(float(bins.mean()) - 5) < 0.15


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment"])
def test_policy_changes_images_per_image_and_keeps_uint8(name):
    torch.manual_seed(4)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    policy = Policy(name)
    ops, mags, order = policy.sample(64, 32, 32, x.device)
    out = policy.apply(x, ops, mags, order)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    changed = (out != x).flatten(1).any(1)
    assert float(changed.float().mean()) > (0.3 if name == "autoaugment" else 0.7)  # AutoAugment's ops often skip
    one = policy.apply(x[5:6], ops[:, 5:6], mags[:, 5:6])
    assert torch.equal(out[5:6], one)  # an image's result does not depend on its neighbours


@pytest.mark.parametrize("fields", [
    {"policy": "randaugment", "policy_magnitude_std": 1.0},
    {"policy": "trivialaugment", "hflip": 0.5, "hflip_mode": "alternate", "crop_padding": 4},
    {"policy": "autoaugment", "rrc_scale": [0.3, 1.0], "image_size": 48},
    {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_mode": "elem"},
])
def test_train_batch_never_waits_for_the_device(fields):
    aug = GpuAugment(AugmentConfig(**fields), MEAN, STD, 10, seed=7)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (16,))
    aug.train_batch(x, labels)  # warm-up: tables are built and copied to the device once
    with HostSyncDetector() as detector:
        aug.train_batch(x, labels)
    assert not detector.events, detector.report()


def test_bad_policy_settings_raise_one_sentence():
    for augment in ({"policy": "randaugmnt"}, {"policy_magnitude": 31}, {"policy_ops": 0},
                    {"policy_magnitude_std": -1.0}, {"rrc_scale": [0.5]}, {"rrc_scale": [0.9, 0.1]},
                    {"rrc_ratio": [0.0, 1.0]}, {"hflip_mode": "alternate", "hflip": 1.0}):
        with pytest.raises(FastcifarError, match=f"augment.{next(iter(augment))}"):  # names the bad field
            from_dict({"augment": augment})
    with pytest.raises(FastcifarError, match="native_augment"):
        from_dict({"augment": {"hflip": 0.5, "hflip_mode": "alternate"}, "data": {"native_augment": True}})


@pytest.mark.parametrize("name, cls", [("randaugment", v2.RandAugment), ("trivialaugment", v2.TrivialAugmentWide),
                                       ("autoaugment", v2.AutoAugment)])
def test_cpu_baseline_runs_torchvisions_policy_with_the_same_settings(name, cls):
    fn = cpu_transform(AugmentConfig(policy=name, policy_ops=3, policy_magnitude=11, crop_padding=4), train=True)
    found = [t for t in fn.pipeline.transforms if isinstance(t, cls)]
    assert len(found) == 1
    noisy = cpu_transform(AugmentConfig(policy="randaugment", policy_magnitude_std=0.5), train=True)
    assert any(isinstance(t, NoisyRandAugment) for t in noisy.pipeline.transforms)  # magnitude noise on the CPU too
    if name == "randaugment":
        assert (found[0].num_ops, found[0].magnitude) == (3, 11)
    if name == "autoaugment":
        assert found[0].policy == v2.AutoAugmentPolicy.CIFAR10
    out = fn(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


def test_noisy_randaugment_on_the_cpu_draws_around_m():
    torch.manual_seed(5)
    aug = NoisyRandAugment(num_ops=1, magnitude=15, magnitude_std=3.0)
    seen = []
    aug._apply_image_or_video_transform = lambda img, name, m, **kw: seen.append((name, m)) or img
    for _ in range(3000):
        aug(torch.zeros(3, 32, 32, dtype=torch.uint8))
    rot = torch.tensor([m for name, m in seen if name == "Rotate"]).abs()
    assert abs(float(rot.mean()) - 15.0) < 1.0  # Rotate is linear in the bin: 1 degree per bin (30 / 30)
    assert float(rot.std()) > 2.0


@pytest.mark.parametrize("fields", [
    {"policy": "randaugment", "policy_magnitude": 15},
    {"policy": "autoaugment", "rrc_scale": [0.3, 1.0], "image_size": 64},
])
def test_train_batch_applies_exactly_the_policy_and_box_it_draws(fields):
    """train_batch = the drawn policy (and RandomResizedCrop box) applied, and differs from no augmentation."""
    aug = GpuAugment(AugmentConfig(**fields), MEAN, STD, 10, seed=7)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (16,))
    torch.manual_seed(3)
    p = aug.sample(16, 32, 32, x.device)
    want = aug.to_model_input(aug.apply(x, p), None, p.rrc_box)
    torch.manual_seed(3)
    got, _ = aug.train_batch(x, labels)
    assert torch.equal(got, want)
    plain = GpuAugment(AugmentConfig(image_size=fields.get("image_size", 32)), MEAN, STD, 10).eval_batch(x)
    assert (got - plain).abs().amax(dim=(1, 2, 3)).gt(0.1).float().mean() > 0.5  # most images really changed
    if "rrc_scale" in fields:  # the box was used: the same policy output plainly resized differs
        assert not torch.allclose(got, aug.to_model_input(aug.apply(x, p)), atol=1e-3)


def test_fractional_magnitude_bins_interpolate_between_neighbours():
    table = torch.tensor([[0.0, 10.0, 30.0]], dtype=torch.float64)
    ops = torch.zeros(3, dtype=torch.long)
    out = _interpolate(table, ops, torch.tensor([0.5, 1.25, 2.0], dtype=torch.float64))
    assert torch.allclose(out, torch.tensor([5.0, 15.0, 30.0], dtype=torch.float64))
