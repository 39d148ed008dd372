"""`fastcifar bench --paired`: the loaders of one size are timed in alternating segments, each after the
previous loader's background work stopped.

No assertion is about speed: the segments must really alternate (each loader leading in turn), every loader
must time what an unpaired cell times (its windows, an epoch boundary), and the wait between segments must
last exactly as long as a child process keeps working.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from fastcifar.bench.cli import paired_cells
from fastcifar.bench.paired import MIN_ROUNDS
from fastcifar.bench.timing import QUIESCE_POLL_S, QUIESCE_TIMEOUT_S, quiesce
from fastcifar.cli import main

BATCH = 16


def test_quiesce_waits_while_a_child_works_and_not_when_idle():
    assert quiesce() < 0.5  # nothing runs in the background: one or two polls
    spin = "import time\nend = time.time() + 1.2\nwhile time.time() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.2)  # the child is past its start-up
        waited = quiesce()
    finally:
        busy.wait()
    assert 0.7 < waited < QUIESCE_TIMEOUT_S  # until the busy loop ended, about a second after it started


def test_paired_cells_group_the_loaders_of_each_size_in_place():
    cells = [("loader", "gpu", 32, {}), ("loader", "gpu", 64, {}), ("loader", "torch", 32, {}),
             ("loader", "torch", 64, {}), ("loader", "ffcv", 32, {}), ("model", None, 32, {}),
             ("loader", "dali", 224, {})]
    assert paired_cells(cells) == [("loader", ("gpu", "torch"), 32, {}), ("loader", ("gpu", "torch"), 64, {}),
                                   ("loader", "ffcv", 32, {}),  # slows other loaders in its process: on its own
                                   ("model", None, 32, {}), ("loader", "dali", 224, {})]  # alone at its size


def test_paired_loaders_alternate_each_leading_in_turn(prepared_root, tmp_path):
    root = prepared_root("cifar100", ("npy",))
    path, md = tmp_path / "paired.json", tmp_path / "paired.md"
    code = main(["bench", "--root", str(root), "--dataset", "cifar100", "--views", "loader", "--loaders", "gpu,torch",
                 "--image-sizes", "32", "--batch-size", str(BATCH), "--iters", "3", "--warmup", "1", "--workers", "1",
                 "--min-seconds", "0", "--paired", "--json", str(path), "--markdown", str(md)])
    assert code == 0
    data = json.loads(path.read_text())
    assert not data["failed"] and data["provenance"]["settings"]["paired"] is True
    gpu, torch_row = data["rows"]
    assert (gpu["loader"], torch_row["loader"]) == ("gpu", "torch")
    rounds = gpu["rounds"]
    assert rounds >= MIN_ROUNDS and torch_row["rounds"] == rounds
    for row in (gpu, torch_row):
        assert row["paired"] and len(row["segment_img_s"]) == len(row["segment_start_s"]) == rounds
        assert row["iters"] >= 3 and row["epoch_boundaries"] >= 1 and row["img_s"] > 0
        assert row["quiesce_s"] >= rounds * QUIESCE_POLL_S  # each segment waited for the tree to idle first
        # overall: all images over all timed time, a time-weighted mean of the segments' and the windows' rates
        assert min(row["segment_img_s"]) <= row["img_s"] <= max(row["segment_img_s"])
        assert row["img_s_min"] <= row["img_s"] <= row["img_s_max"]
    # in time order the segments run gpu torch, torch gpu, gpu torch, ...: each loader leads every other round
    starts = sorted([(t, "gpu") for t in gpu["segment_start_s"]] + [(t, "torch") for t in torch_row["segment_start_s"]])
    order = [name for _, name in starts]
    assert order[0::2] == [("gpu", "torch")[i % 2] for i in range(rounds)], order
    assert order[1::2] == [("torch", "gpu")[i % 2] for i in range(rounds)], order
    assert "PAIRED" in md.read_text()
