"""`fastcifar bench`: the harness returns complete, consistent rows and writes its report files.

Tiny settings on the CPU (a 512-image synthetic CIFAR-100, batch 16, resnet10t). No assertion is about speed:
rows must carry the required fields, positive finite numbers, medians inside [min, max], ratios and verdicts
that follow their definitions, and files that are really written (JSON provenance, Markdown tables, PNG bytes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pytest
import torch

from fastcifar.bench import report
from fastcifar.bench.cli import _plan, add_arguments
from fastcifar.bench.provenance import LoadWatch, collect
from fastcifar.bench.suites import (
    BenchSettings,
    data_info,
    end_to_end,
    loader_only,
    model_only,
    window_rates,
)
from fastcifar.bench.thresholds import INVISIBLE_RATIO, WAIT_SHARE_OF_GAP, verdict
from fastcifar.bench.timing import CpuMeter, IterationClock, summarize, throughput
from fastcifar.cli import main
from fastcifar.errors import FastcifarError

BATCH = 16
ITERS = 4
COMMON = ("view", "loader", "image_size", "batch_size", "workers", "device", "iters", "img_s", "img_s_min", "img_s_max",
          "img_s_median", "epoch_boundaries", "step_ms", "step_ms_min", "step_ms_max", "cpu_pct_one_core",
          "cpu_pct_all_cores", "build_s", "warmup_s")


@pytest.fixture(scope="module")
def root(prepared_root) -> Path:
    return prepared_root("cifar100", ("npy", "ffcv", "dali"))


@pytest.fixture(scope="module")
def settings(root) -> BenchSettings:
    return BenchSettings(root=root, dataset="cifar100", device="cpu", batch_size=BATCH, workers=1, model="resnet10t",
                         iters=ITERS, warmup=1)


def _check_row(row: dict, view: str, image_size: int) -> None:
    missing = [k for k in COMMON if k not in row]
    assert not missing, f"row lacks {missing}"
    assert row["view"] == view and row["image_size"] == image_size and row["iters"] >= ITERS
    for key in ("img_s", "img_s_min", "img_s_max", "img_s_median", "step_ms", "step_ms_min", "step_ms_max",
                "cpu_pct_one_core"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["img_s_min"] <= row["img_s"] <= row["img_s_max"]  # overall: a time-weighted mean of window rates
    assert row["img_s_min"] <= row["img_s_median"] <= row["img_s_max"]
    if view == "model":
        assert row["epoch_boundaries"] is None and row["iters"] == ITERS  # no loader, no boundary to wait for
    else:  # every loader cell times at least one epoch boundary, whatever the dataset size
        assert row["epoch_boundaries"] >= 1 and row["boundary_fetch_s"] > 0 and row["batches_per_epoch"] == 512 // BATCH
    assert row["step_ms_min"] <= row["step_ms"] <= row["step_ms_max"]
    # img/s and step time describe the same iterations: the fastest step is the highest rate
    assert row["img_s_max"] == pytest.approx(BATCH / (row["step_ms_min"] / 1000), rel=1e-6)
    assert row["cpu_pct_all_cores"] == pytest.approx(
        row["cpu_pct_one_core"] / len(__import__("os").sched_getaffinity(0)))
    assert 0 <= row["build_s"] <= row["warmup_s"]


# ---------------------------------------------------------------------------- timing


def test_summary_and_throughput_by_value():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max, s.mean, s.n) == (2.5, 1.0, 10.0, 4.0, 4)
    rate = throughput([0.5, 0.25, 1.0], 100)  # 200, 400, 100 img/s
    assert (rate.median, rate.min, rate.max) == (200.0, 100.0, 400.0)
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_cpu_clock_and_meter_measure_a_busy_loop():
    clock, meter = IterationClock(torch.device("cpu")), CpuMeter()
    meter.start()
    clock.mark()
    for _ in range(3):
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:  # burn CPU for 50 ms
            pass
        clock.mark()
    seconds, cpu = clock.seconds(), meter.stop()
    assert len(seconds) == 3 and all(s >= 0.05 for s in seconds)
    assert cpu["wall_s"] >= sum(seconds) * 0.99
    assert 0 < cpu["cpu_s"] <= cpu["wall_s"] * 1.05 + 0.05  # one busy thread cannot use more than one core
    assert cpu["cpu_pct_one_core"] == pytest.approx(100 * cpu["cpu_s"] / cpu["wall_s"])


def test_windows_close_after_their_batch_count_or_half_a_second():
    from fastcifar.bench.suites import MIN_WINDOW_S, _windows

    calls = []
    assert _windows(lambda: calls.append(1), 3, window=4) == [4, 4, 4] and len(calls) == 12  # fast steps: full windows
    clock = IterationClock(torch.device("cpu"))
    slow = _windows(lambda: time.sleep(0.3 * MIN_WINDOW_S / 0.5), 2, window=4, clock=clock)  # 0.3 s per step
    assert slow == [2, 2]  # 0.6 s >= MIN_WINDOW_S after two steps
    assert len(clock.seconds()) == 2 and all(s >= 2 * 0.3 * MIN_WINDOW_S / 0.5 for s in clock.seconds())


def test_windows_continue_until_the_minimum_timed_seconds():
    # a fast cell's iters windows can span a tenth of a second: min_seconds adds windows until the cell is long
    from fastcifar.bench.suites import _windows

    clock = IterationClock(torch.device("cpu"))
    sizes = _windows(lambda: time.sleep(0.002), 2, window=5, clock=clock, min_seconds=0.2)
    assert len(sizes) > 2 and sum(clock.seconds()) >= 0.2
    assert len(_windows(lambda: time.sleep(0.002), 2, window=5, min_seconds=0)) == 2
    with pytest.raises(FastcifarError, match="min-seconds"):
        BenchSettings(root=Path("."), min_seconds=-1)


def test_a_loader_cell_times_its_epoch_boundaries_up_to_a_cap():
    from fastcifar.bench.suites import epochs_short

    assert epochs_short(0, 5, 10, 0) and not epochs_short(1, 5, 10, 0)  # one boundary by default
    assert epochs_short(2, 15, 10, 2) and not epochs_short(2, 20, 10, 2)  # --timed-epochs 2: two whole epochs
    assert not epochs_short(0, 30, 10, 0) and not epochs_short(0, 40, 10, 2)  # (need + 2) epochs: stop anyway


def test_overall_is_all_images_over_all_time_and_the_median_leaves_a_stall_out():
    # four 0.1 s windows of 2 batches of 16, then a window that held an epoch-boundary stall (1.0 s)
    rates = window_rates([0.1, 0.1, 0.1, 0.1, 1.0], [2, 2, 2, 2, 2], 16)
    assert rates["img_s"] == pytest.approx(160 / 1.4)  # 10 batches x 16 images / 1.4 s
    assert rates["img_s_median"] == pytest.approx(320.0) and rates["img_s_max"] == pytest.approx(320.0)
    assert rates["img_s_min"] == pytest.approx(32.0)
    assert rates["img_s"] < rates["img_s_median"] / 2  # the headline pays the stall, the median hides it


@pytest.mark.parametrize("ratio,wait,expected", [
    (0.99, 0.5, "invisible"), (INVISIBLE_RATIO, 0.9, "invisible"),
    (INVISIBLE_RATIO - 1e-9, 0.0, "compute-bound"),
    (0.96, 0.021, "loader-bound"),  # 2.1 % wait explains half a 4 % gap
    (0.5, 0.25, "loader-bound"), (0.5, 0.2499, "compute-bound"), (0.5, 0.05, "compute-bound"),
    (0.1, 0.9, "loader-bound"),
])
def test_verdict_rule(ratio, wait, expected):
    assert verdict(ratio, wait) == expected
    assert WAIT_SHARE_OF_GAP == 0.5  # the parametrized cases above assume half the shortfall


# ---------------------------------------------------------------------------- suites


@pytest.mark.parametrize("variant,image_size", [("gpu", 32), ("gpu", 64), ("torch", 64), ("ffcv", 32), ("dali", 32),
                                                ("dali-native", 32)])
def test_loader_only_rows(settings, variant, image_size):
    threads = torch.get_num_threads()
    row = loader_only(settings, variant, image_size, data_info(settings))
    assert row["torch_threads"] == threads == torch.get_num_threads()  # no backend throttles the process's threads
    _check_row(row, "loader", image_size)
    assert row["loader"] == variant
    assert row["out_dtype"] == "float32"  # amp none: the model gets float32
    assert row["native_augment"] == variant.endswith("-native")
    assert row["per_image_ops_on_device"] == (variant != "torch")  # torch augments and resizes in its workers
    assert 0 <= row["first_batch_s"] <= row["warmup_s"]


def test_model_ceiling_and_end_to_end_are_consistent(settings):
    info = data_info(settings)
    ceiling = model_only(settings, 32, info)
    _check_row(ceiling, "model", 32)
    assert ceiling["model"] == "resnet10t" and ceiling["loader"] is None and ceiling["amp"] == "none"
    for variant in ("gpu", "torch"):
        row = end_to_end(settings, variant, 32, info, ceiling["img_s"])
        _check_row(row, "e2e", 32)
        assert row["ceiling_img_s"] == ceiling["img_s"]
        assert row["ratio"] == pytest.approx(row["img_s"] / ceiling["img_s"])
        assert 0 <= row["data_wait_share"] <= 1
        assert row["device_wait_share"] is None  # CPU: the host-side measure stays, no device events
        assert row["verdict"] == verdict(row["ratio"], row["data_wait_share"])


# ---------------------------------------------------------------------------- planning and reporting


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cpu_default_plan_runs_model_and_e2e_at_the_smallest_size_only():
    cells, skipped, _ = _plan(_args(), torch.device("cpu"), ["gpu", "torch"], ["loader", "model", "e2e"])
    by_view = {v: sorted({c[2] for c in cells if c[0] == v}) for v in ("loader", "model", "e2e")}
    assert by_view == {"loader": [32, 64, 128, 224], "model": [32], "e2e": [32]}
    assert sorted(s["image_size"] for s in skipped) == [64, 128, 224]
    assert all("--image-sizes" in s["reason"] for s in skipped)
    # a size sweep (or explicit sizes) measures every view at every size
    cells, skipped, _ = _plan(_args("--sweep", "size", "--image-sizes", "32,64"), torch.device("cpu"), ["gpu"], ["e2e"])
    assert sorted((c[0], c[2]) for c in cells) == [("e2e", 32), ("e2e", 64), ("model", 32), ("model", 64)]
    assert not skipped
    # a batch sweep repeats the cells per batch size
    cells, _, _ = _plan(_args("--sweep", "batch", "--sweep-values", "8,16"), torch.device("cpu"), ["gpu"], ["loader"])
    assert [c[3] for c in cells] == [{"batch_size": 8}, {"batch_size": 16}]


def _fake_result() -> dict:
    def row(view, loader, size, img_s, **extra):
        base = {"view": view, "loader": loader, "image_size": size, "batch_size": 256, "workers": 2, "device": "cpu",
                "iters": 10, "img_s": img_s, "img_s_min": img_s * 0.9, "img_s_max": img_s * 1.1, "img_s_median": img_s,
                "epoch_boundaries": None if view == "model" else 1,
                "step_ms": 256_000 / img_s, "step_ms_min": 1.0, "step_ms_max": 2.0, "cpu_pct_one_core": 150.0,
                "cpu_pct_all_cores": 75.0, "build_s": 0.1, "warmup_s": 0.5,
                "per_image_ops_on_device": loader != "torch"}
        return {**base, **extra}
    model = {"model": "resnet18", "cifar_stem": False, "amp": "none", "compile": False, "first_step_s": 0.3}
    rows = [row("model", None, 32, 400.0, **model), row("loader", "gpu", 32, 20000.0, first_batch_s=0.1),
            row("loader", "torch", 32, 1000.0, first_batch_s=0.2), row("loader", "gpu", 64, 8000.0, first_batch_s=0.1),
            row("e2e", "gpu", 32, 380.0, ceiling_img_s=400.0, ratio=0.95, data_wait_share=0.02,
                verdict="compute-bound", **model)]
    report.annotate_speedups(rows)
    settings = {"batch_size": 256, "workers": 2, "model": "resnet18", "cifar_stem": False, "amp": "none",
                "compile": False, "iters": 10, "warmup": 3}
    return {"schema": "fastcifar-bench/1", "provenance": collect(torch.device("cpu"), settings),
            "machine_load": {"load_avg_start": [0.1, 0.1, 0.1], "load_avg_end": [1.0, 1.0, 1.0],
                             "others_cpu_share": 0.0, "busy": False, "wall_s": 1.0},
            "data": {"dataset": "cifar100", "synthetic": True, "train_images": 512,
                     "root": "(temporary synthetic root)"},
            "policy": {"crop_padding": 4, "hflip": 0.5}, "sweep": "none", "rows": rows,
            "skipped": [{"view": "model+e2e", "loader": None, "image_size": 64,
                         "reason": "skipped on a CPU by default"}],
            "failed": [], "notes": []}


def test_speedups_and_report_files(tmp_path):
    result = _fake_result()
    gpu32 = next(r for r in result["rows"] if r["loader"] == "gpu" and r["image_size"] == 32 and r["view"] == "loader")
    assert gpu32["vs_torch"] == pytest.approx(20.0)
    assert "vs_torch" not in next(r for r in result["rows"] if r["image_size"] == 64)  # no torch row at 64 px

    data = json.loads(report.write_json(result, tmp_path / "r.json").read_text())
    prov = data["provenance"]
    for key in ("versions", "device_name", "cpu_model", "cpu_count", "git", "hostname", "date", "settings"):
        assert key in prov, key
    assert prov["versions"]["torch"] == torch.__version__ and {"ffcv", "dali", "fastcifar"} <= set(prov["versions"])
    assert data["rows"] == result["rows"]

    md = report.write_markdown(result, tmp_path / "r.md").read_text()
    assert "SYNTHETIC" in md and "| loader |" in md and "| gpu | 32 | 20,000 |" in md and "20.0x" in md
    assert "compute-bound" in md and "skipped on a CPU by default" in md

    png = report.write_png(result, tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]  # no temp files left behind


def test_load_watch_reports_load_and_other_processes():
    watch = LoadWatch()
    watch.start()
    time.sleep(0.2)
    load = watch.stop()
    assert len(load["load_avg_start"]) == 3 and len(load["load_avg_end"]) == 3
    assert load["others_cpu_share"] is None or 0 <= load["others_cpu_share"] <= 1
    assert isinstance(load["busy"], bool)


# ---------------------------------------------------------------------------- CLI


def test_cli_end_to_end_on_prepared_root(root, tmp_path):
    out = tmp_path / "out"
    code = main(["bench", "--root", str(root), "--dataset", "cifar100", "--loaders", "gpu", "--image-sizes", "32",
                 "--batch-size", str(BATCH), "--iters", str(ITERS), "--warmup", "1",
                 "--min-seconds", "0", "--model", "resnet10t",
                 "--workers", "1", "--out", str(out), "--tag", "test"])
    assert code == 0
    files = sorted(out.iterdir())
    assert [p.suffix for p in files] == [".json", ".md", ".png"] and all(p.name.startswith("cpu-test-") for p in files)
    data = json.loads(files[0].read_text())
    views = sorted((r["view"], r["loader"] or "-") for r in data["rows"])
    assert views == [("e2e", "gpu"), ("loader", "gpu"), ("model", "-")]
    assert data["data"]["synthetic"] is True and data["provenance"]["settings"]["batch_size"] == BATCH
    assert not data["failed"]
    e2e = next(r for r in data["rows"] if r["view"] == "e2e")
    assert e2e["ratio"] == pytest.approx(e2e["img_s"] / next(r for r in data["rows"] if r["view"] == "model")["img_s"])
    assert "End to end" in files[1].read_text() and e2e["verdict"] in files[1].read_text()
    assert files[2].read_bytes()[:4] == b"\x89PNG"


def test_cli_makes_its_own_synthetic_data_and_rejects_bad_input(tmp_path):
    path = tmp_path / "b.json"
    code = main(["bench", "--views", "loader", "--loaders", "gpu", "--image-sizes", "32", "--batch-size", str(BATCH),
                 "--iters", "2", "--warmup", "1",
                 "--min-seconds", "0", "--synthetic-images", "64", "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    assert data["data"]["synthetic"] is True and data["data"]["train_images"] == 64
    assert [r["loader"] for r in data["rows"]] == ["gpu"]
    assert any("rough" in n for n in data["notes"])  # fewer than 10 iterations is flagged
    assert main(["bench", "--loaders", "gpuu"]) == 2  # FastcifarError: did you mean 'gpu'?
    assert main(["bench", "--device", "cuda"] if not torch.cuda.is_available() else ["bench", "--views", "x"]) == 2
