"""Two-process data parallelism (torchrun, gloo on CPU) runs the same trainer code path as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
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
    import hashlib, os
    from fastcifar.config import from_dict
    from fastcifar.engine import trainer

    real_evaluate = trainer.Trainer._evaluate

    def evaluate(self, model, splits=None):  # log a digest of the buffers (BatchNorm statistics) each rank evaluates
        flat = torch.cat([b.detach().double().flatten() for b in model.buffers()])
        with open(os.path.join(sys.argv[2], f"buffers-{self.dist.rank}.txt"), "a") as f:
            f.write(f"{self.step} {hashlib.sha1(flat.numpy().tobytes()).hexdigest()}\\n")
        return real_evaluate(self, model, splits)

    trainer.Trainer._evaluate = evaluate
    run = trainer.train(from_dict(json.loads(sys.argv[1])), progress=False)
    # a file per rank: two ranks printing to one pipe can interleave their lines
    with open(os.path.join(sys.argv[2], f"run-{os.environ['RANK']}.txt"), "w") as f:
        f.write(str(run))
    """
)


def test_two_process_gloo_run_matches_the_single_process_band(prepared_root, tmp_path):
    root = prepared_root("cifar10", ("npy",))
    # 32 per rank x 2 ranks = the single-process tests' global batch of 64, so the same 8 steps per epoch
    cfg = tiny_config(root, tmp_path / "runs", data={"batch_size": 32}, train={"epochs": 4})
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               json.dumps(to_dict(cfg)), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # rank 0 alone made the run folder...
    run = runs[0]
    # ...and both ranks got its path
    assert {(tmp_path / f"run-{rank}.txt").read_text() for rank in (0, 1)} == {str(run)}
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
    # rank -> "step digest" of the evaluated model's buffers, one line per evaluation
    digests = [(tmp_path / f"buffers-{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    assert len(digests[0]) == 4 + 1  # every epoch + the final re-score of best.pt
    assert digests[0] == digests[1]  # the same BatchNorm statistics on both ranks, every time
    # Every rank evaluated rank 0's BatchNorm statistics (synchronised before each evaluation and save), so one
    # process re-scoring best.pt reproduces what the two ranks recorded together. The loss sums the same float32
    # terms in another order (two shards all-reduced), hence approx; counts are exact.
    from fastcifar.engine.evaluate import evaluate

    best = next(r for r in records if r["epoch"] == summary["best_epoch"])
    again = evaluate(run, device="cpu")
    assert (again["acc"], again["top5"]) == (best["test_acc"], best["test_top5"])
    assert again["acc"] == summary["best_acc"]
    assert again["loss"] == pytest.approx(best["test_loss"], rel=1e-6)

