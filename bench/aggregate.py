"""Repeated benchmark runs as one result a reader can trust: the median of the repeats with their range, and how
noisy the machine was while they ran.

    python -m fastcifar.bench.aggregate OUT_STEM REPEAT.json REPEAT.json REPEAT.json

writes OUT_STEM.json and OUT_STEM.md. One run's figure on a shared VM is noise (a `torch` baseline measured
4,326 img/s in one run and 13,974 in another); the median of three with its min-max says how far to trust it.
Speed-ups (`vs_torch`) are taken per repeat (both loaders measured in the same run: one after the other, or
interleaved with --paired) and then summarized the same way.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from fastcifar.atomic import write_text
from fastcifar.bench.thresholds import REPEAT_SPREAD_NOTE

KEY = ("view", "loader", "image_size", "batch_size", "workers")


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(results: list[dict]) -> dict:
    """Median of repeats per cell (view, loader, size, batch, workers): overall img/s (the headline), the window
    median img/s, and vs_torch, each with min and max over the repeats; plus each repeat's machine noise."""
    from fastcifar.bench.report import annotate_speedups

    cells: dict[tuple, list[dict]] = {}
    for result in results:
        rows = [dict(r) for r in result["rows"]]
        annotate_speedups(rows)
        for row in rows:
            cells.setdefault(tuple(row.get(k) for k in KEY), []).append(row)
    rows = []
    for key, repeats in cells.items():
        row = dict(zip(KEY, key))
        row["img_s"] = _spread([r["img_s"] for r in repeats])
        medians = [r["img_s_median"] for r in repeats if r.get("img_s_median") is not None]
        row["img_s_median"] = _spread(medians) if medians else None
        ratios = [r["vs_torch"] for r in repeats if "vs_torch" in r]
        row["vs_torch"] = _spread(ratios) if ratios else None
        # overall / window median per repeat: what stalls (epoch boundaries included) cost against the steady state
        stalls = [r["img_s"] / r["img_s_median"] for r in repeats if r.get("img_s_median")]
        row["overall_vs_median"] = _spread(stalls) if stalls else None
        row["epoch_boundaries"] = [r.get("epoch_boundaries") for r in repeats]
        row["noisy"] = (row["img_s"]["max"] - row["img_s"]["min"]) > REPEAT_SPREAD_NOTE * row["img_s"]["median"]
        rows.append(row)
    noise = []
    for result in results:
        load = result.get("machine_load") or {}
        own = [r["cpu_pct_all_cores"] for r in result["rows"] if r.get("cpu_pct_all_cores") is not None]
        noise.append({"started": load.get("started"), "load_avg_start": load.get("load_avg_start"),
                      "load_avg_end": load.get("load_avg_end"), "others_cpu_share": load.get("others_cpu_share"),
                      "busy": load.get("busy"), "wall_s": load.get("wall_s"),
                      "own_cpu_pct_all_cores_mean": statistics.fmean(own) if own else None,
                      "git": (result["provenance"].get("git") or {}).get("hash"),
                      "dirty": (result["provenance"].get("git") or {}).get("dirty")})
    first = results[0]
    return {"schema": "fastcifar-bench-repeats/1", "repeats": len(results), "provenance": first["provenance"],
            "data": first.get("data"), "policy": first.get("policy"), "config": first.get("config"),
            "rows": rows, "noise": noise}


def _fmt(spread: dict | None, digits: int = 0, suffix: str = "") -> str:
    if not spread:
        return "-"
    return (f"{spread['median']:,.{digits}f}{suffix} ({spread['min']:,.{digits}f}–{spread['max']:,.{digits}f})")


def to_markdown(agg: dict) -> str:
    prov = agg["provenance"]
    lines = ["# fastcifar bench: median of repeats", "",
             f"- {agg['repeats']} repeats · {prov['device_name']} · {prov['cpu_count']} CPU cores · torch "
             f"{prov['versions']['torch']} · git {(prov['git']['hash'] or 'unknown')[:12]}"
             f"{' (dirty)' if prov['git']['dirty'] else ''}",
             f"- data: {agg['data']['dataset']} {agg['data']['train_images']} images"
             f"{', SYNTHETIC stand-in' if agg['data']['synthetic'] else ''}",
             "- img/s overall: median of the repeats (min–max over repeats); each repeat's figure is all timed "
             "images / all timed time, epoch boundaries included. vs torch: per repeat, then the median (range)"
             + ("; within a repeat the loaders were PAIRED, timed in alternating segments of one run (--paired)."
                if prov["settings"].get("paired") else "."),
             "- overall / median: each repeat's overall img/s over its window median (1.0 = no stall costs anything), "
             "then the median (range) over repeats.",
             f"- noisy: the repeats' range exceeds {REPEAT_SPREAD_NOTE:.0%} of their median.", "",
             "| view | loader | px | img/s overall | window median img/s | overall / median | vs torch | epoch bounds "
             "| noisy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(agg["rows"], key=lambda r: (r["view"], r["image_size"], r["loader"] or "")):
        lines.append(f"| {r['view']} | {r['loader'] or '-'} | {r['image_size']} | {_fmt(r['img_s'])} | "
                     f"{_fmt(r['img_s_median'])} | {_fmt(r.get('overall_vs_median'), 2)} | "
                     f"{_fmt(r['vs_torch'], 1, 'x')} | "
                     f"{','.join('-' if b is None else str(b) for b in r['epoch_boundaries'])} | "
                     f"{'yes' if r['noisy'] else ''} |")
    lines += ["", "## Machine noise per repeat", "",
              "| repeat | started | load avg start → end | other processes' CPU share "
              "| own CPU % of all cores | busy |",
              "|---|---|---|---|---|---|"]
    for i, n in enumerate(agg["noise"], 1):
        others = "-" if n["others_cpu_share"] is None else f"{100 * n['others_cpu_share']:.0f} %"
        own = "-" if n["own_cpu_pct_all_cores_mean"] is None else f"{n['own_cpu_pct_all_cores_mean']:.0f} %"
        load = f"{(n['load_avg_start'] or ['-'])[0]} → {(n['load_avg_end'] or ['-'])[0]}"
        lines.append(f"| {i} | {n['started']} | {load} | {others} | {own} | {'BUSY' if n['busy'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        print("usage: python -m fastcifar.bench.aggregate OUT_STEM REPEAT.json REPEAT.json [...]", file=sys.stderr)
        return 2
    stem, paths = Path(argv[0]), [Path(p) for p in argv[1:]]
    agg = aggregate([json.loads(p.read_text()) for p in paths])
    agg["sources"] = [p.name for p in paths]
    write_text(Path(f"{stem}.json"), json.dumps(agg, indent=2, default=str) + "\n")
    write_text(Path(f"{stem}.md"), to_markdown(agg))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
