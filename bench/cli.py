"""`fastcifar bench`: how fast each loader feeds each model at each image size on this machine, and where the time goes.

`add_arguments(parser)` declares the options on the `bench` sub-command; `run_bench(args)` resolves the defaults
for the device, makes (or checks) the prepared data, plans the cells, measures them with `fastcifar.bench.suites`
and prints / writes the report with `fastcifar.bench.report`.

Defaults finish in a few minutes on a 2-core CPU: loader-only at 32, 64, 128, 224 px; the model-only ceiling and
end-to-end rows only at the smallest size on a CPU (a ResNet train step at 224 px takes seconds per batch there).

What a cell trains and how it augments comes from one config mapping: without --config, the bench's defaults
(resnet18, batch 256, crop + flip, bf16 + compile on CUDA); with --config, a packaged config's (or a YAML file's)
own policy, image size, model, head, optimizer, AMP and compile settings. `--set key=value` changes either, through
the config schema. Explicit bench flags (--model, --batch-size, --image-sizes, --amp, --compile, --workers) win.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from fastcifar.bench import report
from fastcifar.bench.paired import loader_paired
from fastcifar.bench.provenance import LoadWatch, collect
from fastcifar.bench.run_view import DEFAULT_RUN_EPOCHS, real_run
from fastcifar.bench.suites import (
    BENCH_AUGMENT,
    FORMATS,
    VARIANTS,
    BenchSettings,
    data_info,
    end_to_end,
    loader_only,
    model_only,
    settings_dict,
)
from fastcifar.bench.thresholds import ABOVE_CEILING_NOTE, MIN_ITERS_FOR_MEDIAN
from fastcifar.config import Config, apply_overrides, from_dict, load_config, to_dict
from fastcifar.data.cifar import DATASETS
from fastcifar.engine.amp_modes import AMP_MODES
from fastcifar.engine.distributed import resolve_device
from fastcifar.errors import FastcifarError
from fastcifar.loaders import LOADERS
from fastcifar.loaders.base import usable_cores
from fastcifar.loaders.ffcv_loader import keep_torch_threads

DEFAULT_LOADERS = ",".join(LOADERS)  # every loader, without the -native variants
DEFAULT_SIZES = (32, 64, 128, 224)
VIEWS = ("loader", "model", "e2e", "run")
SWEEP_DEFAULTS = {"batch": (64, 128, 256, 512), "workers": (1, 2, 4, 8)}
SYNTHETIC_TEST_IMAGES = 1000  # the test split is not benchmarked; keep it small
DEFAULT_ITERS = {"cuda": 50, "cpu": MIN_ITERS_FOR_MEDIAN}  # a CPU train step takes seconds: keep the default short
DEFAULT_MIN_SECONDS = 2.0  # each cell times at least this long: a fast loader cell's windows alone can span 0.1 s
console = Console()
if not console.is_terminal:  # piped into a log: rich would wrap the tables at 80 columns
    console.width = max(console.width, 160)


# ---------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the `fastcifar bench` options on `parser`."""
    what = parser.add_argument_group("what to measure")
    what.add_argument("--views", default="loader,model,e2e",
                      help="comma-separated subset of loader (augmented batches, "
                      "no model), model (train step on a synthetic batch: the ceiling), "
                      "e2e (train step fed by the loader), "
                      "run (a short `fastcifar train` with evaluation and checkpoints; not in the default)")
    what.add_argument("--config", default=None,
                      help="a packaged config name or a YAML file: measure its own augmentation "
                      "policy, image size, model, AMP and compile settings (default: the bench's defaults)")
    what.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, checked by the schema (repeatable), "
                      "e.g. --set augment.policy=randaugment")
    what.add_argument("--loaders", default=DEFAULT_LOADERS, help=f"comma-separated subset of {','.join(VARIANTS)}")
    what.add_argument("--image-sizes", default=None, help="comma-separated px (default: the config's image size with "
                      "--config, else 32,64,128,224; on a CPU the model, e2e and run views run only at the smallest "
                      "unless sizes are given or --sweep size)")
    what.add_argument("--batch-size", type=int, default=None, help="images per step (default: the config's, else 256)")
    what.add_argument("--model", default=None, help="any timm model name (default: the config's, else resnet18)")
    what.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=None,
                      help="3x3 stride-1 stem (default: the config's, else off)")
    what.add_argument("--run-epochs", type=int, default=DEFAULT_RUN_EPOCHS,
                      help=f"epochs of the run view's training (default {DEFAULT_RUN_EPOCHS})")
    what.add_argument("--sweep", choices=("none", "size", "batch", "workers"), default="none",
                      help="size: every view at every image size; "
                      "batch / workers: repeat the views over --sweep-values")
    what.add_argument("--sweep-values", default=None, help="comma-separated values for --sweep batch|workers "
                      f"(default batch {','.join(map(str, SWEEP_DEFAULTS['batch']))}, "
                      f"workers {','.join(map(str, SWEEP_DEFAULTS['workers']))})")

    how = parser.add_argument_group("how to run it")
    how.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    how.add_argument("--iters", type=int, default=None,
                     help="timed windows per cell (a window: up to workers x prefetch batches or 0.5 s; "
                     "more until an epoch boundary "
                     "was crossed); the headline is overall img/s over them, the median and min-max beside it "
                     f"(default {DEFAULT_ITERS['cuda']} with CUDA, {DEFAULT_ITERS['cpu']} on a CPU)")
    how.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                     help=f"time each cell at least this long, adding windows (default {DEFAULT_MIN_SECONDS:g}; at "
                     "32 px the iters windows of a fast loader can span a tenth of a second, which one slow spell "
                     "of a shared machine skews; 0 = the windows alone)")
    how.add_argument("--paired", action="store_true",
                     help="loader view: time the loaders of each image size in alternating segments of one run "
                     "instead of one cell after another, so a slow spell of a shared machine slows all of them "
                     "alike and their ratios (vs torch) compare like with like; ffcv, which slows other loaders "
                     "in its process, is still timed on its own")
    how.add_argument("--warmup", type=int, default=3,
                     help="warm-up before measuring: the first batch plus WARMUP-1 windows, timed on their own "
                     "(default 3)")
    how.add_argument("--timed-epochs", type=int, default=0,
                     help="time at least this many whole epochs per loader cell, "
                     "so epoch-boundary stalls weigh what they weigh in training (default 0: the iters windows, "
                     "stretched until at least one epoch boundary was crossed)")
    how.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile the model (default: the config's; without --config on with CUDA, off on a CPU "
                     "where it takes ~1 min)")
    how.add_argument("--amp", choices=tuple(AMP_MODES), default=None,
                     help="autocast dtype (default: the config's; without --config bf16 with CUDA, none on a CPU)")
    how.add_argument("--workers", type=int, default=None,
                     help="DataLoader workers / ffcv, dali threads (default: the config's, else usable cores)")
    how.add_argument("--seed", type=int, default=0)

    data = parser.add_argument_group("data")
    data.add_argument("--root", default=None, help="data root with prepared data (default: a temporary root with a "
                      "SYNTHETIC stand-in; image content does not affect throughput)")
    data.add_argument("--dataset", choices=tuple(DATASETS), default=None,
                      help="default: the config's dataset, else cifar100")
    data.add_argument("--synthetic-images", type=int, default=10000,
                      help="train images in the synthetic stand-in (default 10000; 50000 matches CIFAR's epoch length)")

    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write rows + provenance as JSON")
    out.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    out.add_argument("--png", metavar="PATH",
                     help="write the img/s chart (loader x image size, log scale, ceiling lines)")
    out.add_argument("--out", metavar="DIR", help="write all three as DIR/<device>-<tag>-<date>.{json,md,png}")
    out.add_argument("--tag", default=None, help="name part for --out files (default: the hostname)")


