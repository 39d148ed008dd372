"""Where data lives: `--root`, else `$FASTCIFAR_ROOT`, else `~/.cache/fastcifar`."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root folder (not created here)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("FASTCIFAR_ROOT")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/fastcifar").expanduser()
