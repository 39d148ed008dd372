"""Benchmark output: rich tables on the terminal, JSON (with provenance), Markdown and a PNG chart.

All writers take the `result` mapping built by `fastcifar.bench.cli.run_bench`:
    {"schema", "provenance", "machine_load", "data", "policy", "sweep", "rows": [row, ...], "skipped": [...], "notes"}
where each row is a plain dict from `fastcifar.bench.suites` with a "view" of "loader", "model" or "e2e".
Files are written atomically (temp file in the same folder, then renamed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fastcifar.atomic import atomic_path, write_text
from fastcifar.bench.suites import MIN_WINDOW_S
from fastcifar.bench.thresholds import RULE as VERDICT_RULE
from fastcifar.data.source import source_of

VIEW_TITLES = {
    "loader": "Loader only: augmented, model-ready batches (loader + GpuAugment.train_batch), no model",
    "model": "Model only (ceiling): train step on a synthetic batch already on the device",
    "e2e": "End to end: train step fed by the loader",
    "run": "Real run: a short `fastcifar train` of the config (evaluation and checkpoints included)",
}
SWEEP_KEYS = {"size": "image_size", "batch": "batch_size", "workers": "workers"}


def sweep_key(result: dict) -> str:
    """Row field the run was swept over (image_size unless a batch or workers sweep)."""
    return SWEEP_KEYS.get(result.get("sweep") or "size", "image_size")


def rows_of(result: dict, view: str) -> list[dict]:
    return [r for r in result["rows"] if r["view"] == view]


def _cell_key(row: dict) -> tuple:
    return (row["image_size"], row["batch_size"], row["workers"])


def annotate_speedups(rows: list[dict], baseline: str = "torch") -> None:
    """Add `vs_<baseline>` to loader rows: img/s over the baseline loader's img/s in the same cell (in place)."""
    base = {_cell_key(r): r["img_s"] for r in rows if r["view"] == "loader" and r["loader"] == baseline}
    for row in rows:
        if row["view"] == "loader" and _cell_key(row) in base:
            row[f"vs_{baseline}"] = row["img_s"] / base[_cell_key(row)]


# ---------------------------------------------------------------------------- formatting


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _range(row: dict) -> str:
    return f"{_num(row['img_s_min'])}–{_num(row['img_s_max'])}"


def _augment_where(row: dict) -> str:
    """Where the per-image augmentation ran: the device (GpuAugment), the loader's CPU workers, or natively."""
    if not row.get("per_image_ops_on_device", True):
        return "CPU workers"
    native = row.get("native_ops") or []
    return f"native {'+'.join(native)}, rest device" if native else "device"


def _cpu(row: dict) -> str:
    return f"{row['cpu_pct_one_core']:.0f} / {row['cpu_pct_all_cores']:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


_waits = [("host wait", lambda r: _pct(r.get("data_wait_share"))),
          ("device idle", lambda r: _pct(r.get("device_wait_share")))]


