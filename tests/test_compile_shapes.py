"""torch.compile sees static shapes only: one graph per multi-scale side and one for evaluation, nothing symbolic.

The run compiles through a counting backend (dynamo traces and guards exactly as with inductor, then runs the
captured graph eagerly: seconds, not minutes, on a CPU). tests/test_train_compile.py runs the real inductor.
"""

from __future__ import annotations

import pytest
import torch
from tiny_run import run_tiny

import fastcifar.engine.build as build
from fastcifar.errors import FastcifarError

pytestmark = pytest.mark.usefixtures("one_thread")

# 448 training images after a 64-image val split at batch 64 (drop_last): full batches only. The 64 val images
# are one partial eval batch of the 256-image eval batch size; the 256 test images one full batch.
SECTIONS = dict(data={"val_split": 64}, augment={"image_size": 32, "scales": [24, 40]},
                train={"epochs": 2, "compile": True})


@pytest.fixture
def graphs(monkeypatch):
    """Every graph dynamo hands to the backend, as the shapes of its inputs ([] when none was compiled)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    seen: list[list] = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        seen.append([tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in example_inputs])
        return gm.forward

    counters.clear()
    monkeypatch.setattr(build, "COMPILE_BACKEND", backend)
    yield seen
    torch._dynamo.reset()


def _symbolic(shapes: list) -> bool:
    return any(isinstance(d, torch.SymInt) for s in shapes for d in (s if isinstance(s, tuple) else (s,)))


def test_multi_scale_run_with_partial_eval_batches_compiles_one_static_graph_per_shape(prepared_root, tmp_path, graphs):
    from torch._dynamo.utils import counters

    root = prepared_root("cifar10", ("npy",))
    run, records, summary = run_tiny(root, tmp_path, **SECTIONS)
    assert [r["epoch"] for r in records] == [0, 1] and records[-1]["val_acc"] is not None
    # 2 training sides + 1 eval shape (val padded to the eval batch size: the same graph as the full test batch)
    assert len(graphs) == 3 == counters["stats"]["unique_graphs"], graphs
    assert not counters["graph_break"], dict(counters["graph_break"])  # whole forward in one graph, no eager fallback
    assert not any(_symbolic(g) for g in graphs)  # dynamic=False: no symbolic sizes
    images = [[s for s in g if isinstance(s, tuple) and len(s) == 4 and s[1] == 3] for g in graphs]  # input, 1st conv
    batches = sorted(max(shapes, key=lambda s: s[0] * s[2] * s[3]) for shapes in images)  # the image batch: largest
    assert batches == [(64, 3, 24, 24), (64, 3, 40, 40), (256, 3, 32, 32)]
    # the padded rows are cut before every sum: the val split counts its 64 images once
    confusion = (run / "confusion.csv").read_text().splitlines()
    assert sum(int(v) for line in confusion[1:] for v in line.split(",")[1:]) == 64


def test_an_unplanned_shape_stops_the_run_with_one_sentence(prepared_root, tmp_path, graphs, monkeypatch):
    import fastcifar.engine.trainer as trainer

    root = prepared_root("cifar10", ("npy",))
    monkeypatch.setattr(trainer, "graph_count", lambda cfg, eval_compiled: 2)  # forgets the eval graph
    message = r"torch.compile reached its limit of 2 static graphs.*train.compile: false"
    with pytest.raises(FastcifarError, match=message):
        run_tiny(root, tmp_path, **SECTIONS)
    assert len(graphs) == 2  # both training sides compiled, then the eval shape was refused, not run eagerly


def test_graph_count_plans_one_graph_per_shape_and_says_when_it_exceeds_dynamos_default():
    from tiny_run import tiny_config

    cfg = tiny_config("/nowhere", "/nowhere", augment={"scales": [24, 32, 40]})
    assert build.graph_count(cfg, eval_compiled=True) == 3 + 1
    assert build.graph_count(cfg, eval_compiled=False) == 3
    ragged = tiny_config("/nowhere", "/nowhere", data={"drop_last": False})  # a last, smaller training batch
    assert build.graph_count(ragged, eval_compiled=True) == 2 + 1
    assert build.graph_note(8) is None
    assert "raised from 8 to 11" in build.graph_note(11)


@pytest.mark.parametrize("train, eval_graphs, eval_rows", [
    ({"tta": "flip_translate"}, 1, 512),  # three forwards of image + mirror per batch: still one eval shape
    ({"ema_decay": 0.9}, 0, None),  # the EMA copy evaluates eagerly: no eval graph, no padding
], ids=["flip_translate", "ema"])
def test_tta_and_ema_keep_the_planned_graph_count(train, eval_graphs, eval_rows, prepared_root, tmp_path, graphs):
    root = prepared_root("cifar10", ("npy",))
    sections = {**SECTIONS, "train": {**SECTIONS["train"], **train}}
    run_tiny(root, tmp_path, **sections)
    assert len(graphs) == 2 + eval_graphs and not any(_symbolic(g) for g in graphs), graphs
    images = [[s for s in g if isinstance(s, tuple) and len(s) == 4 and s[1] == 3] for g in graphs]
    rows = sorted(max(shapes, key=lambda s: s[0] * s[2] * s[3])[0] for shapes in images)
    assert rows == sorted([64, 64] + ([eval_rows] if eval_rows else []))
