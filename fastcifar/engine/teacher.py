"""The frozen teacher of knowledge distillation, rebuilt from a finished run."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fastcifar.config import Config, from_dict
from fastcifar.engine.build import model_from_checkpoint
from fastcifar.engine.checkpoint import BEST, load_checkpoint, resolve_checkpoint
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
    path = find_teacher(cfg.distill.teacher, cfg.train.out_dir)
    state = load_checkpoint(path)
    teacher_cfg = from_dict(state["config"])
    if int(state["num_classes"]) != num_classes:
        raise FastcifarError(
            f"Teacher '{path}' predicts {state['num_classes']} classes but the student has {num_classes}; "
            f"distill from a teacher trained on the same dataset and data.label."
        )
    if teacher_cfg.augment.image_size != cfg.distill.teacher_image_size:  # legal, but rarely what was meant
        warnings.warn(f"The teacher '{path}' was trained at {teacher_cfg.augment.image_size} px but "
                      f"distill.teacher_image_size is {cfg.distill.teacher_image_size}; it will score inputs of a size "
                      f"it never saw.", stacklevel=2)
    # Weights come from the checkpoint (best.pt holds them): hub weights are never downloaded again for the teacher.
    teacher = model_from_checkpoint(state, str(path), device, channels_last=cfg.train.channels_last,
                                    extra_sizes=[cfg.distill.teacher_image_size])  # a fixed-size teacher must fit it
    teacher.requires_grad_(False)
    return teacher