def _columns(view: str, result: dict) -> list[tuple[str, callable]]:
    """(header, row -> text) per column of one view's table; shared by the terminal and Markdown."""
    key = sweep_key(result)
    swept = [] if key == "image_size" else [(key.replace("_", " "), lambda r: str(r[key]))]
    size = [("px", lambda r: str(r["image_size"]))]
    rate = [("img/s overall", lambda r: _num(r["img_s"])), ("median", lambda r: _num(r.get("img_s_median"))),
            ("min–max", _range), ("ms/batch", lambda r: _num(r["step_ms"], 1))]
    bounds = [("epoch bounds", lambda r: "-" if r.get("epoch_boundaries") is None else str(r["epoch_boundaries"])),
              ("bound fetch s", lambda r: _num(r.get("boundary_fetch_s"), 2))]
    cpu = [("CPU % (1 core / all)", _cpu)]
    if view == "loader":
        return [("loader", lambda r: r["loader"]), *swept, *size, *rate, *bounds,
                ("vs torch", lambda r: f"{r['vs_torch']:.1f}x" if "vs_torch" in r else "-"),
                ("augment on", _augment_where), *cpu]
    if view == "model":
        return [("model", lambda r: r["model"]), *swept, *size, *rate,
                ("amp", lambda r: r["amp"]), ("compile", lambda r: "yes" if r["compile"] else "no"), *cpu]
    if view == "run":
        return [("loader", lambda r: r["loader"]), *size, ("train img/s (wall)", lambda r: _num(r["img_s"])),
                ("epochs", lambda r: str(r["epochs"])), ("wall s", lambda r: _num(r["wall_s"], 1)),
                ("train s", lambda r: _num(r["train_s"], 1)), ("eval s", lambda r: _num(r["eval_s"], 2)),
                ("ckpt s", lambda r: _num(r.get("ckpt_s"), 2)), ("warm-up s", lambda r: _num(r["warmup_s"], 1)),
                ("train share", lambda r: _pct(r["train_share"])),
                ("ceiling img/s", lambda r: _num(r["ceiling_img_s"])),
                ("ratio", lambda r: f"{r['ratio']:.2f}"), *_waits]
    return [("loader", lambda r: r["loader"]), *swept, *size, *rate, *bounds,
            ("ceiling img/s", lambda r: _num(r["ceiling_img_s"])), ("ratio", lambda r: f"{r['ratio']:.2f}"),
            *_waits, ("verdict", lambda r: r["verdict"]), *cpu]


def _warmup_columns(result: dict) -> list[tuple[str, callable]]:
    key = sweep_key(result)
    swept = [] if key == "image_size" else [(key.replace("_", " "), lambda r: str(r[key]))]
    return [
        ("view", lambda r: r["view"]), ("loader / model", lambda r: r["loader"] or r.get("model", "-")), *swept,
        ("px", lambda r: str(r["image_size"])), ("build s", lambda r: _num(r["build_s"], 2)),
        ("first batch/step s", lambda r: _num(r.get("first_batch_s", r.get("first_step_s")), 2)),
        ("warm-up total s", lambda r: _num(r["warmup_s"], 2)),
        ("to epoch end s", lambda r: _num(r.get("position_s"), 2)),
    ]


def _headline(result: dict) -> list[str]:
    """Lines that say what was measured, where, and on what data."""
    prov, data, load = result["provenance"], result["data"], result.get("machine_load") or {}
    settings = prov["settings"]
    synthetic = {"synthetic": "SYNTHETIC stand-in (image content does not affect throughput)",
                 "custom": "custom data (the user's own, in the CIFAR layout)"}.get(source_of(data), "official data")
    host = (f"{prov['cpu_count']} CPU cores" if prov["device"] == "cpu"
            else f"host {prov['cpu_model']}, {prov['cpu_count']} CPU cores")
    policy = " + ".join(f"{k} {v}" for k, v in result["policy"].items()) or "none"
    config = result.get("config") or {}
    source = f"config {config['name']}" if config.get("name") else "bench defaults"
    if config.get("overrides"):
        source += " with --set " + " ".join(config["overrides"])
    allocator = prov.get("cpu_allocator") or {}  # absent in results made before fastcifar.cpu_memory
    if prov["device"] == "cpu" and allocator:
        host += (f" · CPU allocator: huge pages {'on' if allocator['thp'] else 'off'}, freed memory "
                 f"{'reused in the heap' if allocator['heap_reuse'] else 'returned to the OS'}")
    lines = [
        f"device: {prov['device_name']} · {host} · torch {prov['versions']['torch']}"
        f" · ffcv {prov['versions']['ffcv'] or 'not installed'} · dali {prov['versions']['dali'] or 'not installed'}",
        f"data: {data['dataset']} train split, {data['train_images']} images, {synthetic}",
        f"batch {settings['batch_size']} · workers/threads {settings['workers']} · model {settings['model']}"
        f" (cifar_stem {settings['cifar_stem']}) · amp {settings['amp']} · compile {settings['compile']}"
        f" · {settings['iters']} measured iters (at least {settings.get('min_seconds', 0):g} s) after"
        f" {settings['warmup']} warm-up · augment policy {policy}"
        + (" · loaders PAIRED: timed in alternating segments of one run" if settings.get("paired") else ""),
        f"what is measured: {source}",
    ]
    if load:
        lines.append(
            f"machine load: avg {load['load_avg_start'][0]} at start, {load['load_avg_end'][0]} at end; "
            f"other processes used {100 * (load['others_cpu_share'] or 0):.0f} % of all cores"
            + (" — BUSY, numbers may be low" if load["busy"] else "")
        )
    lines.append(f"git {(prov['git']['hash'] or 'unknown')[:12]}{' (dirty)' if prov['git']['dirty'] else ''} · "
                 f"{prov['hostname']} · {prov['date']}")
    return lines


