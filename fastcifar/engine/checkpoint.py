"""Checkpoints: everything a run needs to continue bit-for-bit, stored with plain types and tensors only.

`torch.load(weights_only=True)` refuses arbitrary pickled objects, so RNG states are converted to tensors,
ints and strings here (numpy's key array becomes a tensor), and the config is stored as a plain dict.

Two files per run. `last.pt` holds the full state below; `best.pt` holds the weights only (BEST_KEYS:
model, ema, epoch, step, best, config, num_classes), which is all that evaluation, `train.init_from` and a
KD teacher read. Both are written off the training loop: `snapshot` copies the state to host memory at the
end of an epoch and a `CheckpointWriter` thread writes it while the next epoch trains.

Layout of last.pt (a dict):
    model        unwrapped state dict (no DDP `module.` / compile `_orig_mod.` prefixes)
    ema          ModelEma state dict or None
    ema_updates  ModelEma warm-up step count
    optimizer, scheduler, scaler   their state dicts
    epoch        last completed epoch (0-based); resuming starts at epoch + 1
    step         global optimizer step count
    rng          see `rng_state()`
    early_stop   EarlyStopper state dict
    best         {"metric": name, "value": float | None, "epoch": int}
    config       `fastcifar.config.to_dict(cfg)`
    num_classes  int
    wall_s, ckpt_s, warmup_s, resumes   time so far (s) and restart count, carried across resumes
"""

from __future__ import annotations

import copy
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from fastcifar import atomic
from fastcifar.errors import FastcifarError

LAST = "last.pt"
BEST = "best.pt"
BEST_KEYS = ("model", "ema", "epoch", "step", "best", "config", "num_classes")  # what best.pt keeps of the state


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


def snapshot(obj):
    """A host-memory copy of a (nested) state: every tensor copied to the CPU, containers rebuilt.

    Training keeps mutating the live tensors (in place, on any device) while a writer thread pickles the copy,
    so tensors are always copied, also when they already live on the CPU. CUDA tensors go to pinned memory
    with non-blocking copies and one device sync at the end, instead of one sync per tensor.
    """
    pending: list[bool] = []
    out = _copy_tree(obj, pending)
    if pending:
        torch.cuda.synchronize()
    return out


def _copy_tree(obj, pending: list[bool]):
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "cpu":
            return obj.detach().clone()
        pending.append(True)
        host = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=obj.device.type == "cuda")
        return host.copy_(obj.detach(), non_blocking=True)
    if isinstance(obj, dict):
        return {k: _copy_tree(v, pending) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tree(v, pending) for v in obj)
    return copy.deepcopy(obj)  # ints, floats, strings, None: immutable or tiny


class CheckpointWriter:
    """Writes checkpoints on one background thread, one batch of files at a time, in order.

    `submit` first waits for the previous batch (so at most one write is in flight and files never go back in
    time), then returns at once. `join` waits for the current one; both raise a FastcifarError naming the file
    when a write failed (disk full, permissions): the atomic write has then left the previous file intact.
    The owner calls `join` before reading a file back and at exit (also when training failed).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: tuple[Path, BaseException] | None = None

    def submit(self, files: list[tuple[dict, Path]]) -> float:
        """Wait for the previous write, then write `files` ((state, path) pairs) in the background.

        Returns:
            Seconds this call blocked (the wait for the previous write).
        """
        blocked = self.join()
        self._thread = threading.Thread(target=self._write, args=(files,), name="fastcifar-checkpoint", daemon=False)
        self._thread.start()
        return blocked

    def join(self) -> float:
        """Wait for the write in flight; returns the seconds waited. Raises FastcifarError if it failed."""
        start = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        waited = time.perf_counter() - start
        if self._error is not None:
            path, error = self._error
            self._error = None
            reason = f"{error.strerror or error}" if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
            raise FastcifarError(f"Writing checkpoint '{path}' failed ({reason}), so training stopped; the previous "
                                 f"{path.name} is intact: free space (or fix the folder's permissions) and resume with "
                                 f"`fastcifar train --resume {path.parent}`.")
        return waited

    def close(self) -> None:
        """`join` on the way out of a failed run: the write in flight still lands; a write error is printed
        rather than raised, so it does not hide the error that ended the run (a clean exit has joined already)."""
        try:
            self.join()
        except FastcifarError as error:
            print(f"fastcifar: {error}", file=sys.stderr)

    def _write(self, files: list[tuple[dict, Path]]) -> None:
        for state, path in files:
            try:
                save_checkpoint(state, path)
            except BaseException as error:  # noqa: BLE001 - handed to the training thread by join()
                self._error = (Path(path), error)
                return


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
        raise FastcifarError(
            f"Checkpoint '{path}' cannot be read ({e.__class__.__name__}); "
            f"it is corrupt or not a fastcifar checkpoint, so train again or pick another file."
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise FastcifarError(
            f"'{path}' is not a fastcifar checkpoint (no 'model' entry); "
            f"give a run directory or a best.pt/last.pt file."
        )
    return state


def eval_weights(state: dict) -> dict:
    """The weights evaluation uses: the EMA copy when the run kept one, else the raw model."""
    return state.get("ema") or state["model"]  # ModelEma.state_dict() is a plain model state dict
