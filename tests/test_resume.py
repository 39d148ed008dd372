"""`kill -9` a training process, resume it, and get bit-for-bit the run that was never interrupted.

The victim runs in a subprocess with a patched step (or checkpoint write) that SIGKILLs its own process:
no cleanup, no atexit, exactly like an OOM kill or a pulled plug. Checkpoints are written by a background
thread while the next epoch trains, so one case kills the process from that thread halfway through writing
last.pt's bytes. The resumed run then continues in this
process from last.pt, and its final weights, optimizer state, EMA, best.pt and every non-timing metric
must equal those of an uninterrupted run of the same config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_config

from fastcifar.config import to_dict
from fastcifar.engine.checkpoint import load_checkpoint
from fastcifar.engine.metrics import read_jsonl
from fastcifar.engine.trainer import TIMING_KEYS, train

STEPS = (512 - 64) // 64  # steps per epoch: 448 train images after the 64-image val split, batch 64
# Everything that draws random numbers: crop/flip/cutout on the device, mixup, dropout, EMA, label smoothing,
# a val split.
SECTIONS = dict(
    data={"val_split": 64},
    augment={"crop_padding": 2, "hflip": 0.5, "cutout": 0.5, "cutout_size": 8, "mixup_alpha": 0.4, "mix_prob": 0.5},
    model={"drop_rate": 0.1},
    train={"epochs": 3, "ema_decay": 0.9, "label_smoothing": 0.1},
)

VICTIM = textwrap.dedent(
    """
    import io, json, os, signal, sys
    import torch
    torch.set_num_threads(1)  # as the test process: same kernels, same float results
    import fastcifar.engine.checkpoint as checkpoint
    import fastcifar.engine.step as step
    import fastcifar.engine.trainer as trainer
    from fastcifar import atomic
    from fastcifar.config import from_dict

    cfg = from_dict(json.loads(sys.argv[1]))
    where, at = sys.argv[2], int(sys.argv[3])
    calls = {"n": 0}

    def die_after(real, n):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapped

    if where == "step":  # SIGKILL at the start of optimizer step `at` (1-based), mid-epoch
        step.train_step = die_after(step.train_step, at)  # the trainer's Stepper calls it
    else:  # in the writer thread, at last.pt of epoch `at`: its metrics row (and maybe best.pt) is already written
        real_save = checkpoint.save_checkpoint

        def save(state, path):
            if state["epoch"] == at and str(path).endswith("last.pt"):
                if where == "writing":  # halfway through the bytes of the (atomic) temp file, then SIGKILL
                    data = io.BytesIO()
                    torch.save(state, data)
                    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
                        f.write(data.getvalue()[: len(data.getvalue()) // 2])
                        f.flush()
                        os.fsync(f.fileno())
                        os.kill(os.getpid(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)  # before the first byte
            real_save(state, path)

        checkpoint.save_checkpoint = save  # looked up by the writer thread at each write
    trainer.train(cfg, progress=False)
    print("NOT KILLED")
    """
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(prepared_root, tmp_path_factory):
    root = prepared_root("cifar10", ("npy",))
    run = train(tiny_config(root, tmp_path_factory.mktemp("uninterrupted"), **SECTIONS), progress=False)
    return root, run


def _kill_midway(cfg, where: str, at: int, tmp: Path) -> Path:
    script = tmp / "victim.py"
    script.write_text(VICTIM)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(to_dict(cfg)), where, str(at)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]
    (run,) = Path(cfg.train.out_dir).iterdir()
    return run


@pytest.mark.parametrize(
    "where, at, last_epoch_done, logged, save_every",
    [
        ("step", STEPS + 3, 0, [0], 1),  # killed inside epoch 2 (0-based 1), mid-epoch: resume at epoch 1
        ("checkpoint", 1, 0, [0, 1], 1),  # killed as the writer starts epoch 1's last.pt: logged, not saved -> rerun
        ("writing", 1, 0, [0, 1], 1),  # killed halfway through writing epoch 1's last.pt: the old one stays whole
        ("step", 2 * STEPS + 3, 1, [0, 1], 2),  # save_every 2: last.pt after epoch 1 only, resume at epoch 2
    ],
)
def test_kill9_then_resume_matches_an_uninterrupted_run(
    reference, tmp_path, where, at, last_epoch_done, logged, save_every
):
    root, ref_run = reference
    cfg = tiny_config(root, tmp_path / "runs", **{**SECTIONS, "train": {**SECTIONS["train"], "save_every": save_every}})
    run = _kill_midway(cfg, where, at, tmp_path)
    assert load_checkpoint(run, "last.pt")["epoch"] == last_epoch_done
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == logged
    torn = list(run.glob(".tmp-last*"))
    assert len(torn) == (1 if where == "writing" else 0)  # the half-written temp file of the killed write

    assert train(None, resume=str(run), progress=False) == run
    assert not list(run.glob(".tmp-*"))  # the resume cleared it

    ref, got = load_checkpoint(ref_run, "last.pt"), load_checkpoint(run, "last.pt")
    assert got["epoch"] == ref["epoch"] == 2 and got["step"] == ref["step"] == 3 * STEPS
    for key in ("model", "ema"):
        assert ref[key].keys() == got[key].keys()
        assert all(torch.equal(ref[key][k], got[key][k]) for k in ref[key]), key
    ref_opt, got_opt = ref["optimizer"]["state"], got["optimizer"]["state"]
    assert all(torch.equal(ref_opt[i][name], got_opt[i][name]) for i in ref_opt for name in ref_opt[i])
    assert all(ref[k] == got[k] for k in ("best", "early_stop", "scheduler"))
    ref_best, got_best = load_checkpoint(ref_run), load_checkpoint(run)
    assert got_best["epoch"] == ref_best["epoch"]
    assert all(torch.equal(ref_best["model"][k], v) for k, v in got_best["model"].items())

    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    ref_rows, got_rows = read_jsonl(ref_run / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in got_rows] == [0, 1, 2]
    assert strip(got_rows) == strip(ref_rows)
    # header + 3 epochs, no duplicate of the rerun epoch
    assert len((run / "metrics.csv").read_text().splitlines()) == 4
    ref_sum, got_sum = (json.loads((r / "summary.json").read_text()) for r in (ref_run, run))
    for key in ("best_epoch", "best_value", "best_acc", "best_test_acc", "last_test_acc", "epochs_done", "status"):
        assert got_sum[key] == ref_sum[key], key
    assert got_sum["resumes"] == 1 and ref_sum["resumes"] == 0
    assert (run / "confusion.csv").read_text() == (ref_run / "confusion.csv").read_text()


def test_resume_refuses_a_different_config_and_a_missing_checkpoint(reference, tmp_path):
    from fastcifar.errors import FastcifarError

    root, ref_run = reference
    with pytest.raises(FastcifarError, match="continues with the config saved in its checkpoint"):
        train(tiny_config(root, tmp_path, train={"epochs": 9}), resume=str(ref_run), progress=False)
    with pytest.raises(FastcifarError, match="No checkpoint at"):
        train(None, resume=str(tmp_path), progress=False)


def test_resume_may_change_where_a_run_runs_but_not_what_it_computes(reference):
    from fastcifar.engine.trainer import _resume_target
    from fastcifar.errors import FastcifarError

    _, run = reference
    run_dir, cfg, _ = _resume_target(str(run), None, ["train.device=cpu", "data.workers=0"])
    assert run_dir == run and cfg.train.device == "cpu" and cfg.data.workers == 0
    with pytest.raises(FastcifarError, match="only train.device, data.root, data.workers, data.prefetch may change"):
        _resume_target(str(run), None, ["optim.lr=0.1"])
    with pytest.raises(FastcifarError, match="not 'best.pt'"):
        _resume_target(str(run / "best.pt"), None, [])
