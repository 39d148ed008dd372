"""A seed-README-style table over many runs: one row per run folder found under the given folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from fastcifar.data.source import label as source_label
from fastcifar.data.source import source_of
from fastcifar.engine.metrics import read_jsonl
from fastcifar.errors import FastcifarError


def find_runs(dirs: list[str | os.PathLike]) -> list[Path]:
    """Run folders (holding config.yaml and metrics.jsonl or summary.json) under `dirs`, recursively, sorted."""
    runs = set()
    for folder in map(Path, dirs):
        if not folder.exists():
            raise FastcifarError(f"'{folder}' does not exist; give folders that hold run directories (default: runs).")
        for config in folder.rglob("config.yaml"):
            run = config.parent
            if (run / "summary.json").exists() or (run / "metrics.jsonl").exists():
                runs.add(run.resolve())
    return sorted(runs)


def results_table(dirs: list[str | os.PathLike]) -> list[dict]:
    """One row per run: config name, description, best accuracy and epoch, img/s, wall time, loader, data source.

    Finished runs read summary.json; unfinished ones (crashed or still running) are summarized from
    metrics.jsonl and marked `status: incomplete`.
    """
    return [_row(run) for run in find_runs(dirs)]


def _row(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    data = cfg.get("data", {})
    row = {
        "run": run.name,
        "path": str(run),
        "name": cfg.get("name"),
        "description": cfg.get("description", ""),
        "dataset": data.get("dataset"),
        "model": cfg.get("model", {}).get("name"),
        "image_size": cfg.get("augment", {}).get("image_size"),
        "loader": data.get("loader"),
    }
    summary_path = run / "summary.json"
    s = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    source = source_of(s)
    row.update(source=source, synthetic=source == "synthetic" if source else None,  # official | synthetic | custom
               device=s.get("device_name") or s.get("device"), loader=s.get("loader", row["loader"]))
    if s.get("status") in ("done", "early-stopped"):
        row.update(
            status=s["status"],
            select_metric=s.get("select_metric"),
            best_acc=s.get("best_acc"),
            best_epoch=s.get("best_epoch"),
            epochs=s.get("epochs_done"),
            img_per_s=s.get("img_per_s"),
            wall_s=s.get("wall_s"),
        )
        return row
    # Crashed or still running: what its metrics log says so far.
    records = read_jsonl(run / "metrics.jsonl")
    key = s.get("select_metric") or ("val_acc" if any(r.get("val_acc") is not None for r in records) else "test_acc")
    acc_key = key if key.endswith("_acc") else key.split("_")[0] + "_acc"
    scored = [r for r in records if r.get(key) is not None]
    best = (min if key.endswith("_loss") else max)(scored, key=lambda r: r[key]) if scored else None
    rates = sorted(r["img_per_s"] for r in records if r.get("img_per_s"))
    row.update(
        status="incomplete",
        select_metric=key,
        best_acc=best.get(acc_key) if best else None,
        best_epoch=best["epoch"] if best else None,
        epochs=len(records),
        img_per_s=rates[len(rates) // 2] if rates else None,
        wall_s=records[-1].get("wall_s") if records else None,
    )
    return row


def print_results(dirs: list[str | os.PathLike], console: Console | None = None) -> list[dict]:
    """Print the results table with rich and return its rows."""
    console = console or Console()
    rows = results_table(dirs)
    if not rows:
        console.print(f"No runs found under {', '.join(map(str, dirs))}; train one with `fastcifar train CONFIG`.")
        return rows
    table = Table(title="fastcifar runs",
                  caption="best acc: on the split of the run's select metric (val if held out, else test)")
    table.add_column("run", overflow="fold", ratio=3)
    table.add_column("data", overflow="fold", ratio=1)
    table.add_column("model", overflow="fold", ratio=1)
    table.add_column("loader", no_wrap=True)
    for column in ("best acc", "ep", "img/s", "wall"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for r in rows:
        label = r["name"] or r["run"]
        if r["description"]:
            label += f"\n[dim]{first_sentence(r['description'])}[/]"
        shown = r["source"] not in (None, "official")  # official is the default; the others stand out
        data = f"{r['dataset'] or '-'}" + (f"\n{source_label(r['source'], styled=True)}" if shown else "")
        table.add_row(
            label,
            data,
            f"{r['model'] or '-'} @{r['image_size'] or '-'}",
            r["loader"] or "-",
            f"{r['best_acc']:.2%}" if r["best_acc"] is not None else "-",
            str(r["best_epoch"] + 1) if r["best_epoch"] is not None else "-",
            f"{r['img_per_s']:,.0f}" if r["img_per_s"] else "-",
            _duration(r["wall_s"]),
            {"early-stopped": "stopped"}.get(r["status"], r["status"]),
        )
    console.print(table)
    return rows


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def first_sentence(text: str) -> str:
    """The headline of a config description: up to the first '. ' or ' (' (tables stay one line per run)."""
    return text.split(". ")[0].split(" (")[0].rstrip(".")
