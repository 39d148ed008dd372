"""Optimizer parameter groups, per-iteration schedules, and the weight EMA, by value on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastcifar.config import Config, OptimConfig, ScheduleConfig, TrainConfig
from fastcifar.engine.ema import ModelEma
from fastcifar.engine.optim import build_optimizer, build_scheduler, param_groups
from fastcifar.errors import FastcifarError


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


# ---------------------------------------------------------------------------- optimizer


def test_one_dim_params_go_to_the_no_decay_group():
    model = _small()
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05), "cpu")
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["decay"]["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in groups["no_decay"]["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[2].bias)
    }
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")  # CPU: foreach, not fused
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)


def test_decay_norm_and_bias_and_frozen_params():
    model = _small()
    model[0].weight.requires_grad_(False)
    groups = param_groups(model, 0.1, decay_norm_and_bias=True)
    assert len(groups) == 1 and len(groups[0]["params"]) == 5 and groups[0]["weight_decay"] == 0.1


def test_no_decay_group_really_gets_no_decay():
    model = _small()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, weight_decay=0.5, momentum=0.9), "cpu")
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] is True
    opt.step()  # no grads yet: nothing moves
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only weight decay moves a parameter
    after = dict(model.named_parameters())
    # nesterov: g + mu * buf
    torch.testing.assert_close(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.5 * (1 + 0.9)))
    for name in ("0.bias", "1.weight", "1.bias", "2.bias"):
        assert torch.equal(after[name], before[name]), name


def test_fused_is_requested_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("fused optimizers need a CUDA device; the CPU path (foreach) is tested above")
    model = _small().cuda()
    for name in ("sgd", "adam", "adamw"):
        assert build_optimizer(model, OptimConfig(name=name), torch.device("cuda")).defaults["fused"] is True


def _vit():
    from fastcifar.config import ModelConfig
    from fastcifar.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(name="test_vit"), 10, image_size=32)  # 6 blocks, a cls token, a pos embedding


def test_vit_pos_embed_and_cls_token_are_not_decayed():
    model = _vit()
    assert {"backbone.pos_embed", "backbone.cls_token"} <= model.no_weight_decay()
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05), "cpu")
    groups = {g["name"]: g for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token"} <= no_decay  # 3-D tensors the ndim rule would have decayed
    assert "backbone.blocks.0.attn.qkv.weight" in decay and "head.fc.weight" in decay
    assert all(model.get_parameter(n).ndim <= 1 for n in no_decay - {"backbone.pos_embed", "backbone.cls_token"})
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert opt.param_groups[0]["name"] == "decay"  # the order the golden runs were pinned with


def test_layer_decay_scales_lr_by_depth_and_the_schedule_keeps_the_scales():
    model = _vit()
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5), "cpu")
    layer_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
        for p in group["params"]:
            layer_of[names[id(p)]] = group["lr_scale"]
    # timm's ViT matcher: stem (patch/pos embed, cls token) = layer 0, blocks 1..6, final norm with block 6, head 7
    assert layer_of["head.fc.weight"] == 1.0 and layer_of["backbone.norm.weight"] == 0.5
    assert layer_of["backbone.blocks.5.mlp.fc1.weight"] == 0.5
    assert layer_of["backbone.blocks.0.mlp.fc1.weight"] == 0.5 ** 6
    assert layer_of["backbone.pos_embed"] == layer_of["backbone.patch_embed.proj.weight"] == 0.5 ** 7
    assert opt.param_groups[0]["lr_scale"] == 1.0  # the logged lr (param_groups[0]) is the head's, the peak
    sched = build_scheduler(
        opt, Config(schedule=ScheduleConfig(name="cosine", warmup_epochs=1), train=TrainConfig(epochs=4)), 5
    )
    for step in range(20):
        factor = sched.lr_lambdas[0](step)
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"] * factor, abs=1e-15), step
        opt.step()
        sched.step()


# ---------------------------------------------------------------------------- schedules


def _lrs(schedule: ScheduleConfig, epochs: int = 10, steps: int = 10, lr: float = 1.0) -> list[float]:
    """lr used at each optimizer step 0..epochs*steps (the last entry: after the final step)."""
    model = _small()
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=lr), "cpu")
    sched = build_scheduler(opt, Config(schedule=schedule, train=TrainConfig(epochs=epochs)), steps)
    out = []
    for _ in range(epochs * steps + 1):
        out.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == out[-1] for g in opt.param_groups)  # every group follows the same schedule
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_and_floor():
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=2, min_lr_ratio=0.1), lr=0.4)
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.2)  # linear from 0, half-way at step 10 of 20
    assert lrs[20] == pytest.approx(0.4)  # peak at warmup end
    assert lrs[60] == pytest.approx(0.4 * (0.1 + 0.9 * 0.5))  # midpoint of the cosine part: (1 + min) / 2
    assert lrs[100] == pytest.approx(0.04)  # floor at the end
    assert lrs[99] > lrs[100] and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_onecycle_rises_then_cosine_down():
    lrs = _lrs(ScheduleConfig(name="onecycle", pct_start=0.25), epochs=4)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[25] == pytest.approx(0.5) and lrs[40] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(FastcifarError, match="warmup_epochs: 0"):
        _lrs(ScheduleConfig(name="onecycle", warmup_epochs=1))


def test_multistep_at_milestones():
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[3, 6], gamma=0.1, warmup_epochs=1), lr=0.5)
    assert lrs[5] == pytest.approx(0.25) and lrs[10] == pytest.approx(0.5)
    assert lrs[29] == pytest.approx(0.5) and lrs[30] == pytest.approx(0.05)
    assert lrs[59] == pytest.approx(0.05) and lrs[60] == pytest.approx(0.005) and lrs[100] == pytest.approx(0.005)


def test_constant_with_warmup():
    lrs = _lrs(ScheduleConfig(name="constant", warmup_epochs=0.5), lr=0.2)
    assert lrs[:6] == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.2])
    assert lrs[5:] == pytest.approx([0.2] * 96)


def test_scheduler_state_dict_round_trips():
    cfg = Config(
        schedule=ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.05), train=TrainConfig(epochs=5)
    )
    opt = build_optimizer(_small(), OptimConfig(lr=0.3), "cpu")
    sched = build_scheduler(opt, cfg, 8)
    for _ in range(13):
        opt.step()
        sched.step()
    state, opt_state = sched.state_dict(), opt.state_dict()
    assert state["lr_lambdas"][0]["total_steps"] == 40 and state["lr_lambdas"][0]["warmup_steps"] == 8
    # a resumed run: fresh optimizer + scheduler (built for another length, to show the state wins), then load
    opt2 = build_optimizer(_small(), OptimConfig(lr=0.3), "cpu")
    sched2 = build_scheduler(opt2, Config(train=TrainConfig(epochs=1)), 8)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 13
    for _ in range(10):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 15 / 32))))


# ---------------------------------------------------------------------------- EMA


def test_ema_one_update_is_the_lerp_of_params_and_buffers():
    model = _small()
    ema = ModelEma(model, decay=0.9, warmup=False)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 3))  # moves BatchNorm's running stats and its counter
    ema.update(model)
    new = model.state_dict()
    for key, value in ema.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * old[key] + 0.1 * new[key])
        else:
            assert torch.equal(value, new[key]), key  # num_batches_tracked is copied
    assert ema.state_dict()["1.num_batches_tracked"].item() == 1


def test_ema_tracks_a_compiled_and_wrapped_model():
    model = _small()
    compiled = torch.compile(model)  # an OptimizedModule with `_orig_mod`; never called, so nothing compiles
    ema = ModelEma(compiled, decay=0.5, warmup=False)
    assert "_orig_mod.0.weight" not in ema.state_dict() and "0.weight" in ema.state_dict()
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema.update(compiled)
    ema.update(compiled)
    torch.testing.assert_close(ema.module[0].weight, 0.25 * start + 0.75)
    # the averaged weights load back into a plain model, and the EMA restores from its state dict
    fresh = ModelEma(_small(), decay=0.5)
    fresh.load_state_dict(ema.state_dict())
    torch.testing.assert_close(fresh.module[0].weight, ema.module[0].weight)
    with pytest.raises(ValueError):
        ModelEma(model, decay=1.0)


def test_ema_warmup_forgets_the_initial_weights_early():
    """Step n decays with min(decay, (1 + n) / (10 + n)): 0.1 on the first update, so after a few steps of a
    constant model the average is mostly the model, where a fixed 0.9998 would still be ~all initial weights."""
    model = _small()
    ema = ModelEma(model, decay=0.9998)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.1 * start + 0.9)
    kept = 0.1
    for n in range(1, 50):
        ema.update(model)
        kept *= (1 + n) / (10 + n)
    torch.testing.assert_close(ema.module[0].weight, kept * start + (1 - kept))
    assert kept < 1e-6 and ema.updates == 50
    restored = ModelEma(_small(), decay=0.9998)
    restored.load_state_dict(ema.state_dict(), updates=ema.updates)
    assert restored.updates == 50
