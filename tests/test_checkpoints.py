"""Checkpoints off the critical path: weights-only best.pt, full last.pt, host snapshots written by a thread,
their cost recorded, and a failed write that stops the run with one sentence and keeps the previous last.pt."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import torch
from tiny_run import run_tiny

from fastcifar import atomic
from fastcifar.engine.checkpoint import BEST_KEYS, load_checkpoint, snapshot
from fastcifar.errors import FastcifarError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(prepared_root):
    return prepared_root("cifar10", ("npy",))


def test_best_holds_weights_last_holds_everything_and_checkpoint_time_is_counted(root, tmp_path):
    from fastcifar.engine.evaluate import evaluate

    run, records, summary = run_tiny(root, tmp_path, train={"epochs": 3, "ema_decay": 0.9, "save_every": 2})
    best, last = load_checkpoint(run, "best.pt"), load_checkpoint(run, "last.pt")
    assert sorted(best) == sorted(BEST_KEYS)  # no optimizer, scheduler, RNG: a fraction of last.pt's size
    assert best["ema"] is not None and best["epoch"] == summary["best_epoch"]
    assert {"optimizer", "scheduler", "scaler", "rng", "early_stop", "ema_updates"} <= set(last) and last["epoch"] == 2
    assert (run / "best.pt").stat().st_size < (run / "last.pt").stat().st_size
    # every epoch records how long the loop blocked for checkpoints, and wall_s includes it
    assert all(r["ckpt_s"] >= 0 for r in records) and summary["ckpt_s"] >= sum(r["ckpt_s"] for r in records) > 0
    assert summary["wall_s"] >= sum(r["train_s"] + r["eval_s"] + r["ckpt_s"] for r in records)
    assert last["ckpt_s"] <= last["wall_s"] == records[-1]["wall_s"]
    best_row = next(r for r in records if r["epoch"] == summary["best_epoch"])
    assert evaluate(run)["acc"] == best_row["test_acc"]  # `fastcifar eval` reads the weights-only best.pt


def test_save_every_writes_last_pt_on_its_epochs_and_always_the_last(root, tmp_path, monkeypatch):
    import fastcifar.engine.checkpoint as checkpoint

    written, threads = [], set()
    real = checkpoint.save_checkpoint
    def recording(state, path):
        written.append((path.name, state["epoch"]))
        threads.add(threading.current_thread().name)
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_checkpoint", recording)
    run_tiny(root, tmp_path, train={"epochs": 5, "save_every": 2})
    assert [epoch for name, epoch in written if name == "last.pt"] == [1, 3, 4]
    assert threads == {"fastcifar-checkpoint"}  # every write ran off the training thread


def test_snapshot_is_a_copy_that_training_cannot_change():
    live = {"model": {"w": torch.ones(3)},
            "optimizer": {"state": {0: {"step": torch.tensor(1.0)}}, "groups": [{"lr": 0.1}]}}
    copy = snapshot(live)
    live["model"]["w"].add_(1)  # what the next optimizer step does to the live tensors, in place
    live["optimizer"]["state"][0]["step"] += 1
    live["optimizer"]["groups"][0]["lr"] = 0.2
    assert copy["model"]["w"].tolist() == [1.0, 1.0, 1.0] and float(copy["optimizer"]["state"][0]["step"]) == 1.0
    assert copy["optimizer"]["groups"][0]["lr"] == 0.1


def test_a_failed_checkpoint_write_stops_training_and_keeps_the_previous_last_pt(root, tmp_path, monkeypatch):
    real = atomic.torch_save

    def disk_full_at_epoch_1(state, path):  # the disk fills up halfway through last.pt of epoch 1
        if os.path.basename(path) == "last.pt" and state["epoch"] == 1:
            with atomic.atomic_path(path) as tmp:
                tmp.write_bytes(b"\0" * 1000)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(state, path)

    monkeypatch.setattr(atomic, "torch_save", disk_full_at_epoch_1)
    message = r"Writing checkpoint '.*last\.pt' failed \(No space left on device\), so training stopped"
    with pytest.raises(FastcifarError, match=message):
        run_tiny(root, tmp_path, train={"epochs": 4})
    (run,) = tmp_path.iterdir()
    assert load_checkpoint(run, "last.pt")["epoch"] == 0  # the previous commit point, whole
    assert not list(run.glob(".tmp-*"))  # the torn temp file is gone
    # epoch 2 noticed the failure when it came to save, before logging: training stopped there, not at epoch 4
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_snapshot_of_cuda_tensors_is_a_pinned_host_copy():
    live = {"w": torch.arange(6.0, device="cuda").view(2, 3).t(), "n": torch.tensor(3, device="cuda")}  # non-contiguous
    copy = snapshot(live)
    live["w"].add_(1)
    assert copy["w"].device.type == "cpu" and copy["w"].is_pinned() and copy["w"].tolist() == [[0, 3], [1, 4], [2, 5]]
    assert int(copy["n"]) == 3
