"""The frozen teacher of knowledge distillation, rebuilt from a finished run."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcifar.config import Config, from_dict
from fastcifar.engine.checkpoint import (
    BEST,
    eval_weights,
    load_checkpoint,
    resolve_checkpoint,
)
from fastcifar.errors import FastcifarError


def find_teacher(spec: str, out_dir: str) -> Path:
    """Checkpoint file of the teacher named by `distill.teacher`.

    Accepts a checkpoint file, a run directory (-> its best.pt), or a config name such as
    `resnet50_arcface_224`, which means the newest finished run of that config under `train.out_dir`.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return resolve_checkpoint(path, BEST)
    runs = sorted(Path(out_dir).expanduser().glob(f"{spec}-*/{BEST}"), key=lambda p: p.parent.name)
    runs = [p for p in runs if p.parent.name[len(spec) + 1 :][:1].isdigit()]  # `name-YYYY...`, not `name_other-...`
    if not runs:
        raise FastcifarError(
            f"distill.teacher '{spec}' is neither a run directory, a checkpoint nor a finished run under '{out_dir}'; "
            f"train the teacher first (fastcifar train {spec}) or give its run directory."
        )
    return runs[-1]  # folder names end in a timestamp: the last is the newest


def load_teacher(cfg: Config, num_classes: int, device: torch.device) -> nn.Module:
    """Build the teacher from its saved config, load its evaluation weights (EMA if it kept one), freeze it.

    Returns:
        The teacher in eval mode, requires_grad False, on `device` (channels_last when the student is).

    Raises:
        FastcifarError: no such teacher, or it predicts another number of classes than the student.
    """
    from fastcifar.models import build_model, load_weights

    path = find_teacher(cfg.distill.teacher, cfg.train.out_dir)
    state = load_checkpoint(path)
    teacher_cfg = from_dict(state["config"])
    if int(state["num_classes"]) != num_classes:
        raise FastcifarError(f"Teacher '{path}' predicts {state['num_classes']} classes but the student has {num_classes}; distill from a teacher trained on the same dataset and data.label.")
    if teacher_cfg.augment.image_size != cfg.distill.teacher_image_size:  # legal, but rarely what was meant
        warnings.warn(f"The teacher '{path}' was trained at {teacher_cfg.augment.image_size} px but distill.teacher_image_size "
                      f"is {cfg.distill.teacher_image_size}; it will score inputs of a size it never saw.", stacklevel=2)
    # Weights come from the checkpoint: never download hub weights again for the teacher.
    model_cfg = dataclasses.replace(teacher_cfg.model, pretrained=False)
    sizes = [*teacher_cfg.augment.scales, cfg.distill.teacher_image_size]  # a fixed-size teacher must run at the distill size
    teacher = build_model(model_cfg, num_classes, teacher_cfg.augment.image_size, sizes)
    load_weights(teacher, eval_weights(state), str(path))
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    teacher = teacher.to(device, memory_format=memory_format).eval()
    teacher.requires_grad_(False)
    return teacher


def teacher_logits(teacher: nn.Module, x: Tensor, image_size: int) -> Tensor:
    """The teacher's logits for the student's augmented batch, resized on the device to `image_size`.

    Args:
        x: float32 [B, 3, S, S] normalized (the exact batch the student sees, same augmentation draw).
        image_size: side the teacher was trained at, px (bilinear; antialiased when shrinking).

    Returns:
        [B, C], no grad.
    """
    with torch.no_grad():
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            # float32: CPU has no bf16/fp16 antialiased bilinear kernel, and the resize is cheap next to the teacher
            x = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=image_size < x.shape[-1]).to(x.dtype)
        return teacher(x)
