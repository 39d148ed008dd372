"""What identifies a result: library versions, device and CPU names, git revision.

Shared by the trainer's `env.json` and the benchmark's provenance, so both describe a machine the same way.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

# Distribution names, read from installed metadata: no import, so optional backends are never loaded
# (importing ffcv resets torch's thread count) and ffcv's stale `__version__` is not reported.
DISTRIBUTIONS = {
    "fastcifar": "fastcifar",
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "numba": "numba",
    "ffcv": "ffcv",
    "dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"),  # whichever CUDA build is installed
}


def versions() -> dict:
    """Versions of python and the libraries that shape results (None = not installed)."""
    out: dict = {"python": platform.python_version()}
    for key, names in DISTRIBUTIONS.items():
        out[key] = None
        for dist in (names,) if isinstance(names, str) else names:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    out["torch"] = torch.__version__  # includes the build tag (+cu130, +cpu)
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def cpu_model() -> str:
    """The CPU model ("AMD EPYC ...") from /proc/cpuinfo on Linux, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or 'cpu (<model>)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()})"


def git_revision(folder: Path | None = None) -> dict:
    """`{"hash", "dirty"}` of the git checkout holding `folder` (default: fastcifar's own source);
    both None outside a checkout or without git. Untracked files do not count as dirty."""
    folder = folder or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"hash": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"hash": None, "dirty": None}
    return {"hash": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
