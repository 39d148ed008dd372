"""Two-process data parallelism (torchrun, gloo on CPU) runs the same trainer code path as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from tiny_run import tiny_config

from fastcifar.config import to_dict
from fastcifar.engine.checkpoint import load_checkpoint
from fastcifar.engine.metrics import read_jsonl

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)  # two ranks on two cores
    from fastcifar.config import from_dict
    from fastcifar.engine.trainer import train

    run = train(from_dict(json.loads(sys.argv[1])), progress=False)
    import os
    print(f"RANK {os.environ['RANK']} RUN {run}", flush=True)
    """
)


def test_two_process_gloo_run_matches_the_single_process_band(prepared_root, tmp_path):
    root = prepared_root("cifar10", ("npy",))
    # 32 per rank x 2 ranks = the single-process tests' global batch of 64, so the same 8 steps per epoch
    cfg = tiny_config(root, tmp_path / "runs", data={"batch_size": 32}, train={"epochs": 4})
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), json.dumps(to_dict(cfg))]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # rank 0 alone made the run folder...
    run = runs[0]
    assert {line.split(" RUN ")[1] for line in done.stdout.splitlines() if " RUN " in line} == {str(run)}  # ...and both ranks got its path
    assert done.stdout.count("best test_acc") == 1  # only rank 0 prints
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["step"] == 4 * 8  # each rank: 256 images / 32 per step
    assert records[-1]["test_acc"] >= 0.8, records
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "done"
    # the evaluation shards were all-reduced: the confusion matrix counts the whole 256-image test split once
    confusion = (run / "confusion.csv").read_text().splitlines()
    assert sum(int(v) for line in confusion[1:] for v in line.split(",")[1:]) == 256
    state = load_checkpoint(run, "last.pt")
    assert len(state["rng"]) == 2  # one RNG state per rank: each rank draws its own augmentation
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert not any(k.startswith("module.") for k in state["model"])  # DDP unwrapped before saving

