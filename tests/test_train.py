"""Trainer tests on tiny synthetic CIFAR-10 (512 train / 256 test images) with timm's `test_resnet` at 32 px.

Every run is real: a model trains on CPU for a few epochs and the tests assert outcomes by value
(accuracy reached, losses, files written, stop epoch). The tiny run itself lives in tiny_run.py, shared with the
other trainer test files (test_resume, test_ddp, test_eval, test_train_*).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_run import run_tiny, tiny_config

from fastcifar.engine.checkpoint import load_checkpoint
from fastcifar.engine.early_stop import EarlyStopper
from fastcifar.errors import FastcifarError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(prepared_root):
    return prepared_root("cifar10", ("npy",))


@pytest.fixture(scope="module")
def base_run(root, tmp_path_factory):
    """One plain run shared by several tests (its first-epoch loss is the reference for KD/mixup)."""
    return run_tiny(root, tmp_path_factory.mktemp("base"))


# ---------------------------------------------------------------------------- a plain run


def test_plain_run_learns_and_writes_every_artifact(base_run):
    run, records, summary = base_run
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[-1]["test_acc"] >= 0.8, records
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["step"] == 3 * (512 // 64)
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine to 0 at the last step
    for name in ("config.yaml", "env.json", "metrics.csv", "curves.png", "confusion.png", "confusion.csv",
                 "most_confused.txt", "best.pt", "last.pt"):
        assert (run / name).stat().st_size > 0, name
    assert summary["status"] == "done" and summary["synthetic"] is True and summary["loader"] == "gpu"
    assert summary["select_metric"] == "test_acc"
    best = max(records, key=lambda r: r["test_acc"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_acc"] == pytest.approx(best["test_acc"])
    assert summary["img_per_s"] > 0 and summary["warmup_s"] > 0 and summary["compile_s"] is None
    csv_rows = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].startswith("epoch,step,lr,train_loss,train_acc")
    confusion = (run / "confusion.csv").read_text().splitlines()
    assert len(confusion) == 11 and sum(int(v) for line in confusion[1:] for v in line.split(",")[1:]) == 256
    env = json.loads((run / "env.json").read_text())
    assert torch.__version__.startswith(env["versions"]["torch"].split("+")[0]) and env["versions"]["timm"]
    assert env["device"] == "cpu" and env["cpu_count"] >= 1 and env["hostname"] and env["command"]
    last = load_checkpoint(run, "last.pt")
    assert last["epoch"] == 2 and last["num_classes"] == 10 and last["config"]["name"] == "tiny"
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in last["model"])


def test_best_pt_is_a_real_copy_of_the_best_epoch(base_run):
    run, records, summary = base_run
    best = load_checkpoint(run, "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    assert not (run / "best.pt").is_symlink() and (run / "best.pt").stat().st_ino != (run / "last.pt").stat().st_ino


def test_val_split_is_held_out_and_selects(root, tmp_path):
    run, records, summary = run_tiny(root, tmp_path, data={"val_split": 128}, train={"epochs": 2})
    assert summary["select_metric"] == "val_acc" and summary["confusion_split"] == "val"
    assert all(r["val_acc"] is not None and r["test_acc"] is not None for r in records)
    assert records[-1]["step"] == 2 * ((512 - 128) // 64)  # the held-out images are not trained on
    confusion = (run / "confusion.csv").read_text().splitlines()
    assert sum(int(v) for line in confusion[1:] for v in line.split(",")[1:]) == 128


# ---------------------------------------------------------------------------- heads, losses, augmentation


def test_arcface_trains_and_evaluates_raw_cosine(root, tmp_path):
    from fastcifar.augment import GpuAugment
    from fastcifar.engine.evaluate import evaluate
    from fastcifar.engine.inputs import data_info, eval_loader
    from fastcifar.losses import build_criterion
    from fastcifar.models import build_model

    margin = {"head": "arcface", "embedding_dim": 32, "margin_s": 8.0, "margin_m": 0.35}
    run, records, summary = run_tiny(root, tmp_path, model=margin, train={"epochs": 3})
    assert records[-1]["test_acc"] >= 0.8, records
    # Recompute the test loss from best.pt: it must be plain CE of the logits (raw s*cos), not the margin loss.
    cfg = tiny_config(root, tmp_path, model=margin)
    model = build_model(cfg.model, 10)
    model.load_state_dict(load_checkpoint(run)["model"])
    model.eval()
    info = data_info(cfg)
    prepare = GpuAugment(cfg.augment, info.mean, info.std, 10).eval_batch
    logits, labels = zip(*[(model(prepare(x)), y) for x, y in eval_loader(cfg, "test", torch.device("cpu"))])
    logits, labels = torch.cat(logits).detach(), torch.cat(labels)
    plain = torch.nn.functional.cross_entropy(logits, labels).item()
    margin_loss = build_criterion(cfg)(logits, labels).item()
    assert margin_loss > plain + 0.05  # the margin makes the training loss measurably larger
    best = next(r for r in records if r["epoch"] == summary["best_epoch"])
    assert best["test_loss"] == pytest.approx(plain, rel=1e-4)
    assert evaluate(run)["loss"] == pytest.approx(plain, rel=1e-4)
    assert logits.abs().max() <= 8.0 + 1e-4  # s * cos: bounded by s


def test_mixup_soft_targets_reach_the_criterion(root, tmp_path, monkeypatch, base_run):
    import fastcifar.losses as losses_module

    seen = []
    real = losses_module.build_criterion

    def recording(cfg):
        criterion = real(cfg)

        def wrapped(logits, targets):
            seen.append((targets.dtype, tuple(targets.shape), float(targets.max())))
            return criterion(logits, targets)

        return wrapped

    monkeypatch.setattr(losses_module, "build_criterion", recording)  # build.stepper imports it at call time
    run, records, _ = run_tiny(root, tmp_path, augment={"mixup_alpha": 1.0}, train={"epochs": 1})
    assert len(seen) == 512 // 64
    assert all(dtype == torch.float32 and shape == (64, 10) for dtype, shape, _ in seen)
    assert any(top < 0.999 for _, _, top in seen)  # really mixed, not one-hot in float
    assert records[0]["train_loss"] != pytest.approx(base_run[1][0]["train_loss"], rel=1e-3)
    assert 0.0 <= records[0]["train_acc"] <= 1.0  # accuracy against the argmax of the soft targets


def test_multi_scale_training_draws_each_batch_side_from_scales(root, tmp_path, monkeypatch):
    from fastcifar.augment import GpuAugment

    sides = []
    real = GpuAugment.train_batch

    def recording(self, images, labels, size=None):
        x, targets = real(self, images, labels, size)
        sides.append(x.shape[-1])
        return x, targets

    monkeypatch.setattr(GpuAugment, "train_batch", recording)
    run, records, summary = run_tiny(
        root, tmp_path, augment={"image_size": 32, "scales": [24, 40]}, train={"epochs": 2}
    )
    assert len(sides) == 2 * (512 // 64) and set(sides) == {24, 40}  # both sides drawn, nothing else
    assert records[-1]["test_acc"] > 0.3  # evaluated at image_size 32 after multi-scale training


# ---------------------------------------------------------------------------- EMA


def test_ema_weights_are_evaluated_and_saved(root, tmp_path):
    from fastcifar.engine.evaluate import evaluate

    run, records, summary = run_tiny(root, tmp_path, train={"epochs": 2, "ema_decay": 0.9})
    state = load_checkpoint(run, "last.pt")
    assert state["ema"] is not None
    differs = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.equal(v, state["ema"][k])]
    assert len(differs) > 10  # the average is not the raw model
    # evaluate() uses the EMA weights of best.pt and reproduces the recorded test accuracy and loss
    best = next(r for r in records if r["epoch"] == summary["best_epoch"])
    result = evaluate(run)
    assert result["acc"] == pytest.approx(best["test_acc"])
    assert result["loss"] == pytest.approx(best["test_loss"], rel=1e-5)
    # ...which the raw weights would not give
    from fastcifar.models import build_model

    cfg = tiny_config(root, tmp_path)
    raw, ema = build_model(cfg.model, 10), build_model(cfg.model, 10)
    raw.load_state_dict(load_checkpoint(run)["model"])
    ema.load_state_dict(load_checkpoint(run)["ema"])
    x = torch.randn(8, 3, 32, 32)
    assert not torch.allclose(raw.eval()(x), ema.eval()(x))


# ---------------------------------------------------------------------------- early stopping


def test_early_stopper_on_a_crafted_sequence():
    stopper = EarlyStopper("val_acc", "max", patience=2, min_delta=0.01)
    values = [0.50, 0.60, 0.605, 0.70, 0.69, 0.705, 0.71]  # 0.605 and 0.705 are within min_delta
    stops = [stopper.update({"epoch": e, "val_acc": v}) for e, v in enumerate(values)]
    assert stops == [False, False, False, False, False, True, True]
    assert stopper.best == 0.70 and stopper.best_epoch == 3 and stopper.stopped_epoch == 6
    low = EarlyStopper("val_loss", "min", patience=1)
    assert [low.update({"epoch": e, "val_loss": v}) for e, v in enumerate([1.0, 0.9, 0.95])] == [False, False, True]
    restored = EarlyStopper("val_loss", "min", patience=1)
    restored.load_state_dict(low.state_dict())
    assert restored.state_dict() == low.state_dict()
    assert EarlyStopper("val_loss", "auto").mode == "min" and EarlyStopper("test_acc", "auto").mode == "max"
    off = EarlyStopper("val_acc", "max", patience=0)
    assert not any(off.update({"epoch": e, "val_acc": 0.5}) for e in range(10))
    assert not off.update({"epoch": 10})  # no evaluation that epoch: nothing changes


def test_early_stop_in_a_real_run(root, tmp_path):
    # min_delta 10 on a CE loss: nothing after the first evaluation counts as an improvement, so patience 1
    # must stop the run right after epoch 1 (0-based), whatever the exact losses are.
    run, records, summary = run_tiny(
        root, tmp_path, train={"epochs": 6},
        early_stop={"metric": "test_loss", "mode": "min", "patience": 1, "min_delta": 10.0},
    )
    assert [r["epoch"] for r in records] == [0, 1]
    assert summary["status"] == "early-stopped" and summary["stopped_epoch"] == 1 and summary["epochs_done"] == 2
    state = load_checkpoint(run, "last.pt")["early_stop"]
    assert state == {"best": records[0]["test_loss"], "best_epoch": 0, "bad": 1, "stopped_epoch": 1}


def test_unrecorded_metrics_are_refused(root, tmp_path):
    from fastcifar.engine.trainer import train

    with pytest.raises(FastcifarError, match="early_stop.metric 'val_acc' is not recorded.*val_split"):
        train(tiny_config(root, tmp_path, early_stop={"patience": 2}), progress=False)
    with pytest.raises(FastcifarError, match="select_metric 'val_loss'"):
        train(tiny_config(root, tmp_path, train={"select_metric": "val_loss"}), progress=False)


# ---------------------------------------------------------------------------- init_from


def test_init_from_loads_weights_and_refuses_a_wrong_class_count(base_run, root, prepared_root, tmp_path):
    from fastcifar.engine.distributed import DistInfo
    from fastcifar.engine.trainer import Trainer, train

    run = base_run[0]
    cfg = tiny_config(root, tmp_path, train={"init_from": str(run), "epochs": 1})
    trainer = Trainer(cfg, DistInfo(), torch.device("cpu"), progress=False)
    expected = load_checkpoint(run)["model"]
    assert all(torch.equal(v, expected[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.start_epoch == 0 and trainer.step == 0  # weights only: a fresh schedule
    cifar100 = prepared_root("cifar100", ("npy",))
    wrong = tiny_config(cifar100, tmp_path, data={"dataset": "cifar100"}, train={"init_from": str(run)})
    with pytest.raises(FastcifarError, match="has 10 classes but this model has 100"):
        train(wrong, progress=False)


# ---------------------------------------------------------------------------- mixed precision on CPU


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_runs_on_cpu(amp, root, tmp_path):
    run, records, summary = run_tiny(root, tmp_path, train={"epochs": 1, "amp": amp})
    assert torch.isfinite(torch.tensor([records[0]["train_loss"], records[0]["test_loss"]])).all()
    assert records[0]["train_acc"] > 0.3, records  # learning: chance is 0.1
    scaler = load_checkpoint(run, "last.pt")["scaler"]
    assert (scaler != {}) == (amp == "fp16")  # GradScaler only for fp16 (its state holds the loss scale)
