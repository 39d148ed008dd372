"""evaluate(), the results table, and the engine's building blocks: checkpoints/RNG, metrics, confusion, plots."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from tiny_run import run_tiny

from fastcifar import atomic
from fastcifar.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fastcifar.engine.metrics import (
    MetricsLog,
    confusion_matrix,
    most_confused,
    read_jsonl,
)
from fastcifar.errors import FastcifarError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def val_run(prepared_root, tmp_path_factory):
    root = prepared_root("cifar10", ("npy",))
    return run_tiny(root, tmp_path_factory.mktemp("evalruns"), data={"val_split": 128}, train={"epochs": 2})


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_reproduces_the_recorded_best_and_last(val_run):
    from fastcifar.engine.evaluate import evaluate

    run, records, summary = val_run
    best = next(r for r in records if r["epoch"] == summary["best_epoch"])
    on_val = evaluate(run, split="val")
    assert on_val["images"] == 128
    assert on_val["acc"] == pytest.approx(summary["best_acc"]) == pytest.approx(best["val_acc"])
    on_test = evaluate(run)
    assert on_test["images"] == 256 and on_test["epoch"] == summary["best_epoch"]
    assert (on_test["acc"], on_test["top5"]) == (best["test_acc"], best["test_top5"])
    assert on_test["loss"] == pytest.approx(best["test_loss"], rel=1e-5)
    last = evaluate(run / "last.pt")  # a checkpoint file instead of a run dir
    assert last["acc"] == records[-1]["test_acc"] and last["epoch"] == records[-1]["epoch"]
    assert evaluate(run, split="train")["images"] == 512
    # the mirror really is averaged in
    assert evaluate(run, tta=True)["loss"] != pytest.approx(on_test["loss"], rel=1e-6)


def test_evaluate_errors_are_one_sentence(val_run, tmp_path):
    from fastcifar.engine.evaluate import evaluate

    with pytest.raises(FastcifarError, match="No checkpoint at"):
        evaluate(tmp_path)
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FastcifarError, match="cannot be read"):
        evaluate(tmp_path)
    with pytest.raises(FastcifarError, match="Unknown split"):
        evaluate(val_run[0], split="validation")


# ---------------------------------------------------------------------------- results table


def test_results_table_lists_finished_and_unfinished_runs(val_run, tmp_path):
    from rich.console import Console

    from fastcifar.engine.results import print_results, results_table

    run, records, summary = val_run
    nested = tmp_path / "sweep" / "a"
    nested.mkdir(parents=True)
    finished = shutil.copytree(run, nested / run.name)
    crashed = shutil.copytree(run, tmp_path / "sweep" / "crashed-run")
    (crashed / "summary.json").write_text(
        json.dumps({"status": "running", "synthetic": True, "select_metric": "val_acc", "loader": "gpu"})
    )
    rows = {r["run"]: r for r in results_table([tmp_path])}
    assert set(rows) == {finished.name, "crashed-run"}
    done = rows[finished.name]
    assert (done["status"], done["name"], done["description"], done["loader"], done["synthetic"]) == (
        "done", "tiny", "trainer test", "gpu", True
    )
    assert all(done[k] == summary[k] for k in ("best_acc", "best_epoch", "img_per_s"))
    partial = rows["crashed-run"]
    best = max(records, key=lambda r: r["val_acc"])
    assert partial["status"] == "incomplete" and partial["best_acc"] == best["val_acc"] and partial["epochs"] == 2
    console = Console(record=True, width=160)
    print_results([tmp_path], console=console)
    text = console.export_text()
    assert "tiny" in text and "SYNTHETIC" in text and f"{summary['best_acc']:.2%}" in text and "incomplete" in text
    with pytest.raises(FastcifarError, match="does not exist"):
        results_table([tmp_path / "nope"])


# ---------------------------------------------------------------------------- checkpoints and RNG


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    state = rng_state()
    save_checkpoint({"model": {}, "rng": [state]}, tmp_path / "c.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3))
    loaded = load_checkpoint(tmp_path / "c.pt")  # weights_only=True
    set_rng_state(loaded["rng"][0])
    again = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "bad": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
    atomic.copy_file(path, tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == path.read_bytes() and not (tmp_path / "best.pt").is_symlink()


# ---------------------------------------------------------------------------- metrics, confusion, plots


def test_metrics_log_appends_and_truncates_both_files(tmp_path):
    log = MetricsLog(tmp_path, ["epoch", "train_loss", "val_acc"])
    for epoch in range(3):
        log.append({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "img_per_s": torch.tensor(5.0),
                    **({"val_acc": 0.5} if epoch != 1 else {})})
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["img_per_s"] == 5.0  # tensors become numbers
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,train_loss,val_acc", "0,1,0.5", "1,0.5,", "2,0.333333,0.5"
    ]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # a torn line from a crash mid-write is skipped
    assert len(log.records()) == 3
    log.truncate(2)
    assert [r["epoch"] for r in log.records()] == [0, 1]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


def test_confusion_matrix_and_most_confused_pairs():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2, 0, 0, 0])
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[1, 2, 0], [1, 1, 0], [3, 0, 1]]
    pairs = most_confused(cm, ["cat", "dog", "frog"], k=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("frog", "cat", 3), ("cat", "dog", 2)]
    assert pairs[0]["share"] == pytest.approx(0.75)
    assert most_confused(torch.eye(3, dtype=torch.long), ["a", "b", "c"]) == []


def test_plots_write_png_files(tmp_path):
    from fastcifar.engine.plots import plot_confusion, plot_curves

    records = [
        {"epoch": e, "train_loss": 2 - e / 2, "test_loss": 2.1 - e / 2, "train_acc": e / 4, "test_acc": e / 5,
         "lr": 0.1 * (3 - e)}
        for e in range(3)
    ]
    records[1].pop("test_acc")  # an epoch without evaluation
    plot_curves(records, tmp_path / "curves.png")
    plot_confusion(torch.randint(0, 20, (20, 20)), [f"c{i}" for i in range(20)], tmp_path / "confusion.png")
    for name in ("curves.png", "confusion.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "curves.png"]


def test_flip_tta_averages_the_softmax_of_image_and_mirror():
    """By value: a model that reads the left and right halves differently, so the mirror changes its logits."""
    from contextlib import nullcontext

    from fastcifar.engine.step import eval_pass

    class Halves(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([3.0, -1.0, 0.5]))

        def forward(self, x):  # [B, 3, H, W] -> [B, 3]: left-half mean minus right-half mean, per channel
            w = x.shape[-1] // 2
            return (x[..., :w].mean((2, 3)) - x[..., w:].mean((2, 3))) * self.scale

    torch.manual_seed(0)
    x = torch.rand(6, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    model = Halves()
    sums = eval_pass(model, [(x, labels)], lambda images: images, nullcontext(), 3, tta=True)
    with torch.no_grad():
        mean_prob = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
    expected = torch.nn.functional.nll_loss(mean_prob.log(), labels, reduction="sum")
    assert float(sums["loss_sum"]) == pytest.approx(float(expected), rel=1e-5)
    assert int(sums["correct1"]) == int((mean_prob.argmax(1) == labels).sum())
    plain = eval_pass(model, [(x, labels)], lambda images: images, nullcontext(), 3, tta=False)
    assert float(plain["loss_sum"]) != pytest.approx(float(expected), rel=1e-3)


@pytest.mark.parametrize("tta", [False, True])
def test_padding_the_last_eval_batch_keeps_every_sum_bit_exact(tta):
    """A compiled model sees one static eval shape: the last, smaller batch is padded with zero images and the
    padded rows are cut before any sum. The model sees only full batches; loss, top-1/top-5, count and the
    confusion matrix equal the unpadded pass bit for bit (eval-mode rows are independent of each other)."""
    from contextlib import nullcontext

    import timm

    from fastcifar.engine.step import eval_pass

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10).eval().to(memory_format=torch.channels_last)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    batches = [(images[:256], labels[:256]), (images[256:], labels[256:])]  # 256 + a partial batch of 44

    def prepare(x):
        return (x.float() / 255).contiguous(memory_format=torch.channels_last)

    plain = eval_pass(model, batches, prepare, nullcontext(), 10, tta=tta)
    seen.clear()
    padded = eval_pass(model, batches, prepare, nullcontext(), 10, tta=tta, pad_to=256)
    assert seen == ([512, 512] if tta else [256, 256])  # one static shape (image + mirror with TTA)
    assert int(padded["count"]) == 300 and int(padded["confusion"].sum()) == 300
    for key in plain:
        assert torch.equal(plain[key], padded[key]), key


def test_a_padded_eval_batch_keeps_the_loader_memory_format():
    """Dynamo guards on strides too: a padded batch must look exactly like a full one (channels_last uint8)."""
    from contextlib import nullcontext

    from fastcifar.engine.step import eval_pass

    seen = []

    def prepare(images):
        seen.append((tuple(images.shape), images.stride()))
        return images.float()

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3, 4))

        def forward(self, x):
            return x.mean((2, 3)) @ self.w

    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(10, dtype=torch.int64)
    eval_pass(Tiny(), [(images[:8], labels[:8]), (images[8:], labels[8:])], prepare, nullcontext(), 4, pad_to=8)
    assert seen[0] == seen[1] == ((8, 3, 8, 8), (192, 1, 24, 3))  # NHWC strides for both