TIMING_NOTE = (
    "img/s overall (the headline): all timed images / all timed time, epoch-boundary stalls included; the timed "
    "region of every loader cell crosses at least one epoch boundary ('epoch bounds' says how many; 'bound fetch s' "
    "is the slowest fetch that opened an epoch). median and min–max: per-window rates, the steady state without "
    "stalls; a window is up to workers x prefetch consecutive batches (1 for the model-only view) "
    f"or {MIN_WINDOW_S} s, "
    "so batches a loader prefetched ahead cannot pass for throughput. ms/batch: window time / its batches (median). "
    "host wait: host blocked getting the next augmented batch / wall time; device idle (CUDA): device time between "
    "train steps / device time of the timed steps. CPU %: CPU time of the process and its workers over the timed "
    "wall time (100 = one core busy / all cores busy). to epoch end s: advancing the loader, untimed, to near the end "
    "of its epoch before timing. Real run: a short `fastcifar train` (evaluation and checkpoints included); train "
    "img/s = trained images / wall time of the run less the first step's warm-up (compile), shown apart."
)


# ---------------------------------------------------------------------------- terminal


def print_tables(result: dict, console: Console | None = None) -> None:
    """One rich table per view, a warm-up table, and what was skipped and why."""
    console = console or Console()
    for line in _headline(result):
        console.print(line, highlight=False)
    for view, title in VIEW_TITLES.items():
        rows = rows_of(result, view)
        if rows:
            _print_table(console, title, _columns(view, result), rows)
    if rows_of(result, "e2e"):
        console.print(VERDICT_RULE, style="dim", highlight=False)
    if result["rows"]:
        console.print(TIMING_NOTE, style="dim", highlight=False)
        _print_table(console, "Warm-up (timed on its own, never inside img/s)", _warmup_columns(result), result["rows"])
    for item in result["skipped"]:
        console.print(f"[yellow]skipped[/] {_skipped_text(item)}", highlight=False)
    for item in result.get("failed", []):
        console.print(f"[bold red]failed[/] {_skipped_text(item)}", highlight=False)
    for note in result.get("notes", []):
        console.print(f"[dim]note:[/] {note}", highlight=False)


def _print_table(console: Console, title: str, columns: list, rows: list[dict]) -> None:
    table = Table(title=title, title_justify="left")
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("loader", "model", "view", "verdict") else "right")
    for row in rows:
        table.add_row(*(fn(row) for _, fn in columns))
    console.print(table)


def _skipped_text(item: dict) -> str:
    where = " ".join(str(item[k]) for k in ("view", "loader", "image_size") if item.get(k) is not None)
    return f"{where}: {item['reason']}"


