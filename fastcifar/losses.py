"""Training losses: cross-entropy (hard or soft targets, label smoothing), ArcFace/CosFace margins, distillation.

The model's forward never applies a margin (margin heads return s * cos(theta)); the margin lives here and
is used only for the training loss. Evaluation is a plain argmax / CE over the model's logits.

Margin with soft targets (mixup/cutmix give float [B, C] targets): each class's cosine is moved towards its
margin version in proportion to its target weight, cos'_c = cos_c + y_c * (phi(cos_c) - cos_c), where
phi = cos(theta + m) (ArcFace) or cos - m (CosFace). A one-hot y gives exactly the usual margin at the target
class; a mixup pair (lambda, 1 - lambda) gives each of the two classes that share of its margin. Label smoothing
is applied to the CE targets, not to the margin weights (a smoothed target would put a tiny margin on every class).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fastcifar.config import Config
from fastcifar.heads import MARGIN_HEADS

Criterion = Callable[[Tensor, Tensor], Tensor]


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """float32 [B, C] with a 1 at each label, by `scatter_`: never reads the labels on the host.

    `F.one_hot` checks the label range with `.item()` on the CPU (and on CUDA when num_classes is not given;
    with it, CUDA relies on scatter's device assert). One code path that never syncs keeps the hot path
    the same everywhere, and keeps the CPU host-sync test (tests/test_host_sync.py) meaningful.

    Args:
        labels: int64 [B] in [0, num_classes) (out of range: a device-side index error, as in any gather).
    """
    out = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0)


def arcface_phi(cos: Tensor, m: float, easy_margin: bool = False) -> Tensor:
    """cos(theta + m) for cos = cos(theta), elementwise, with the usual fix where theta + m would pass pi.

    cos(theta + m) stops decreasing once theta + m > pi, which would reward pushing a sample *away* from its
    class. The standard fix (insightface) continues linearly: phi = cos - m * sin(m) wherever
    cos <= cos(pi - m), so the target logit decreases with theta all the way to pi. `easy_margin` instead applies
    the margin only where cos > 0 (theta < 90 degrees) and leaves the rest unchanged.

    Args:
        cos: cosines in [-1, 1], any shape, float32.
        m: additive angular margin, radians.
    """
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-9))  # clamp: sqrt has an infinite slope at cos = +-1
    phi = cos * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        return torch.where(cos > 0, phi, cos)
    threshold = math.cos(math.pi - m)
    return torch.where(cos > threshold, phi, cos - math.sin(math.pi - m) * m)


class MarginCrossEntropy:
    """CE over the logits of a margin head, with the ArcFace or CosFace margin applied at the target class.

    Args:
        kind: "arcface" (angular margin m, radians) or "cosface" (cosine margin m).
        s: the head's logit scale (logits = s * cos).
        m: the margin.
        label_smoothing: as in `torch.nn.functional.cross_entropy`.
        easy_margin: ArcFace only, see `arcface_phi`.

    Call with logits [B, C] (s * cos, any float dtype) and targets int64 [B] or float [B, C]; returns a scalar float32.
    """

    def __init__(self, kind: str, s: float, m: float, label_smoothing: float = 0.0, easy_margin: bool = False):
        if kind not in MARGIN_HEADS:
            raise ValueError(f"margin kind must be one of {MARGIN_HEADS}, got {kind!r}")
        self.kind, self.s, self.m = kind, float(s), float(m)
        self.label_smoothing = label_smoothing
        self.easy_margin = easy_margin

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        cos = (logits.float() / self.s).clamp(-1.0, 1.0)  # [B, C]
        weight = targets.float() if targets.is_floating_point() else one_hot(targets, cos.shape[1])  # [B, C]
        if self.kind == "arcface":
            phi = arcface_phi(cos, self.m, self.easy_margin)
        else:
            phi = cos - self.m
        # lerp(cos, phi, 1) is exactly phi and lerp(cos, phi, 0) exactly cos, so one-hot targets get the textbook loss.
        margined = torch.lerp(cos, phi, weight) * self.s  # [B, C]
        return F.cross_entropy(
            margined, targets if not targets.is_floating_point() else weight, label_smoothing=self.label_smoothing
        )


class CrossEntropy:
    """CE with label smoothing; int64 [B] class targets or float [B, C] probability targets (mixup/cutmix)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        targets = targets.float() if targets.is_floating_point() else targets
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)


def build_criterion(cfg: Config) -> Criterion:
    """The training loss for `cfg`: callable(logits [B, C], targets int64 [B] or float [B, C]) -> scalar float32.

    `cfg.model.head` picks plain CE (linear) or margin CE (arcface/cosface with cfg.model.margin_s/margin_m);
    `cfg.train.label_smoothing` applies to both. Used for training only; evaluate with plain CE/argmax.
    """
    smoothing = cfg.train.label_smoothing
    if cfg.model.head in MARGIN_HEADS:
        return MarginCrossEntropy(
            cfg.model.head, cfg.model.margin_s, cfg.model.margin_m, smoothing, cfg.model.easy_margin
        )
    return CrossEntropy(smoothing)


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, mean over the batch; scalar float32.

    T^2 keeps the gradient scale independent of T (Hinton et al. 2015). The teacher is detached.
    """
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=1)  # [B, C]
    teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)  # [B, C]
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float, alpha: float,
                 criterion: Criterion | None = None) -> Tensor:
    """Knowledge distillation: alpha * KL(T) * T^2 + (1 - alpha) * hard loss.

    Args:
        student_logits: [B, C] float, with grad.
        teacher_logits: [B, C] float; detached here, so no gradient reaches the teacher.
        targets: int64 [B] or float [B, C], passed to `criterion`.
        temperature: T.
        alpha: weight of the KL term (the seed used 0.7).
        criterion: the hard loss, normally `build_criterion(cfg)` so margins and label smoothing still
            apply; None = plain CE.

    Returns:
        Scalar float32. Terms with weight 0 are not computed.
    """
    hard = criterion or CrossEntropy()
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if alpha != 0:
        loss = loss + alpha * kd_kl(student_logits, teacher_logits, temperature)
    if alpha != 1:
        loss = loss + (1.0 - alpha) * hard(student_logits, targets)
    return loss
