"""One training step and one evaluation pass. Device-agnostic: everything follows the input tensors.

Nothing here calls `.item()` or synchronizes: counts and loss sums stay on the device and the
trainer reads them once per epoch, so a CUDA step queue is never drained inside the loop.
`Stepper` is the trainer's whole per-batch step (augment, `train_step`, EMA, schedule); the host-sync test
runs that same object.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import AbstractContextManager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcifar.augment import tta_batches
from fastcifar.engine.metrics import confusion_matrix

# (x, logits, targets) -> scalar loss; x is the augmented batch (the distillation teacher needs it).
Objective = Callable[[Tensor, Tensor, Tensor], Tensor]


def make_objective(criterion: Callable[[Tensor, Tensor], Tensor], teacher: nn.Module | None = None,
                   distill=None) -> Objective:
    """The training loss as a function of (x, logits, targets).

    Without a teacher: `criterion(logits, targets)`. With one (`distill`: the DistillConfig): the frozen
    teacher scores the same augmented batch resized to `distill.teacher_image_size`, and the loss is
    `distill_loss` = alpha * KL(T) * T^2 + (1 - alpha) * criterion (so margins and smoothing still apply).
    """
    if teacher is None:
        return lambda x, logits, targets: criterion(logits, targets)
    from fastcifar.losses import distill_loss

    def objective(x: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        guide = teacher_logits(teacher, x, distill.teacher_image_size)  # [B, C], no grad
        return distill_loss(logits, guide, targets, distill.temperature, distill.alpha, criterion)

    return objective


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


def hard_labels(targets: Tensor) -> Tensor:
    """int64 [B] class per sample: the targets themselves, or the argmax of soft targets [B, C]."""
    return targets.argmax(dim=1) if targets.is_floating_point() else targets


def train_step(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast: AbstractContextManager,
    grad_clip: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Forward, loss, backward, (clip), optimizer step.

    Args:
        model: the training module (possibly compiled / DDP-wrapped), in train mode.
        x: [B, 3, S, S] normalized, channels_last, float32 or the AMP dtype, on the model's device.
        targets: int64 [B] labels or float [B, C] soft labels (mixup / cutmix).
        objective: loss from (x, logits, targets).
        optimizer, scaler: the optimizer and its GradScaler (disabled unless fp16).
        autocast: `torch.autocast(...)` or `nullcontext()`.
        grad_clip: max global L2 norm of the gradients; 0 = off.

    Returns:
        (loss: float32 scalar, detached; correct: int64 scalar = samples whose argmax matches the
        (argmax of the) target), both on the device. Accuracy comes from this same forward pass.
    """
    with autocast:
        logits = model(x)  # [B, C]
        loss = objective(x, logits, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    correct = (logits.detach().argmax(dim=1) == hard_labels(targets)).sum()
    return loss.detach().float(), correct


def draw_size(scales: list[int], seed: int, step: int) -> int | None:
    """Multi-scale training: the side of batch `step` (0-based optimizer steps) from `scales`; None = image_size.

    Drawn on the host from (seed, step), so every DDP rank picks the same side (no rank waits on a bigger one at
    the all-reduce) and a resumed run replays it.
    """
    if not scales:
        return None
    draw = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return scales[int(torch.randint(len(scales), (), generator=draw))]


@dataclasses.dataclass
class Stepper:
    """Everything one training batch touches, and the step itself: augment, `train_step`, EMA, schedule.

    Built by `fastcifar.engine.build.stepper`; the trainer and the host-sync test call the same object.
    """

    augment: object  # fastcifar.augment.GpuAugment: train_batch(images, labels, size) -> (x, targets)
    model: nn.Module  # the plain module; the EMA follows it
    train_model: nn.Module  # what runs the forward: `model`, or its DDP wrapper
    ema: object | None  # fastcifar.engine.ema.ModelEma
    objective: Objective
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per optimizer step
    autocast: AbstractContextManager
    grad_clip: float  # max global gradient L2 norm; 0 = off
    scales: list[int]  # multi-scale sides (augment.scales); empty = augment.image_size
    seed: int  # train.seed, for draw_size

    def __call__(self, images: Tensor, labels: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Optimizer step `step` (0-based) on one loader batch.

        Args:
            images: uint8 [B, 3, H, W] channels_last, on the device.
            labels: int64 [B].
            step: optimizer steps taken so far in the run (picks the multi-scale side).

        Returns:
            (loss, correct) device scalars, as `train_step`.
        """
        size = draw_size(self.scales, self.seed, step)
        x, targets = self.augment.train_batch(images, labels, size)  # [B, 3, S, S]; int64 [B] or float [B, C]
        loss, hits = train_step(self.train_model, x, targets, self.objective, self.optimizer, self.scaler,
                                self.autocast, self.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model)
        self.scheduler.step()  # per iteration
        return loss, hits


@torch.no_grad()
def eval_pass(
    model: nn.Module,
    loader,
    prepare: Callable[[Tensor], Tensor],
    autocast: AbstractContextManager,
    num_classes: int,
    tta: bool | str = False,
    pad_to: int | None = None,
) -> dict[str, Tensor]:
    """Run `model` over every batch of `loader` and sum what top-1/top-5/loss need.

    The loss is plain cross-entropy on the model's logits: margin heads output s*cos without the margin,
    so evaluation scores raw cosines, as the seed experiments did. With `tta`, the prediction is the mean
    of the softmax of the image and of its mirror, and the loss is the NLL of that mean.

    Args:
        model: module to evaluate (mode is set to eval here and restored after).
        loader: yields (images uint8 [B, 3, 32, 32], labels int64 [B]) on the device.
        prepare: uint8 images -> [B, 3, S, S] normalized float (`GpuAugment.eval_batch`).
        autocast: as in training.
        num_classes: C.
        tta: test-time augmentation, none | flip | flip_translate (True / False: flip / none); the views
            come from `augment.tta_batches`.
        pad_to: for a compiled model, the eval batch size: a smaller (last) batch is padded with zero images to
            this many rows, so the model only ever sees one static shape (never a second graph, never a symbolic
            one), and the padded rows are cut from the logits before anything is summed. The batch size is a
            host-side shape, so this costs no device sync.

    Returns:
        On the device: loss_sum float64 [], correct1 / correct5 / count int64 [], confusion int64 [C, C]
        (rows = true class). Sums, so ranks can all-reduce them before dividing.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k = min(5, num_classes)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        n = labels.shape[0]  # real rows of this batch
        if pad_to is not None and n < pad_to:
            padded = images.new_zeros((pad_to, *images.shape[1:])).contiguous(memory_format=torch.channels_last)
            padded[:n].copy_(images)  # [pad_to, 3, H, W] uint8, channels_last like every loader batch (same strides)
            images = padded
        parts = []  # log of the weighted mean softmax of each group of views, [B, C] float32
        # x: [views * B, 3, S, S]; an image and its mirror go in ONE forward: a second call of a CUDA-graphed model
        # overwrites the first output
        for x, views, weight in tta_batches(images, prepare, tta):
            with autocast:
                logits = model(x)
            log_probs = F.log_softmax(logits.float(), dim=1)  # used before the next forward
            if views > 1:  # log of the mean of the views' softmaxes
                log_probs = torch.logsumexp(log_probs.view(views, -1, log_probs.shape[1]), dim=0) - math.log(views)
            parts.append(log_probs + math.log(weight) if weight != 1.0 else log_probs)
        log_probs = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), dim=0)
        log_probs = log_probs[:n]  # [n, C]: padded rows never reach a sum (a view; no-op without padding)
        loss_sum += F.nll_loss(log_probs, labels, reduction="sum").double()
        top = log_probs.topk(k, dim=1).indices  # [B, k]
        correct5 += (top == labels[:, None]).any(dim=1).sum()
        confusion += confusion_matrix(top[:, 0], labels, num_classes)
        count += n
    model.train(was_training)
    return {"loss_sum": loss_sum, "correct1": confusion.diagonal().sum(), "correct5": correct5, "count": count,
            "confusion": confusion}


def summarize_eval(sums: dict[str, Tensor], prefix: str) -> dict[str, float]:
    """`{prefix}_loss`, `{prefix}_acc`, `{prefix}_top5` (fractions in [0, 1]) from (all-reduced) sums."""
    count = max(int(sums["count"]), 1)
    return {
        f"{prefix}_loss": float(sums["loss_sum"]) / count,
        f"{prefix}_acc": int(sums["correct1"]) / count,
        f"{prefix}_top5": int(sums["correct5"]) / count,
    }
