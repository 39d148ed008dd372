"""The GPU session plan (bench/session.py): the budget stop, the parsers, the merge of bench steps, and the
`check` plan's CPU dry-run, run for real at tiny sizes. Nothing here is about speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fastcifar.bench import session
from fastcifar.bench.session import Step, build_plan, merge_bench, run_plan

PY = sys.executable


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_dry_run_plans_are_the_gpu_plans_at_tiny_sizes(tmp_path):
    for plan in ("check", "bench"):
        full, dry = build_plan(plan, tmp_path), build_plan(plan, tmp_path, dry_run=True)
        assert [s.name for s in full] == [s.name for s in dry]  # the same plan
        assert sum(s.budget_s for s in full) <= session.BUDGETS_S[plan]  # each step's cap fits the plan's budget
        for gpu, cpu in zip(full, dry):
            if "bench" in gpu.argv:
                sizes = gpu.argv[gpu.argv.index("--image-sizes") + 1], cpu.argv[cpu.argv.index("--image-sizes") + 1]
                assert "--compile" in gpu.argv and "bf16" in gpu.argv and (gpu.name != "e2e_224" or sizes[0] == "224")
                assert "--no-compile" in cpu.argv and "cpu" in cpu.argv and "224" not in sizes[1]
    check = {s.name: s for s in build_plan("check", tmp_path)}
    assert list(check) == ["data", "cuda_tests", "host_sync", "recompiles", "dali_boundary", "e2e_224"]
    assert check["recompiles"].env == {"TORCH_LOGS": "recompiles"} and "--epochs" in check["recompiles"].argv
    e2e = check["e2e_224"].argv
    assert e2e[e2e.index("--timed-epochs") + 1] == "2" and e2e[e2e.index("--loaders") + 1] == "gpu,dali,ffcv,torch"


def test_runner_stops_each_step_and_the_plan_at_its_budget(tmp_path):
    steps = [
        Step("quick", _py("print('hello')"), budget_s=20, min_s=0.1),
        Step("hangs", _py("import time; time.sleep(60)"), budget_s=1.0, min_s=0.1),  # killed at its own budget
        Step("fails", _py("raise SystemExit(3)"), budget_s=20, min_s=0.1),
        Step("absent", _py("print(1)"), budget_s=5, skip="not in this tree"),
        Step("too_big", _py("print(1)"), budget_s=500, min_s=400),  # less time is left than it needs
    ]
    out = tmp_path / "plan.json"
    result = run_plan(steps, budget_s=60, out_path=out, header={"plan": "t"}, log_dir=tmp_path, reserve_s=0)
    status = {s["name"]: s["status"] for s in result["steps"]}
    assert status == {"quick": "ok", "hangs": "timeout", "fails": "failed", "absent": "skipped", "too_big": "not-run"}
    by_name = {s["name"]: s for s in result["steps"]}
    assert "hello" in by_name["quick"]["log_tail"] and by_name["fails"]["rc"] == 3
    assert 0.9 <= by_name["hangs"]["elapsed_s"] < 10 and "time budget" in by_name["too_big"]["reason"]
    assert result["within_budget"] and json.loads(out.read_text()) == result


def test_the_plan_budget_caps_a_step_and_skips_the_rest(tmp_path):
    ticks = iter([0.0, 0.0, 0.0, 0.0, 8.0, 8.0, 8.0, 8.0, 8.0])  # the fake clock jumps 8 s during the first step
    steps = [Step("a", _py("pass"), budget_s=100, min_s=1), Step("b", _py("pass"), budget_s=100, min_s=5)]
    result = run_plan(steps, budget_s=10, out_path=tmp_path / "p.json", header={}, log_dir=tmp_path,
                      clock=lambda: next(ticks), reserve_s=0)
    first, second = result["steps"]
    assert first["status"] == "ok" and first["timeout_s"] == 10  # min(step budget, plan time left)
    assert second["status"] == "not-run" and "2 s left" in second["reason"]


def test_a_pytest_step_that_passed_no_test_is_not_ok(tmp_path):
    def pytest_like(name: str, summary: str) -> Step:
        return Step(name, [sys.executable, "-c", f"print({summary!r})"], 30, min_s=0, parse=session._pytest)

    steps = [pytest_like("all_skipped", "8 skipped in 0.1s"), pytest_like("ran", "2 passed, 1 skipped in 0.1s")]
    result = run_plan(steps, budget_s=60, out_path=tmp_path / "p.json", header={}, log_dir=tmp_path, reserve_s=0)
    assert {s["name"]: s["status"] for s in result["steps"]} == {"all_skipped": "no-tests", "ran": "ok"}


def test_parsers_read_recompiles_and_pytest_counts():
    log = ("V1202 torch/_dynamo/guards.py:1 [0/1] [__recompiles] Recompiling function forward in /m.py:10\n"
           "V1202 [__recompiles]     triggered by the following guard failure(s):\n"
           "V1202 [__recompiles]     - 0/0: tensor 'x' size mismatch at index 0. expected 32, actual 16\n"
           "epoch   1/2  train ...\nepoch   2/2  train ...\n")
    found = session._recompiles(Step("r", [], 1), log)
    assert found["recompiles"] == 1 and found["functions"] == ["forward"] and found["epoch_lines"] == 2
    assert any("size mismatch" in r for r in found["reasons"])
    assert session._pytest(Step("p", [], 1), "3 passed, 2 skipped, 10 deselected in 4.0s")["counts"] == {
        "passed": 3, "skipped": 2, "deselected": 10}


def test_merge_bench_joins_steps_and_recomputes_speedups(tmp_path):
    def part(rows, partial=None):
        return {"schema": "fastcifar-bench/1", "provenance": {"device": "cpu", "settings": {"image_sizes": [32]}},
                "rows": rows, "skipped": [], "failed": [], "notes": ["n"], **({"partial": partial} if partial else {})}

    def row(view, loader, img_s):
        return {"view": view, "loader": loader, "image_size": 32, "batch_size": 16, "workers": 1, "img_s": img_s}

    (tmp_path / "a.json").write_text(json.dumps(part([row("loader", "gpu", 100.0), row("loader", "torch", 10.0)])))
    (tmp_path / "b.json").write_text(json.dumps(part([row("model", None, 5.0)], partial="1 of 5 cells")))
    merged = merge_bench([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "missing.json"])
    assert [r["view"] for r in merged["rows"]] == ["loader", "loader", "model"] and merged["notes"][0] == "n"
    assert merged["rows"][0]["vs_torch"] == pytest.approx(10.0) and merged["partial"] == "1 of 5 cells"
    assert merge_bench([tmp_path / "missing.json"]) is None


@pytest.mark.slow  # ~1.5 min on an idle 2-core CPU: six subprocesses, each importing torch (ffcv's JIT in two)
def test_check_dry_run_runs_the_plan_on_the_cpu(tmp_path):
    """The `check` plan, dry-run: every step really runs at tiny sizes; only the nested pytest is narrowed to one
    file (a whole suite inside the suite would double its time)."""
    steps = build_plan("check", tmp_path, dry_run=True)
    tests = Path(session.ROOT) / "tests"
    for step in steps:
        if step.name == "cuda_tests":
            step.argv = [*step.argv[:-1], str(tests / "test_device_wait.py")]
    result = run_plan(steps, budget_s=session.plan_budget("check", dry_run=True), out_path=tmp_path / "check.json",
                      header=session._header("check", True), log_dir=tmp_path)
    status = {s["name"]: s["status"] for s in result["steps"]}
    assert all(status[name] == "ok" for name in ("data", "recompiles", "dali_boundary", "e2e_224")), status
    # CUDA-only tests all skip on a CPU: such a step ran, but proved nothing, and is never reported ok
    assert status["cuda_tests"] == status["host_sync"] == "no-tests", status
    found = {s["name"]: s.get("found") for s in result["steps"]}
    assert found["recompiles"]["recompiles"] == 0 and found["recompiles"]["epoch_lines"] == 2
    dali = found["dali_boundary"]["rows"]
    assert dali and all(r["loader"] == "dali" and r["epoch_boundaries"] >= 2 for r in dali)
    e2e = [r for r in found["e2e_224"]["rows"] if r["view"] == "e2e"]
    assert sorted(r["loader"] for r in e2e) == ["dali", "ffcv", "gpu", "torch"]
    assert all(r["batches"] >= 2 * r["batches_per_epoch"] for r in e2e)  # two whole epochs per loader
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["provenance"]["versions"]["torch"] and saved["dry_run"] is True


# ---------------------------------------------------------------------------- repeats (bench/aggregate.py)


def test_repeats_aggregate_to_the_median_with_their_range_and_the_machine_noise():
    from fastcifar.bench.aggregate import aggregate, to_markdown
    from fastcifar.bench.provenance import collect

    def result(gpu: float, torch_: float, others: float) -> dict:
        def row(loader, img_s):
            return {"view": "loader", "loader": loader, "image_size": 32, "batch_size": 256, "workers": 2,
                    "img_s": img_s, "img_s_median": img_s * 1.2, "epoch_boundaries": 1, "cpu_pct_all_cores": 90.0}
        return {"provenance": collect(__import__("torch").device("cpu"), {}),
                "rows": [row("gpu", gpu), row("torch", torch_)],
                "data": {"dataset": "cifar100", "train_images": 10000, "synthetic": True},
                "machine_load": {"started": "t", "load_avg_start": [0.5, 0, 0], "load_avg_end": [2.0, 0, 0],
                                 "others_cpu_share": others, "busy": others > 0.1, "wall_s": 60.0}}

    agg = aggregate([result(60000, 4000, 0.02), result(75000, 14000, 0.30), result(70000, 5000, 0.05)])
    gpu = next(r for r in agg["rows"] if r["loader"] == "gpu")
    assert gpu["img_s"] == {"median": 70000, "min": 60000, "max": 75000, "n": 3}
    assert gpu["img_s_median"]["median"] == pytest.approx(84000)
    assert gpu["overall_vs_median"]["median"] == pytest.approx(1 / 1.2)  # each repeat's overall over its median
    assert gpu["vs_torch"]["median"] == pytest.approx(14.0)  # per repeat 15.0, 5.36, 14.0 -> median 14.0
    assert gpu["vs_torch"]["min"] == pytest.approx(75000 / 14000) and gpu["noisy"]  # range 15k > 20 % of 70k
    assert [n["busy"] for n in agg["noise"]] == [False, True, False]
    md = to_markdown(agg)
    assert "70,000 (60,000–75,000)" in md and "14.0x (5.4–15.0)" in md and "BUSY" in md and "30 %" in md
    assert "0.83 (0.83–0.83)" in md
