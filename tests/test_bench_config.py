"""`fastcifar bench --config / --set / --views run / --timed-epochs`: what a cell measures comes from the config
schema, the real-run view trains for real, and whole epochs are timed when asked. Tiny CPU settings, no speed."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from fastcifar.bench.cli import add_arguments, base_config
from fastcifar.bench.suites import BenchSettings, data_info, loader_only, make_config
from fastcifar.cli import main
from fastcifar.config import load_config

BATCH = 16


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_config_the_bench_defaults_stay_and_set_changes_them():
    base, cfg = base_config(_args(), torch.device("cpu"))
    assert (cfg.model.name, cfg.data.batch_size, cfg.train.amp, cfg.train.compile) == ("resnet18", 256, "none", False)
    assert (cfg.augment.crop_padding, cfg.augment.hflip, cfg.augment.cutout) == (4, 0.5, 0.0)
    base, cfg = base_config(_args("--set", "augment.cutout=0.5", "--set", "model.name=resnet10t"), torch.device("cpu"))
    assert cfg.augment.cutout == 0.5 and cfg.model.name == "resnet10t" and cfg.augment.hflip == 0.5
    _, cuda = base_config(_args(), torch.device("cuda"))
    assert (cuda.train.amp, cuda.train.compile) == ("bf16", True)


def test_config_cells_carry_the_configs_policy_model_and_precision(tmp_path):
    args = _args("--config", "resnet18_arcface_224", "--set", "augment.jitter=0.3")
    base, cfg = base_config(args, torch.device("cpu"))
    packaged = load_config("resnet18_arcface_224")
    assert cfg.model.head == packaged.model.head == "arcface" and cfg.augment.jitter == 0.3
    settings = BenchSettings(root=tmp_path, device="cpu", batch_size=BATCH, workers=1, model=cfg.model.name,
                             amp=cfg.train.amp, compile=False, base=base)
    cell = make_config(settings, "dali", cfg.augment.image_size)
    assert cell.augment.image_size == packaged.augment.image_size == 224
    assert cell.model.head == "arcface" and cell.optim == packaged.optim and cell.augment.jitter == 0.3
    assert cell.data.loader == "dali" and cell.data.batch_size == BATCH and cell.data.root == str(tmp_path)
    assert cell.model.pretrained is False and cell.distill.teacher is None  # no download, no teacher, in a bench cell


def test_set_goes_through_the_schema():
    with pytest.raises(Exception, match="augment.hflipp|did you mean"):
        base_config(_args("--set", "augment.hflipp=0.5"), torch.device("cpu"))
    assert main(["bench", "--set", "augment.hflipp=0.5", "--views", "loader"]) == 2  # one sentence, exit 2
    assert main(["bench", "--config", "resnet18_basline"]) == 2


def test_config_run_measures_its_own_policy(tmp_path):
    path = tmp_path / "c.json"
    code = main(["bench", "--config", "resnet18_augment", "--views", "loader", "--loaders", "gpu",
                 "--image-sizes", "32", "--batch-size", str(BATCH), "--iters", "2", "--warmup", "1",
                 "--min-seconds", "0",
                 "--synthetic-images", "128", "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    packaged = load_config("resnet18_augment").augment
    assert data["config"]["name"] == "resnet18_augment"
    assert data["policy"]["one_of"] is True and data["policy"]["cutout"] == packaged.cutout  # the config's policy
    assert data["rows"][0]["epoch_boundaries"] >= 1


def test_timed_epochs_time_whole_epochs(prepared_root):
    root = prepared_root("cifar100", ("npy",))
    settings = BenchSettings(root=root, device="cpu", batch_size=BATCH, workers=1, model="resnet10t", iters=2,
                             warmup=1, timed_epochs=2)
    row = loader_only(settings, "gpu", 32, data_info(settings))
    per_epoch = 512 // BATCH
    assert row["batches_per_epoch"] == per_epoch and row["batches"] >= 2 * per_epoch and row["epoch_boundaries"] >= 2


def test_run_view_trains_evaluates_and_checkpoints(tmp_path):
    path = tmp_path / "r.json"
    code = main(["bench", "--views", "run", "--loaders", "gpu", "--image-sizes", "32", "--batch-size", str(BATCH),
                 "--model", "resnet10t", "--iters", "2", "--warmup", "1",
                 "--min-seconds", "0", "--synthetic-images", "64",
                 "--run-epochs", "2", "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    ceiling = next(r for r in data["rows"] if r["view"] == "model")
    run = next(r for r in data["rows"] if r["view"] == "run")
    assert run["epochs"] == 2 and run["images"] == 2 * (64 // BATCH) * BATCH
    assert run["eval_s"] > 0 and run["train_s"] > 0 and run["wall_s"] >= run["train_s"] + run["eval_s"]
    assert run["img_s"] == pytest.approx(run["images"] / (run["wall_s"] - run["warmup_s"]))
    assert run["ratio"] == pytest.approx(run["img_s"] / ceiling["img_s"]) and run["device_wait_share"] is None
    assert 0 <= run["data_wait_share"] <= 1 and run["test_acc"] is not None
    assert run["train_share"] == pytest.approx(run["train_s"] / run["wall_s"]) and "verdict" not in run


def test_run_view_plan_adds_the_ceiling_and_runs_at_the_model_sizes():
    from fastcifar.bench.cli import _plan

    cells, skipped, notes = _plan(_args("--views", "run"), torch.device("cpu"), ["gpu", "dali"], ["run"])
    assert [(c[0], c[1], c[2]) for c in cells] == [("model", None, 32), ("run", "gpu", 32), ("run", "dali", 32)]
    assert any("ceiling" in n for n in notes) and sorted(s["image_size"] for s in skipped) == [64, 128, 224]
