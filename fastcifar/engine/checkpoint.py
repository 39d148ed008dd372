"""Checkpoints: everything a run needs to continue bit-for-bit, stored with plain types and tensors only.

`torch.load(weights_only=True)` refuses arbitrary pickled objects, so RNG states are converted to tensors,
ints and strings here (numpy's key array becomes a tensor), and the config is stored as a plain dict.

Layout of a checkpoint (a dict):
    model        unwrapped state dict (no DDP `module.` / compile `_orig_mod.` prefixes)
    ema          ModelEma state dict or None
    optimizer, scheduler, scaler   their state dicts
    epoch        last completed epoch (0-based); resuming starts at epoch + 1
    step         global optimizer step count
    rng          see `rng_state()`
    early_stop   EarlyStopper state dict
    best         {"metric": name, "value": float | None, "epoch": int}
    config       `fastcifar.config.to_dict(cfg)`
    num_classes  int
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from fastcifar import atomic
from fastcifar.errors import FastcifarError

LAST = "last.pt"
BEST = "best.pt"


# ---------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """Every RNG the training loop draws from, as plain types and CPU tensors."""
    np_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, "has_gauss", "gauss"}
    version, internal, gauss = random.getstate()
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),  # uint32 [624] as int64
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),  # uint8 CPU tensor
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],  # one uint8 tensor per device
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned (CUDA states only for the devices that exist now)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ---------------------------------------------------------------------------- files


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically (temp file + rename): `kill -9` during the write keeps the old one."""
    atomic.torch_save(state, path)


def resolve_checkpoint(target: str | os.PathLike, name: str = BEST) -> Path:
    """A run dir -> its `name` checkpoint; a file -> itself. Raises FastcifarError when missing."""
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise FastcifarError(f"No checkpoint at '{path}'; give a run directory that holds {name} or a .pt file.")
    return path


def load_checkpoint(target: str | os.PathLike, name: str = BEST) -> dict:
    """Load a checkpoint (run dir or file) onto the CPU with `weights_only=True`."""
    path = resolve_checkpoint(target, name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle with arbitrary objects
        raise FastcifarError(f"Checkpoint '{path}' cannot be read ({e.__class__.__name__}); it is corrupt or not a fastcifar checkpoint, so train again or pick another file.") from None
    if not isinstance(state, dict) or "model" not in state:
        raise FastcifarError(f"'{path}' is not a fastcifar checkpoint (no 'model' entry); give a run directory or a best.pt/last.pt file.")
    return state


def eval_weights(state: dict) -> dict:
    """The weights evaluation uses: the EMA copy when the run kept one, else the raw model."""
    return state.get("ema") or state["model"]  # ModelEma.state_dict() is a plain model state dict
