"""Optimizer and per-iteration learning-rate schedule.

`param_groups` are timm's (`timm.optim.param_groups_weight_decay` / `param_groups_layer_decay`): every 1-D
parameter (biases, BatchNorm/LayerNorm weights) and every name the model's `no_weight_decay()` lists (ViT
`pos_embed`, `cls_token`) go without weight decay, since decaying them only shrinks what normalization undoes
or drags position codes to zero; with `optim.layer_decay` each depth gets its own `lr_scale`.
`build_scheduler` returns a `LambdaLR` stepped once per optimizer step (not per epoch), whose factor is a
picklable object, so `scheduler.state_dict()` carries the whole schedule and a resumed run continues exactly.
LambdaLR multiplies each group's own initial lr (cfg.lr * lr_scale), so layer-wise scales hold all along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fastcifar.config import Config, OptimConfig
from fastcifar.errors import FastcifarError


def param_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False, layer_decay: float = 0.0
) -> list[dict]:
    """Trainable parameters in timm's groups, each named, with `lr_scale` (1 without layer decay).

    Args:
        model: any module; its `no_weight_decay()` names (if it has the method) get no decay.
        decay_norm_and_bias: decay 1-D parameters too (the model's no_weight_decay names still do not).
        layer_decay: 0 = off; else lr_scale = layer_decay ** (top layer - layer), layers from the model's
            timm `group_matcher` (the head is the top layer, scale 1).

    Returns:
        Groups named "decay" / "no_decay" (or "layer_{i}_decay" ... with layer decay), decaying ones first;
        empty groups are left out.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = getattr(model, "no_weight_decay", None)
    skip = set(skip()) if callable(skip) else set()
    exclude_1d = not decay_norm_and_bias
    if layer_decay:
        groups = param_groups_layer_decay(
            model, weight_decay, no_weight_decay_list=skip, weight_decay_exclude_1d=exclude_1d, layer_decay=layer_decay
        )
        for group in groups:
            group["name"] = f"scale_{group['lr_scale']:.4g}_{'decay' if group['weight_decay'] else 'no_decay'}"
    else:
        groups = param_groups_weight_decay(
            model, weight_decay, weight_decay_exclude_1d=exclude_1d, no_weight_decay_list=skip
        )
        for group in groups:
            group["name"], group["lr_scale"] = ("decay" if group["weight_decay"] else "no_decay"), 1.0
    # decaying groups first (and the head's scale 1 first with layer decay):
    # param_groups[0] is the peak lr the log shows
    return sorted(groups, key=lambda g: (-g["lr_scale"], g["weight_decay"] == 0))


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device | str) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW over `param_groups(model, ...)`, each group at cfg.lr * lr_scale.

    On CUDA the fused kernels are used (one launch per group); elsewhere the foreach path
    (one vectorised op per tensor list). Call after moving the model to `device`.
    """
    device = torch.device(device)
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias, cfg.layer_decay)
    if not groups:
        raise FastcifarError("The model has no trainable parameters; check that nothing froze the whole model.")
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **impl
        )
    if len(cfg.betas) != 2:
        raise FastcifarError(f"optim.betas must hold two numbers, got {cfg.betas}; write it as [0.9, 0.999].")
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas, **impl)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, **impl)
    raise FastcifarError(f"optim.name must be sgd, adam or adamw, got '{cfg.name}'.")


@dataclass
class LrFactor:
    """Multiplier of the peak lr at iteration t (0-based optimizer steps).

    warmup: linear from 0 at t=0 to 1 at t=warmup_steps.
    cosine: after warmup, min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2, p = (t - warmup) / (total - warmup),
        so 1 at the end of warmup, (1 + min_ratio) / 2 halfway, min_ratio at t = total (and after).
    multistep: gamma ** (number of milestones, in steps, that t has reached).
    constant: 1.
    A plain dataclass (not a lambda) so LambdaLR.state_dict() saves and restores it.
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0
    milestones: list[int] = field(default_factory=list)  # in steps
    gamma: float = 0.1

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return t / self.warmup_steps
        if self.kind == "cosine":
            p = min(1.0, (t - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
        if self.kind == "multistep":
            return self.gamma ** sum(t >= m for m in self.milestones)
        return 1.0  # constant


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> LambdaLR:
    """Per-iteration LambdaLR for `cfg.schedule` over cfg.train.epochs * steps_per_epoch steps.

    - cosine: linear warmup (schedule.warmup_epochs), then cosine to schedule.min_lr_ratio * lr.
    - onecycle: linear rise from 0 over the first schedule.pct_start of the run, then cosine to min_lr_ratio.
      The rise is its warmup, so schedule.warmup_epochs must stay 0.
    - multistep: lr *= gamma at each of schedule.milestones (epochs), after an optional warmup.
    - constant: lr after an optional warmup.
    Call `scheduler.step()` after every `optimizer.step()`.
    """
    sched = cfg.schedule
    total = cfg.train.epochs * steps_per_epoch
    warmup = round(sched.warmup_epochs * steps_per_epoch)
    if warmup > total:
        raise FastcifarError(
            f"schedule.warmup_epochs ({sched.warmup_epochs}) is longer than the run "
            f"({cfg.train.epochs} epochs); lower it."
        )
    kind = sched.name
    if sched.name == "onecycle":
        if sched.warmup_epochs:
            raise FastcifarError(
                "schedule.warmup_epochs and onecycle's schedule.pct_start both set the rise; set warmup_epochs: 0."
            )
        if not 0.0 <= sched.pct_start < 1.0:
            raise FastcifarError(f"schedule.pct_start must be in [0, 1), got {sched.pct_start}.")
        kind, warmup = "cosine", round(sched.pct_start * total)
    factor = LrFactor(
        kind=kind,
        total_steps=total,
        warmup_steps=warmup,
        min_ratio=sched.min_lr_ratio,
        milestones=[m * steps_per_epoch for m in sched.milestones],
        gamma=sched.gamma,
    )
    return LambdaLR(optimizer, lr_lambda=factor)
