"""A budget-aware plan for a lent GPU machine: `check` (<= 5 min) and `bench` (<= 8 min), or their CPU dry-run.

    python -m fastcifar.bench.session check --out DIR [--dry-run] [--budget S]
    python -m fastcifar.bench.session bench --out DIR [--dry-run] [--budget S]

A plan is a list of steps, each a subprocess with its own time budget. The runner starts a step only when the
time left covers the step's minimum, gives it at most min(its budget, time left), kills its process group at
that limit, and records every step (ok, failed, timeout, skipped with the reason, or not run for lack of time)
in one JSON with provenance, rewritten after each step so a machine taken back mid-plan still leaves a result.
It prints the elapsed time after each step and at the end.

`check`: synthetic data; the CUDA tests; the host-sync tests (`torch.cuda.set_sync_debug_mode("error")` around
the headline configs' train steps, tests/test_host_sync.py); the recompile log of a 2-epoch compiled run
(TORCH_LOGS=recompiles); the DALI epoch-boundary time; one 224 px end-to-end cell per loader over two whole
epochs with compile and bf16. -> DIR/check.json
`bench`: the README's GPU table: loader-only at 32-224 px, the model-only ceiling and end-to-end at 32 and
224 px, one real run. -> DIR/gpu-<tag>-<date>.{json,md,png} plus DIR/bench-session.json.
`--dry-run` runs the same plan on the CPU at tiny sizes (resnet10t, 32 images, 32 px instead of 224,
no compile; DRY_RUN_SLACK times the budgets), so the plan itself is tested where there is no GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BUDGETS_S = {"check": 300, "bench": 480}  # the most each plan may take, s (what a lent machine is held for)
RESERVE_S = 10  # kept back for writing the result after the last step, s
DRY_RUN_SLACK = 3  # a dry-run's step and plan budgets x this: a shared 2-core CPU is far slower than the GPU
LOG_TAIL = 3000  # characters of each step's output kept in the JSON
ROOT = Path(__file__).resolve().parent.parent  # the repository (bench/ sits at its top level)


@dataclass
class Step:
    """One subprocess of a plan.

    name: key in the result; argv: the command; budget_s: the most it may run; min_s: not started when less time
    is left; env: extra environment; skip: a reason not to run it (recorded); parse(step, log) -> dict of what it
    found (a bench JSON, a recompile count), called whatever the exit status.
    """

    name: str
    argv: list[str]
    budget_s: float
    min_s: float = 5.0
    env: dict = field(default_factory=dict)
    skip: str | None = None
    parse: Callable[["Step", str], dict] | None = None
    json_out: str | None = None  # a bench JSON the step writes (read by parse)


@dataclass
class Scale:
    """Sizes of one plan: the real thing on a GPU, or tiny on the CPU for --dry-run."""

    dry_run: bool
    train_images: int
    test_images: int
    big: int  # the side of the "224 px" cells (32 in a dry-run)
    sizes: tuple[int, ...]  # loader-only sizes
    bench_args: tuple[str, ...]  # common `fastcifar bench` options
    train_args: tuple[str, ...]  # common `fastcifar train` options


def scale(plan: str, dry_run: bool) -> Scale:
    if dry_run:
        tiny = ("--device", "cpu", "--batch-size", "8", "--model", "resnet10t", "--iters", "2", "--warmup", "1",
                "--min-seconds", "0", "--workers", "1", "--no-compile", "--amp", "none")
        train = ("--device", "cpu", "--no-compile", "--set", "data.batch_size=32", "--set", "augment.image_size=32",
                 "--set", "train.amp=none", "--set", "model.name=resnet10t", "--set", "data.workers=1")
        return Scale(True, 32, 64, 32, (32,), tiny, train)
    if plan == "check":  # small epochs: two whole epochs per loader must fit the 5 minutes
        return Scale(False, 5000, 1000, 224, (224,), ("--iters", "10", "--compile", "--amp", "bf16"), ())
    return Scale(False, 50000, 2000, 224, (32, 64, 128, 224), ("--iters", "20", "--compile", "--amp", "bf16"), ())


# ---------------------------------------------------------------------------- parsers


def _bench_rows(step: Step, log: str) -> dict:
    """The rows of the bench JSON a step wrote (partial when the step was stopped), reduced to the headline
    fields, plus its skipped and failed cells."""
    if not step.json_out or not Path(step.json_out).exists():
        return {"rows": [], "note": "no bench JSON was written"}
    data = json.loads(Path(step.json_out).read_text())
    keep = ("view", "loader", "image_size", "img_s", "img_s_median", "img_s_min", "img_s_max", "epoch_boundaries",
            "batches", "batches_per_epoch", "boundary_fetch_s", "boundary_fetches_s", "ratio", "data_wait_share",
            "device_wait_share",
            "verdict", "warmup_s", "first_step_s", "first_batch_s", "eval_s", "ckpt_s", "wall_s")
    return {"rows": [{k: r[k] for k in keep if k in r} for r in data["rows"]], "skipped": data.get("skipped", []),
            "failed": data.get("failed", []), "partial": data.get("partial")}


RECOMPILE = re.compile(r"Recompiling function (\S+)")


def _recompiles(step: Step, log: str) -> dict:
    """Recompilations TORCH_LOGS=recompiles reported, with the function and the first guard failures."""
    hits = RECOMPILE.findall(log)
    reasons = [line.strip() for line in log.splitlines()
               if "__recompiles" in line and "Recompiling function" not in line][:10]
    epochs = len(re.findall(r"epoch\s+\d+/\d+", log))
    return {"recompiles": len(hits), "functions": sorted(set(hits)), "reasons": reasons, "epoch_lines": epochs}


def _pytest(step: Step, log: str) -> dict:
    """The pytest summary line's counts (passed, failed, skipped, ...)."""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", log)}
    return {"counts": counts}


