"""Knowledge distillation: a frozen teacher run guides a student through the real training loop."""

from __future__ import annotations

import pytest
import torch
from tiny_run import run_tiny, tiny_config

from fastcifar.engine.checkpoint import load_checkpoint
from fastcifar.engine.distributed import DistInfo
from fastcifar.engine.metrics import read_jsonl
from fastcifar.errors import FastcifarError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_run(prepared_root, tmp_path_factory):
    root = prepared_root("cifar10", ("npy",))
    out = tmp_path_factory.mktemp("teachers")
    run, records, _ = run_tiny(root, out, name="teacher", train={"epochs": 3})
    assert records[-1]["test_acc"] >= 0.8
    return root, out, run


def test_student_distills_from_a_frozen_teacher(teacher_run, tmp_path):
    from fastcifar.engine.trainer import Trainer

    root, out, teacher_dir = teacher_run
    # teacher is a config name: the newest run under out_dir
    distill = {"teacher": "teacher", "teacher_image_size": 48, "temperature": 4.0, "alpha": 0.7}
    cfg = tiny_config(root, out, name="student", distill=distill, train={"epochs": 1})
    trainer = Trainer(cfg, DistInfo(), torch.device("cpu"), progress=False)
    teacher = trainer.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sizes = []
    teacher.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape)))
    trainer.fit()

    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    saved = load_checkpoint(teacher_dir)["model"]
    after = teacher.state_dict()
    # frozen, incl. BN stats
    assert all(torch.equal(after[k], before[k]) and torch.equal(after[k], saved[k]) for k in saved)
    assert sizes and all(s == (64, 3, 48, 48) for s in sizes)  # the student's batch, resized on the device
    assert len(sizes) == 512 // 64

    # the same student without a teacher (same seed, same batches) has a different loss
    plain = read_jsonl(run_tiny(root, tmp_path, name="student", train={"epochs": 1})[0] / "metrics.jsonl")
    kd = read_jsonl(trainer.run_dir / "metrics.jsonl")
    assert kd[0]["train_loss"] != pytest.approx(plain[0]["train_loss"], rel=1e-3)
    assert kd[0]["train_acc"] > 0.3  # and it learns (chance is 0.1)


def test_missing_or_mismatched_teacher_is_a_clear_error(teacher_run, prepared_root, tmp_path):
    from fastcifar.engine.trainer import train

    root, out, teacher_dir = teacher_run
    with pytest.raises(FastcifarError, match="train the teacher first"):
        train(tiny_config(root, tmp_path, distill={"teacher": "no_such_config"}), progress=False)
    cifar100 = prepared_root("cifar100", ("npy",))
    wrong = tiny_config(cifar100, tmp_path, data={"dataset": "cifar100"}, distill={"teacher": str(teacher_dir)})
    with pytest.raises(FastcifarError, match="predicts 10 classes but the student has 100"):
        train(wrong, progress=False)