# ---------------------------------------------------------------------------- resolving


def _ints(text: str, what: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FastcifarError(f"{what} must be comma-separated integers, got '{text}'; e.g. 32,64.") from None
    if not values or min(values) < minimum:
        raise FastcifarError(f"{what} must list integers >= {minimum}, got '{text}'.")
    return values


def _names(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for name in names:
        if name not in valid:
            match = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean '{match[0]}'?" if match else f"choose from {','.join(valid)}."
            raise FastcifarError(f"Unknown {what} '{name}'; {hint}")
    if not names:
        raise FastcifarError(f"{what} list is empty; choose from {','.join(valid)}.")
    return list(dict.fromkeys(names))


def _backend_missing(variant: str) -> str | None:
    """Why an optional backend cannot run here, or None when it imports."""
    spec = LOADERS[VARIANTS[variant][0]]
    module, extra = spec.library, spec.extra
    if module is None:
        return None
    try:
        with keep_torch_threads():  # importing ffcv sets torch's intra-op threads to 1 for the whole process
            __import__(module)
    except Exception as error:  # noqa: BLE001 - a broken install is reported as 'cannot run', with its cause
        return (f"{module} does not import ({type(error).__name__}: {error}); "
                f"install it with pip install 'fastcifar[{extra}]'.")
    return None


# ---------------------------------------------------------------------------- data


@contextlib.contextmanager
def bench_root(args: argparse.Namespace, formats: set[str]):
    """Yield the data root: --root as given, or a temporary root with a SYNTHETIC stand-in prepared in `formats`."""
    if args.root:
        from fastcifar.paths import data_root

        yield data_root(args.root)
        return
    from fastcifar.data.prepare import prepare
    from fastcifar.data.synth import write_synthetic

    with tempfile.TemporaryDirectory(prefix="fastcifar-bench-") as tmp:
        start = time.perf_counter()
        with console.status(f"writing a SYNTHETIC {args.dataset} stand-in ({args.synthetic_images} train images) "
                            f"and preparing {', '.join(sorted(formats))} ..."):
            write_synthetic(args.dataset, tmp, train=args.synthetic_images, test=SYNTHETIC_TEST_IMAGES, seed=args.seed,
                            progress=False)
            prepare(args.dataset, tmp, formats=tuple(sorted(formats)), dali_encoding="raw", progress=False)
        console.print(f"[yellow]SYNTHETIC[/] data prepared in {time.perf_counter() - start:.1f} s under {tmp} "
                      "(image content does not affect throughput; not for accuracy claims)", highlight=False)
        yield Path(tmp)


def _prepared_formats(dataset: str, root: Path) -> set[str]:
    from fastcifar.data.prepare import load_manifest

    manifest = load_manifest(dataset, root, require=("npy",))
    return set(manifest.get("formats", {}))


# ---------------------------------------------------------------------------- planning


def _plan(args: argparse.Namespace, device: torch.device, variants: list[str],
          views: list[str]) -> tuple[list, list, list]:
    """Cells to measure as (view, variant, image_size, overrides), plus skipped cells and notes."""
    sizes_given = args.image_sizes is not None
    sizes = _ints(args.image_sizes, "--image-sizes") if sizes_given else list(DEFAULT_SIZES)
    skipped, notes = [], []
    if args.sweep in ("batch", "workers"):
        values = (_ints(args.sweep_values, "--sweep-values", 0 if args.sweep == "workers" else 1)
                  if args.sweep_values else list(SWEEP_DEFAULTS[args.sweep]))
        if not sizes_given:
            sizes = sizes[:1]
            notes.append(f"--sweep {args.sweep} runs at {sizes[0]} px unless --image-sizes is given.")
        field = "batch_size" if args.sweep == "batch" else "workers"
        overrides = [{field: v} for v in values]
    else:
        if args.sweep_values:
            raise FastcifarError("--sweep-values needs --sweep batch or --sweep workers; add one of them.")
        overrides = [{}]
    model_sizes = sizes
    trains = [v for v in ("model", "e2e", "run") if v in views]
    if device.type == "cpu" and not sizes_given and args.sweep != "size" and trains:
        model_sizes = sizes[:1]
        for size in sizes[1:]:
            skipped.append({"view": "+".join(trains), "loader": None, "image_size": size, "reason": (
                f"skipped on a CPU by default: a {args.model or 'resnet18'} train step at {size} px "
                "is seconds per batch here; pass --image-sizes or --sweep size to run it.")})
    if ("e2e" in views or "run" in views) and "model" not in views:
        views = ["model", *views]
        notes.append("the model-only view was added: end-to-end and real-run ratios need its ceiling.")
    cells = []
    for index, over in enumerate(overrides):
        first = index == 0
        # the ceiling right before the rows it divides: same machine state
        for view in ("loader", "model", "e2e", "run"):
            if view not in views:
                continue
            if view == "model":
                if args.sweep == "workers" and not first:
                    continue  # the ceiling does not depend on loader workers
                cells += [("model", None, s, over) for s in model_sizes]
                continue
            for variant in variants:
                if args.sweep == "workers" and variant == "gpu" and not first:
                    skipped.append({"view": view, "loader": variant, "image_size": None,
                                    "reason": f"workers={over['workers']}: "
                                    "the gpu loader has no workers (measured once)."})
                    continue
                cells += [(view, variant, s, over) for s in (sizes if view == "loader" else model_sizes)]
    return cells, skipped, notes


# ---------------------------------------------------------------------------- running


def paired_cells(cells: list) -> list:
    """--paired: the loader cells of one image size and sweep value become one cell whose variant is the tuple of
    their loaders, measured together (bench/paired.py) where the first of them stood; other cells stay, and so
    does a loader that cannot share the process (LoaderSpec.shares_process: ffcv), measured on its own."""

    def pairs(view: str, variant: str) -> bool:
        return view == "loader" and LOADERS[VARIANTS[variant][0]].shares_process

    groups: dict[tuple, list[str]] = {}
    for view, variant, size, over in cells:
        if pairs(view, variant):
            groups.setdefault((size, tuple(sorted(over.items()))), []).append(variant)
    out, placed = [], set()
    for view, variant, size, over in cells:
        key = (size, tuple(sorted(over.items())))
        if not pairs(view, variant) or len(groups[key]) == 1:
            out.append((view, variant, size, over))
        elif key not in placed:
            placed.add(key)
            out.append((view, tuple(groups[key]), size, over))
    return out


def bench_defaults(device: torch.device) -> dict:
    """The config mapping the bench measures without --config (the defaults of every release so far)."""
    cuda = device.type == "cuda"
    return {
        "data": {"dataset": "cifar100", "batch_size": 256, "workers": usable_cores()},
        "augment": dict(BENCH_AUGMENT),
        "model": {"name": "resnet18", "cifar_stem": False},
        "train": {"amp": "bf16" if cuda else "none", "compile": cuda},  # compile on a CPU costs ~1 min per cell
    }


def base_config(args: argparse.Namespace, device: torch.device) -> tuple[dict, Config]:
    """The mapping every cell starts from, and its validated Config: --config (a packaged name or a YAML file) or
    the bench's defaults, with each --set override applied and checked by the config schema."""
    if args.config:
        cfg = load_config(args.config, args.overrides)
        return to_dict(cfg), cfg
    base = apply_overrides(bench_defaults(device), args.overrides)
    return base, from_dict(base)


def _pick(flag, value):
    """An explicit bench flag wins over the config's value."""
    return flag if flag is not None else value


def _settings(args: argparse.Namespace, device: torch.device, root: Path, cfg: Config, base: dict) -> BenchSettings:
    return BenchSettings(
        root=root, dataset=args.dataset, device=str(device), batch_size=_pick(args.batch_size, cfg.data.batch_size),
        workers=_pick(args.workers, cfg.data.workers), model=_pick(args.model, cfg.model.name),
        cifar_stem=_pick(args.cifar_stem, cfg.model.cifar_stem), amp=_pick(args.amp, cfg.train.amp),
        compile=_pick(args.compile, cfg.train.compile), channels_last=cfg.train.channels_last,
        iters=args.iters, warmup=args.warmup, seed=args.seed, timed_epochs=args.timed_epochs,
        min_seconds=args.min_seconds, paired=args.paired, base=base,
    )


def _policy(cfg: Config) -> dict:
    """The augmentation policy as the keys that differ from the schema's defaults (size and scales aside)."""
    default = to_dict(Config())["augment"]
    return {k: v for k, v in to_dict(cfg)["augment"].items()
            if v != default.get(k) and k not in ("image_size", "scales")}


def _measure(cells: list, base: BenchSettings, info, skipped: list, failed: list, run_epochs: int = DEFAULT_RUN_EPOCHS,
             rows: list | None = None, on_row=None) -> list[dict]:
    """Measure `cells` in order into `rows`; `on_row(rows)` after each (e.g. to keep a partial JSON current)."""
    rows, ceilings = ([] if rows is None else rows), {}
    threads = torch.get_num_threads()  # intra-op threads of this process, the same for every cell
    for number, (view, variant, size, over) in enumerate(cells, 1):
        torch.set_num_threads(threads)  # a backend that changed it (ffcv does, per loader) must not carry over
        settings = replace(base, **over)
        paired = isinstance(variant, tuple)
        name = "+".join(variant) if paired else variant or settings.model
        label = f"[{number}/{len(cells)}] {view} {name} {size}px batch {settings.batch_size}" + (
            f" workers {settings.workers}" if "workers" in over else "") + (" paired" if paired else "")
        try:
            with console.status(f"measuring {label} ..."):
                if paired:
                    new_rows, skips = loader_paired(settings, variant, size, info)
                    for skip in skips:
                        skipped.append(skip)
                        console.print(f"[yellow]skipped[/] {label} {skip['loader']}: {skip['reason']}",
                                      highlight=False)
                elif view == "model":
                    row = model_only(settings, size, info)
                    ceilings[(size, settings.batch_size)] = row["img_s"]
                elif view == "loader":
                    row = loader_only(settings, variant, size, info)
                else:
                    ceiling = ceilings.get((size, settings.batch_size))
                    if ceiling is None:
                        skipped.append({"view": view, "loader": variant, "image_size": size,
                                        "reason": "no model-only ceiling was measured."})
                        continue
                    if view == "e2e":
                        row = end_to_end(settings, variant, size, info, ceiling)
                    else:
                        row = real_run(settings, variant, size, info, ceiling, epochs=run_epochs)
        except (FastcifarError, ImportError) as error:
            skipped.append({"view": view, "loader": variant, "image_size": size, "reason": str(error)})
            console.print(f"[yellow]skipped[/] {label}: {error}", highlight=False)
            continue
        except Exception as error:  # noqa: BLE001 - recorded and re-raised after the report is written
            failed.append({"view": view, "loader": variant, "image_size": size,
                           "reason": f"{type(error).__name__}: {error}"})
            console.print(f"[bold red]failed[/] {label}: {type(error).__name__}: {error}", highlight=False)
            continue
        for measured in new_rows if paired else [row]:
            _print_row(f"{label} {measured['loader']}" if paired else label, view, measured)
            rows.append(measured)
            if on_row is not None:
                on_row(rows)
    return rows


def _print_row(label: str, view: str, row: dict) -> None:
    """One measured row on the console: img/s overall, warm-up, ratio and waits, epoch boundaries timed."""
    extra = ""
    if view in ("e2e", "run"):
        waits = [f"{name} {100 * row[key]:.0f} %" for name, key in (("host wait", "data_wait_share"),
                 ("device idle", "device_wait_share")) if row.get(key) is not None]
        extra = f" · ratio {row['ratio']:.2f} · {' · '.join(waits)}" + (
            f" · {row['verdict']}" if "verdict" in row else "")
    if row.get("epoch_boundaries") is not None:
        extra += f" · {row['epoch_boundaries']} epoch boundar{'y' if row['epoch_boundaries'] == 1 else 'ies'} timed"
    console.print(f"{label}: {row['img_s']:,.0f} img/s overall (warm-up {row['warmup_s']:.1f} s){extra}",
                  highlight=False)


def run_bench(args: argparse.Namespace) -> dict:
    """Run the benchmark the parsed `args` describe; print the tables, write the requested files, return the result."""
    device = resolve_device(args.device, option="--device")
    if args.iters is None:
        args.iters = DEFAULT_ITERS[device.type]
    views = _names(args.views, VIEWS, "view")
    variants = _names(args.loaders, tuple(VARIANTS), "loader")
    if (args.iters < 1 or args.warmup < 1 or (args.batch_size is not None and args.batch_size < 1)
            or args.run_epochs < 1):
        raise FastcifarError("--iters, --warmup, --batch-size and --run-epochs must be at least 1; pass larger values.")
    if args.timed_epochs < 0:
        raise FastcifarError(f"--timed-epochs must be 0 or more, got {args.timed_epochs}.")
    base, cfg = base_config(args, device)
    args.dataset = args.dataset or cfg.data.dataset
    sets_size = any(item.split("=", 1)[0].strip() == "augment.image_size" for item in args.overrides)
    if args.image_sizes is None and (args.config or sets_size):
        args.image_sizes = str(cfg.augment.image_size)  # the config's own size
    # cuDNN autotune / TF32: TrainStep applies the trainer's own flags (engine.build.set_backend_flags)
    cells, skipped, notes = _plan(args, device, variants, views)
    for variant in variants:
        reason = _backend_missing(variant)
        if reason:
            skipped.append({"view": "all", "loader": variant, "image_size": None, "reason": reason})
            cells = [c for c in cells if c[1] != variant]
    formats = {"npy"} | {FORMATS[VARIANTS[c[1]][0]] for c in cells if c[1]}
    if args.iters < MIN_ITERS_FOR_MEDIAN:
        notes.append(f"only {args.iters} measured iterations per cell: medians are rough "
                     f"(use --iters >= {MIN_ITERS_FOR_MEDIAN}).")

    with bench_root(args, formats) as root:
        if args.root:
            missing = formats - _prepared_formats(args.dataset, root)
            for fmt in sorted(missing):
                users = sorted({c[1] for c in cells if c[1] and FORMATS[VARIANTS[c[1]][0]] == fmt})
                skipped.append({"view": "all", "loader": ",".join(users), "image_size": None, "reason": (
                    f"the {fmt} format is not prepared under {root}; "
                    f"run `fastcifar data prepare {args.dataset} --formats {fmt}"
                    f" --root {root}`.")})
            cells = [c for c in cells if not c[1] or FORMATS[VARIANTS[c[1]][0]] not in missing]
        if args.paired:
            cells = paired_cells(cells)  # after every filter above, which reads one loader per cell
        settings = _settings(args, device, root, cfg, base)
        info = data_info(settings)
        for item in skipped:
            console.print(f"[yellow]skipped[/] {report._skipped_text(item)}", highlight=False)
        shown = settings_dict(settings)
        shown.update(root=args.root or "(temporary synthetic root)", views=views, loaders=variants, sweep=args.sweep,
                     image_sizes=sorted({c[2] for c in cells}), run_epochs=args.run_epochs)
        rows, failed = [], []
        result = {
            "schema": "fastcifar-bench/1",
            "provenance": collect(device, shown),
            "machine_load": None,
            "data": {"dataset": args.dataset, "source": info.source, "synthetic": info.synthetic,
                     "train_images": info.train_count,
                     "root": shown["root"]},
            "policy": _policy(cfg),
            "config": {"name": args.config, "overrides": list(args.overrides), "resolved": base},
            "sweep": args.sweep,
            "rows": rows,
            "skipped": skipped,
            "failed": failed,
            "notes": notes,
        }

        def keep_partial(done: list) -> None:  # a run stopped at its time budget still leaves its finished cells
            if args.json:
                report.write_json({**result, "partial": f"{len(done)} of {len(cells)} cells"}, args.json)

        watch = LoadWatch()
        watch.start()
        _measure(cells, settings, info, skipped, failed, args.run_epochs, rows=rows, on_row=keep_partial)
        result["machine_load"] = watch.stop()
    report.annotate_speedups(rows)
    above = [r for r in rows if r["view"] == "e2e" and r["ratio"] > ABOVE_CEILING_NOTE]
    if above:
        worst = max(above, key=lambda r: r["ratio"])
        notes.append(f"{len(above)} end-to-end row(s) measured above the model-only ceiling "
                     f"(up to {worst['ratio']:.2f}x, "
                     f"{worst['loader']} at {worst['image_size']} px): run-to-run noise of this machine (compare the "
                     "min–max ranges); read a ratio above 1 as 'at the ceiling'.")
    report.print_tables(result, console)
    _write_outputs(args, result, device)
    if failed:
        raise FastcifarError(f"{len(failed)} benchmark cell(s) failed ({failed[0]['reason']}); "
                             "the report lists them under 'failed'.")
    return result


def _write_outputs(args: argparse.Namespace, result: dict, device: torch.device) -> None:
    paths = {"json": args.json, "markdown": args.markdown, "png": args.png}
    if args.out:
        stem = f"{device.type}-{args.tag or socket.gethostname()}-{dt.date.today().isoformat()}"
        for kind, suffix in (("json", "json"), ("markdown", "md"), ("png", "png")):
            paths[kind] = paths[kind] or str(Path(args.out) / f"{stem}.{suffix}")
    writers = {"json": report.write_json, "markdown": report.write_markdown, "png": report.write_png}
    for kind, path in paths.items():
        if path:
            writers[kind](result, path)
            console.print(f"wrote {path}", highlight=False)