# ---------------------------------------------------------------------------- plans


def _python() -> str:
    return sys.executable


def _cli(*args: str) -> list[str]:
    return [_python(), "-m", "fastcifar", *args]


def _bench(work: Path, name: str, s: Scale, *args: str, budget: float, min_s: float) -> Step:
    out = str(work / f"{name}.json")
    argv = _cli("bench", "--root", str(work / "data"), "--dataset", "cifar100", *s.bench_args, *args, "--json", out)
    return Step(name, argv, budget, min_s, parse=_bench_rows, json_out=out)


def prepare_data(root: str, train: int, test: int) -> None:
    """Synthetic CIFAR-100 under `root`, prepared in every format whose backend imports here (a loader whose
    backend is missing is then skipped by the bench with its reason)."""
    from fastcifar.bench.cli import _backend_missing
    from fastcifar.data.prepare import prepare
    from fastcifar.data.synth import write_synthetic

    formats = ["npy"] + [fmt for fmt in ("ffcv", "dali") if _backend_missing(fmt) is None]
    write_synthetic("cifar100", root, train=train, test=test, seed=0, progress=False)
    prepare("cifar100", root, formats=tuple(formats), dali_encoding="raw", progress=False)
    print(f"prepared {', '.join(formats)} for {train} train / {test} test images under {root}")


def _data_step(work: Path, s: Scale, budget: float) -> Step:
    script = (f"from fastcifar.bench.session import prepare_data; "
              f"prepare_data({str(work / 'data')!r}, {s.train_images}, {s.test_images})")
    return Step("data", [_python(), "-c", script], budget, min_s=5)


def build_plan(plan: str, work: Path, dry_run: bool = False) -> list[Step]:
    """The steps of `plan` ('check' or 'bench'); the dry-run plan has the same steps at tiny sizes on the CPU
    (with DRY_RUN_SLACK times their budgets)."""
    steps = _steps(plan, work, scale(plan, dry_run))
    if dry_run:
        for step in steps:
            step.budget_s, step.min_s = step.budget_s * DRY_RUN_SLACK, step.min_s * DRY_RUN_SLACK
    return steps


def plan_budget(plan: str, dry_run: bool = False) -> float:
    """Seconds the whole plan may take."""
    return BUDGETS_S[plan] * (DRY_RUN_SLACK if dry_run else 1)


