"""Losses by value: CE/label smoothing/soft targets, ArcFace/CosFace margins, distillation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastcifar.config import Config, ModelConfig, TrainConfig
from fastcifar.losses import arcface_phi, build_criterion, distill_loss, kd_kl

S, M = 8.0, 0.35
# Two rows of cosines; row 1's target cosine (-0.95) is past cos(pi - m) = -0.939, the threshold branch.
COS = torch.tensor([[0.6, 0.2, -0.1], [0.1, -0.95, 0.3]])
TARGETS = torch.tensor([0, 1])


def _cfg(head: str = "linear", smoothing: float = 0.0) -> Config:
    return Config(model=ModelConfig(head=head, margin_s=S, margin_m=M), train=TrainConfig(label_smoothing=smoothing))


def _ce_by_hand(rows: list[list[float]], targets: list[int]) -> float:
    losses = [math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(rows, targets)]
    return sum(losses) / len(losses)


def _arcface_rows() -> list[list[float]]:
    rows = COS.tolist()
    # row 0: theta + m < pi, so cos(acos(0.6) + 0.35)
    rows[0][0] = math.cos(math.acos(0.6) + M)
    # row 1: theta + m > pi, so the linear continuation cos - m * sin(pi - m)
    assert -0.95 < math.cos(math.pi - M)
    rows[1][1] = -0.95 - M * math.sin(math.pi - M)
    return [[S * v for v in row] for row in rows]


def test_arcface_loss_equals_hand_computed_value_and_exceeds_ce():
    loss = build_criterion(_cfg("arcface"))(S * COS, TARGETS)
    assert loss.item() == pytest.approx(_ce_by_hand(_arcface_rows(), [0, 1]), rel=1e-5)
    plain = F.cross_entropy(S * COS, TARGETS)
    assert plain.item() == pytest.approx(_ce_by_hand((S * COS).tolist(), [0, 1]), rel=1e-5)
    assert loss.item() > plain.item() + 0.5  # the margin makes the target harder to reach


def test_cosface_loss_equals_hand_computed_value_and_exceeds_ce():
    rows = COS.tolist()
    rows[0][0] -= M
    rows[1][1] -= M
    loss = build_criterion(_cfg("cosface"))(S * COS, TARGETS)
    assert loss.item() == pytest.approx(_ce_by_hand([[S * v for v in r] for r in rows], [0, 1]), rel=1e-5)
    assert loss.item() > F.cross_entropy(S * COS, TARGETS).item() + 0.5


def test_arcface_phi_is_monotonic_and_easy_margin():
    cos = torch.linspace(-1, 1, 2001)
    phi = arcface_phi(cos, M)
    assert (phi.diff() > 0).all()  # the threshold branch keeps it decreasing in theta
    assert (phi < cos).all()  # the margin always lowers the target logit
    easy = arcface_phi(cos, M, easy_margin=True)
    torch.testing.assert_close(easy[cos <= 0], cos[cos <= 0])
    torch.testing.assert_close(easy[cos > 0], torch.cos(torch.acos(cos[cos > 0]) + M))


def test_arcface_gradient_is_finite_at_cos_one():
    logits = torch.tensor([[S * 1.0, 0.0, -S]], requires_grad=True)  # target cosine exactly 1
    build_criterion(_cfg("arcface"))(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


def test_label_smoothing_matches_torch():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(8) % 10
    loss = build_criterion(_cfg("linear", 0.1))(logits, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets, label_smoothing=0.1))
    # margin heads: smoothing applies to the CE over the margined logits
    margined = torch.tensor(_arcface_rows())
    loss = build_criterion(_cfg("arcface", 0.1))(S * COS, TARGETS)
    torch.testing.assert_close(loss, F.cross_entropy(margined, TARGETS, label_smoothing=0.1))


@pytest.mark.parametrize("head", ["linear", "arcface", "cosface"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_soft_targets_one_hot_equal_hard_targets(head, smoothing):
    criterion = build_criterion(_cfg(head, smoothing))
    logits = S * COS
    hard = criterion(logits, TARGETS)
    soft = criterion(logits, F.one_hot(TARGETS, 3).float())
    torch.testing.assert_close(soft, hard)


def test_soft_targets_weight_the_margin():
    # a mixup pair: 0.7 of class 0 and 0.3 of class 2 in row 0
    y = torch.tensor([[0.7, 0.0, 0.3]])
    cos = COS[:1]
    loss = build_criterion(_cfg("cosface"))(S * cos, y)
    margined = S * (cos - M * y)  # cos'_c = cos_c + y_c * (phi_c - cos_c), phi = cos - m
    expected = -(y * F.log_softmax(margined, dim=1)).sum()
    torch.testing.assert_close(loss, expected)
    # and soft-target CE for the linear head is -sum(y * log softmax)
    plain = build_criterion(_cfg("linear"))(S * cos, y)
    torch.testing.assert_close(plain, -(y * F.log_softmax(S * cos, dim=1)).sum())


def test_criterion_accepts_bf16_logits_and_returns_float32():
    loss = build_criterion(_cfg("arcface"))((S * COS).bfloat16(), TARGETS)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ---------------------------------------------------------------------------- distillation


def test_distill_alpha_zero_is_the_criterion():
    student = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    teacher = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    criterion = build_criterion(_cfg("linear", 0.1))
    torch.testing.assert_close(
        distill_loss(student, teacher, targets, 4.0, 0.0, criterion), criterion(student, targets)
    )
    torch.testing.assert_close(distill_loss(student, teacher, targets, 4.0, 0.0), F.cross_entropy(student, targets))


def test_distill_kl_value_and_zero_for_identical_logits():
    student = torch.tensor([[1.0, 2.0, 0.5]])
    teacher = torch.tensor([[2.0, 0.0, 1.0]])
    t = 4.0
    p_t = F.softmax(teacher / t, dim=1)
    p_s = F.softmax(student / t, dim=1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum() * t * t
    torch.testing.assert_close(kd_kl(student, teacher, t), by_hand)
    targets = torch.tensor([1])
    mixed = distill_loss(student, teacher, targets, t, 0.7)
    torch.testing.assert_close(mixed, 0.7 * by_hand + 0.3 * F.cross_entropy(student, targets))
    same = torch.randn(5, 10)
    assert distill_loss(same, same.clone(), torch.zeros(5, dtype=torch.long), t, 1.0).abs().item() < 1e-6


def test_distill_gradient_reaches_only_the_student():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    loss = distill_loss(student(x), teacher(x), torch.randint(0, 3, (8,)), 4.0, 0.7, build_criterion(_cfg("cosface")))
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None and teacher.bias.grad is None
