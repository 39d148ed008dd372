"""The torch.compile path, once, on the tiny model (inductor on CPU: tens of seconds of compile)."""

from __future__ import annotations

import pytest
import torch
from tiny_run import run_tiny

from fastcifar.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compiled_run_trains_records_compile_time_and_saves_plain_weights(prepared_root, tmp_path):
    root = prepared_root("cifar10", ("npy",))
    run, records, summary = run_tiny(root, tmp_path, train={"epochs": 2, "compile": True})
    assert summary["compile"] is True
    assert summary["compile_s"] == records[0]["warmup_s"] > 0  # the first step, timed alone
    assert "warmup_s" not in records[1]  # later epochs have no warm-up
    # the compiled first step is far slower than a steady step: that is what is kept out of img/s
    steady_step_s = 64 / records[1]["img_per_s"]
    assert summary["compile_s"] > 5 * steady_step_s
    assert records[-1]["test_acc"] >= 0.6, records
    state = load_checkpoint(run, "last.pt")["model"]
    assert not any("_orig_mod" in k for k in state)  # Module.compile() in place: plain keys, loadable anywhere
    from fastcifar.engine.evaluate import evaluate

    best = next(r for r in records if r["epoch"] == summary["best_epoch"])
    assert evaluate(run, device="cpu")["acc"] == best["test_acc"]  # eager evaluation of compiled-trained weights
    assert torch.get_num_threads() == 1