def _steps(plan: str, work: Path, s: Scale) -> list[Step]:
    big = str(s.big)
    if plan == "check":
        host_sync = ROOT / "tests" / "test_host_sync.py"
        pytest = [_python(), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        train = _cli("train", "resnet18_arcface_224", "--root", str(work / "data"), "--epochs", "2",
                     "--set", "model.pretrained=false", "--set", f"train.out_dir={work / 'runs'}",
                     "--set", "data.val_split=0", *s.train_args)
        return [
            _data_step(work, s, budget=30),
            Step("cuda_tests", [*pytest, "-k", "cuda or gpu", f"--ignore={host_sync}", str(ROOT / "tests")], 60,
                 min_s=20, parse=_pytest),
            Step("host_sync", [*pytest, "-m", "gpu", str(host_sync)], 40, min_s=15, parse=_pytest,
                 skip=None if host_sync.exists() else "tests/test_host_sync.py is not in this tree"),
            Step("recompiles", train, 60, min_s=30, env={"TORCH_LOGS": "recompiles"}, parse=_recompiles),
            _bench(work, "dali_boundary", s, "--views", "loader", "--loaders", "dali",
                   "--image-sizes", ",".join(dict.fromkeys(("32", big))),
                   "--timed-epochs", "2", budget=25, min_s=10),
            _bench(work, "e2e_224", s, "--views", "e2e", "--loaders", "gpu,dali,ffcv,torch", "--image-sizes", big,
                   "--timed-epochs", "2", budget=80, min_s=30),
        ]
    if plan == "bench":
        sizes = ",".join(map(str, s.sizes))
        return [
            _data_step(work, s, budget=60),
            _bench(work, "loader", s, "--views", "loader", "--loaders", "gpu,torch,ffcv,dali", "--image-sizes", sizes,
                   budget=120, min_s=30),
            _bench(work, "e2e_32", s, "--views", "e2e", "--loaders", "gpu,dali,ffcv,torch", "--image-sizes", "32",
                   budget=100, min_s=30),
            _bench(work, "e2e_224", s, "--views", "e2e", "--loaders", "gpu,dali,ffcv,torch", "--image-sizes", big,
                   budget=130, min_s=40),
            _bench(work, "run", s, "--views", "run", "--loaders", "gpu", "--image-sizes", big, "--run-epochs", "2",
                   budget=60, min_s=40),
        ]
    raise ValueError(f"unknown plan {plan!r}")


# ---------------------------------------------------------------------------- runner


def _run_one(step: Step, timeout: float, log_path: Path) -> tuple[str, int | None]:
    """Run `step` with its output to `log_path`; kill its whole process group at `timeout`. -> (status, rc)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)  # its own group: workers and compile threads die with it
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", None
    return ("ok" if rc == 0 else "failed"), rc


def run_plan(steps: list[Step], budget_s: float, out_path: Path, header: dict, log_dir: Path,
             clock: Callable[[], float] = time.monotonic, reserve_s: float = RESERVE_S) -> dict:
    """Run `steps` in order within `budget_s`; write the result JSON to `out_path` after each step; return it."""
    start = clock()
    result = {**header, "budget_s": budget_s, "steps": []}
    for step in steps:
        left = budget_s - (clock() - start) - reserve_s
        record = {"name": step.name, "command": " ".join(step.argv), "budget_s": step.budget_s}
        if step.skip:
            record.update(status="skipped", reason=step.skip)
        elif left < step.min_s:
            record.update(status="not-run",
                          reason=f"time budget: {left:.0f} s left, the step needs at least {step.min_s:.0f} s")
        else:
            timeout = min(step.budget_s, left)
            t0 = clock()
            log_path = log_dir / f"{step.name}.log"
            status, rc = _run_one(step, timeout, log_path)
            log = log_path.read_text(errors="replace")
            record.update(status=status, rc=rc, elapsed_s=round(clock() - t0, 1), timeout_s=round(timeout, 1),
                          log_tail=log[-LOG_TAIL:])
            if step.parse is not None:
                try:
                    record["found"] = step.parse(step, log)
                except Exception as error:  # noqa: BLE001 - a parse error is recorded, never lost in a traceback
                    record["found"] = {"parse_error": f"{type(error).__name__}: {error}"}
            counts = (record.get("found") or {}).get("counts")
            if status == "ok" and counts is not None and not counts.get("passed"):
                # exit 0 with every test skipped (no CUDA visible, say) proves nothing: never report it as ok
                record.update(status="no-tests", reason="pytest passed no test (all skipped or deselected)")
        result["steps"].append(record)
        result["elapsed_s"] = round(clock() - start, 1)
        _write(out_path, result)
        print(f"[{result['elapsed_s']:6.1f} s / {budget_s:.0f} s] {step.name}: {record['status']}"
              + (f" ({record['elapsed_s']} s)" if "elapsed_s" in record else f": {record.get('reason', '')}"),
              flush=True)
    result["elapsed_s"] = round(clock() - start, 1)
    result["within_budget"] = result["elapsed_s"] <= budget_s
    _write(out_path, result)
    print(f"plan done in {result['elapsed_s']:.1f} s (budget {budget_s:.0f} s) -> {out_path}", flush=True)
    return result


def _write(path: Path, data: dict) -> None:
    from fastcifar.atomic import write_text

    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------- bench tables


def merge_bench(paths: list[Path]) -> dict | None:
    """One bench result from the JSONs of several bench steps: rows, skipped, failed and notes together, the
    provenance of the first, the image sizes of all; speed-ups recomputed over the merged loader rows."""
    from fastcifar.bench import report

    parts = [json.loads(p.read_text()) for p in paths if p.exists()]
    if not parts:
        return None
    merged = {**parts[0], "rows": [], "skipped": [], "failed": [], "notes": []}
    for part in parts:
        for key in ("rows", "skipped", "failed", "notes"):
            merged[key] += part.get(key, [])
    merged["notes"] = list(dict.fromkeys(merged["notes"]))
    sizes = sorted({r["image_size"] for r in merged["rows"]})
    merged["provenance"] = {**merged["provenance"],
                            "settings": {**merged["provenance"]["settings"], "image_sizes": sizes,
                                         "views": sorted({r["view"] for r in merged["rows"]})}}
    partial = [p.get("partial") for p in parts if p.get("partial")]
    if partial:
        merged["partial"] = "; ".join(partial)
        merged["notes"].append(f"some steps stopped at their time budget ({merged['partial']}).")
    else:
        merged.pop("partial", None)
    report.annotate_speedups(merged["rows"])
    return merged


# ---------------------------------------------------------------------------- main


def _header(plan: str, dry_run: bool) -> dict:
    import torch

    from fastcifar.bench.provenance import collect

    device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
    return {"schema": f"fastcifar-session/{plan}/1", "plan": plan, "dry_run": dry_run,
            "provenance": collect(device, {"plan": plan, "dry_run": dry_run})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastcifar.bench.session", description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", choices=sorted(BUDGETS_S))
    parser.add_argument("--out", required=True, help="folder for the result JSON (and the bench tables)")
    parser.add_argument("--dry-run", action="store_true", help="the same plan on the CPU at tiny sizes")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds (default: check 300, bench 480; x{DRY_RUN_SLACK} with --dry-run)")
    parser.add_argument("--spent", type=float, default=0.0,
                        help="seconds already spent on this plan's budget before it started (install, bundle)")
    parser.add_argument("--tag", default=None, help="name part of the bench table files (default: the GPU's name)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = (args.budget or plan_budget(args.plan, args.dry_run)) - args.spent
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fastcifar-{args.plan}-") as tmp:
        work = Path(tmp)
        steps = build_plan(args.plan, work, args.dry_run)
        name = "check.json" if args.plan == "check" else "bench-session.json"
        header = _header(args.plan, args.dry_run)  # imports torch: time the plan's budget pays too
        result = run_plan(steps, budget - (time.monotonic() - started), out / name, header, work)
        if args.plan == "bench":
            merged = merge_bench([Path(s.json_out) for s in steps if s.json_out])
            if merged is not None:
                _bench_tables(merged, out, args, result)
    print(f"total {time.monotonic() - started:.1f} s", flush=True)
    bad = [s["name"] for s in result["steps"] if s["status"] in ("failed", "timeout")]
    return 1 if bad else 0


def _bench_tables(merged: dict, out: Path, args: argparse.Namespace, result: dict) -> None:
    from fastcifar.bench import report

    prov = merged["provenance"]
    kind = "cpu" if prov["device"] == "cpu" else "gpu"
    tag = args.tag or re.sub(r"[^A-Za-z0-9._-]+", "-", prov.get("device_name") or socket.gethostname()).strip("-")
    stem = out / f"{kind}-{tag}-{dt.date.today().isoformat()}"
    merged["session"] = {"plan": "bench", "dry_run": args.dry_run, "elapsed_s": result["elapsed_s"],
                         "steps": {s["name"]: s["status"] for s in result["steps"]}}
    report.write_json(merged, f"{stem}.json")
    report.write_markdown(merged, f"{stem}.md")
    if merged["rows"]:
        report.write_png(merged, f"{stem}.png")
    print(f"wrote {stem}.{{json,md,png}}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
