"""Run folders: `out_dir/<name>-<YYYYmmdd-HHMMSS>`, with the resolved config and the provenance beside the results."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import torch

from fastcifar import atomic, provenance
from fastcifar.config import Config, dump_config


def make_run_dir(cfg: Config, now: float | None = None) -> Path:
    """Create a new, unique run folder under `cfg.train.out_dir` and write `config.yaml` into it.

    Two runs started in the same second get `-1`, `-2`, ... suffixes, never the same folder.
    """
    out = Path(cfg.train.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{_safe(cfg.name)}-{stamp}"
    for i in range(1000):
        path = out / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        atomic.write_text(path / "config.yaml", dump_config(cfg))
        return path
    # 1000 runs in one second: a bug, not a user error
    raise RuntimeError(f"could not create a unique run folder under {out}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"


def environment(device: torch.device) -> dict:
    """env.json: versions, device, CPU, host, git revision and the command line of this run."""
    return {
        "versions": provenance.versions(),
        "device": str(device),
        "device_name": provenance.device_name(device),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "git": provenance.git_revision(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON, written atomically."""
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