# ---------------------------------------------------------------------------- files


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write the full result (rows, provenance, settings) as indented JSON, atomically."""
    path = Path(path)
    write_text(path, json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    return path


def to_markdown(result: dict) -> str:
    """The report as GitHub-flavoured Markdown: headline, one table per view, warm-up, skipped cells."""
    out = ["# fastcifar bench", ""]
    out += [f"- {line}" for line in _headline(result)] + [""]
    for view, title in VIEW_TITLES.items():
        rows = rows_of(result, view)
        if rows:
            out += [f"## {title}", "", *_md_table(_columns(view, result), rows), ""]
    if rows_of(result, "e2e"):
        out += [VERDICT_RULE, ""]
    if result["rows"]:
        out += ["## Warm-up (timed on its own, never inside img/s)", "",
                *_md_table(_warmup_columns(result), result["rows"]), ""]
    if result["skipped"]:
        out += ["## Skipped", ""] + [f"- {_skipped_text(item)}" for item in result["skipped"]] + [""]
    if result.get("failed"):
        out += ["## Failed", ""] + [f"- {_skipped_text(item)}" for item in result["failed"]] + [""]
    if result.get("notes"):
        out += ["## Notes", ""] + [f"- {note}" for note in result["notes"]] + [""]
    out += [TIMING_NOTE, ""]
    return "\n".join(out)


def _md_table(columns: list, rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fn(r) for _, fn in columns) + " |" for r in rows]
    return lines


def write_markdown(result: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    write_text(path, to_markdown(result))
    return path


def write_png(result: dict, path: str | os.PathLike) -> Path:
    """Bar chart of img/s by loader x sweep value (log scale), one panel per view (loader-only, end-to-end),
    with the model-only ceiling drawn as a dashed line over each group. Rendered with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    key = sweep_key(result)
    views = [v for v in ("loader", "e2e") if rows_of(result, v)] or ["model"]
    ceilings = {(r["image_size"], r["batch_size"]): r["img_s"] for r in rows_of(result, "model")}  # not per workers
    fig, axes = plt.subplots(1, len(views), figsize=(7.5 * len(views), 5), squeeze=False)
    for ax, view in zip(axes[0], views):
        _bars(ax, rows_of(result, view), key, ceilings, view)
    prov = result["provenance"]
    synthetic = {"synthetic": ", synthetic data", "custom": ", custom data"}.get(source_of(result["data"]), "")
    batch = "batch sweep" if key == "batch_size" else f"batch {prov['settings']['batch_size']}"
    fig.suptitle(f"fastcifar bench · {prov['device_name']} · {batch}{synthetic}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _group(row: dict, key: str) -> tuple:
    """X group of a row: the swept value, plus the image size when sweeping something else."""
    return (row[key],) if key == "image_size" else (row[key], row["image_size"])


def _bars(ax, rows: list[dict], key: str, ceilings: dict, view: str) -> None:
    groups = sorted({_group(r, key) for r in rows})
    # the ceiling over each group: the model-only row at the group's image size and batch size
    ceilings = {_group(r, key): ceilings[(r["image_size"], r["batch_size"])] for r in rows
                if (r["image_size"], r["batch_size"]) in ceilings}
    labels = list(dict.fromkeys(r["loader"] or r.get("model") for r in rows))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        by_group = {_group(r, key): r["img_s"] for r in rows if (r["loader"] or r.get("model")) == label}
        xs = [g for g, _ in enumerate(groups) if groups[g] in by_group]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [by_group[groups[x]] for x in xs], width, label=label)
    for g, group in enumerate(groups):
        if group in ceilings:
            ax.hlines(ceilings[group], g - 0.45, g + 0.45, colors="black", linestyles="dashed",
                      label="model-only ceiling"
                      if g == min(i for i, gr in enumerate(groups) if gr in ceilings) else None)
    values = [r["img_s"] for r in rows] + [ceilings[g] for g in groups if g in ceilings]
    ax.set_ylim(min(values) / 3, max(values) * 3)  # log bars need a floor; keep every bar and ceiling in view
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([_group_label(g, key) for g in groups])
    ax.set_yscale("log")
    ax.set_ylabel("img/s (overall, log scale)")
    ax.set_title("loader only (augmented batches)" if view == "loader"
                 else "end to end (train step)" if view == "e2e" else "model only")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _group_label(group: tuple, key: str) -> str:
    if key == "image_size":
        return f"{group[0]} px"
    unit = "batch" if key == "batch_size" else "workers"
    return f"{unit} {group[0]}\n{group[1]} px"
