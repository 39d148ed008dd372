"""Run folders: `out_dir/<name>-<YYYYmmdd-HHMMSS>`, with the resolved config and the provenance beside the results."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from fastcifar.config import Config, dump_config
from fastcifar.engine import atomic

# Distribution names whose versions are recorded when installed (None = not installed).
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "numpy": "numpy", "ffcv": "ffcv", "dali": "nvidia-dali-cuda130"}


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
    raise RuntimeError(f"could not create a unique run folder under {out}")  # 1000 runs in one second: a bug, not a user error


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"


def environment(device: torch.device) -> dict:
    """Versions, device, host and command line: what a reader needs to trust or reproduce a number."""
    versions = {}
    for key, dist in PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    try:
        fastcifar_version = metadata.version("fastcifar")
    except metadata.PackageNotFoundError:
        fastcifar_version = None
    return {
        "python": platform.python_version(),
        "versions": versions,
        "fastcifar": fastcifar_version,
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "git": git_info(Path(__file__).resolve().parent),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cpu_name() -> str:
    """The CPU model ("AMD EPYC ...") from /proc/cpuinfo on Linux, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_info(folder: Path) -> dict | None:
    """`{"commit", "dirty"}` of the git checkout holding `folder`, or None outside a repository / without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON, written atomically."""
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
