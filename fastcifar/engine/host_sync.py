"""Find the ops that would make the host wait for a CUDA device, by running the code on the CPU.

On a GPU the host queues work and runs ahead; a few ops stop it until the device has caught up
("host syncs"): reading a value (`.item()`, `float(t)`, `if t:`), ops whose output size depends on
the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, `bincount`, ...), device to
host copies (`.cpu()`, `.tolist()`, `.numpy()`) and tensors built from Python data
(`torch.tensor([...], device=...)`: a pageable host-to-device copy). The same calls happen on the
CPU, so a test can find them without a GPU:

    with HostSyncDetector() as detector:
        loss = train_one_step(...)
    assert not detector.events, detector.report()

Two modes watch the region: a `TorchDispatchMode` sees every aten op (after composite ops such as
`F.one_hot` or `allclose` decompose), and a `TorchFunctionMode` sees the Python-level calls that
never reach the dispatcher on a CPU tensor (`torch.tensor`, `.tolist()`, `.cpu()`, `.numpy()`).
Each finding names the op and the first stack frame inside `fastcifar` (or its loaders), the line
to fix.

Which tensors count. With the default `device=None` (or "cpu") every tensor stands for a device
tensor, except host data by construction: the outputs of ops drawn from an explicit CPU
`torch.Generator` (the trainer draws the multi-scale side that way, on the host, so every DDP rank
agrees without touching the device), and what is computed from such outputs alone. With
`device="cuda"` only tensors on that device type count, and CPU tensors are host data.

On a real GPU, `cuda_sync_errors()` is the ground truth: CUDA's own sync debug mode raises on
every synchronizing call inside the region.

Where CPU and CUDA differ, the detector errs on the strict side: the CPU kernels of a few composite
ops check their input with `.item()` where CUDA relies on a device assert (`F.one_hot` with
num_classes), and those are reported too; the project's rule is to avoid them. Not seen at all:
syncs inside the C++ kernel of another op on CUDA only, and costs such as a cudaMalloc; the CUDA
tests cover those.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

# aten ops (the .default overload) that always block the host on a CUDA tensor, and why.
_ALWAYS_SYNC = {
    "_local_scalar_dense": "reads a device value on the host (.item(), float(t), int(t), bool(t), `if t:`)",
    "nonzero": "output size depends on the data (nonzero / torch.where(cond) / argwhere)",
    "masked_select": "output size depends on the data (masked_select)",
    "_unique": "output size depends on the data (unique)",
    "_unique2": "output size depends on the data (unique)",
    "unique_dim": "output size depends on the data (unique)",
    "unique_consecutive": "output size depends on the data (unique_consecutive)",
    "unique_dim_consecutive": "output size depends on the data (unique_consecutive)",
    "bincount": "reads the largest value on the host to size the output (bincount)",
    "equal": "returns a Python bool (torch.equal)",
    "allclose": "returns a Python bool (torch.allclose)",
}
ALWAYS_SYNC = {getattr(aten, name).default: why for name, why in _ALWAYS_SYNC.items() if hasattr(aten, name)}
BOOL_INDEX_OPS = (aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default)
COPY_OPS = (aten._to_copy.default, aten.copy_.default)

# Python-level calls that turn host data into a tensor, or device data into host data.
FROM_PYTHON = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}
TO_HOST = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy", torch.Tensor.cpu: "cpu"}

_PROJECT_DIRS: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SyncEvent:
    """One host sync found in the watched region.

    op: the aten op or Python call (e.g. "aten.nonzero.default", "torch.tensor").
    reason: why it blocks the host on a CUDA device.
    site: "path:line in function" of the first frame inside fastcifar/ or its loaders
        (else the first frame outside torch and this module), the line to fix.
    """

    op: str
    reason: str
    site: str

    def __str__(self) -> str:
        return f"{self.op} at {self.site}: {self.reason}"


class HostSyncDetector:
    """Context manager recording every host sync of the code it wraps (see the module docstring).

    Args:
        device: the device type the step runs on. None / "cpu": every tensor is a device tensor
            except host data drawn from an explicit CPU generator; "cuda" (or "meta" in tests):
            only tensors on that device type count.
        allow: (op, site substring) pairs to ignore, each a documented exception; e.g.
            ("aten._local_scalar_dense.default", "fastcifar/x.py:f"). Empty by default: nothing in the
            training step or the eval pass needs one.

    Attributes:
        events: the SyncEvents found, in order.
    """

    def __init__(self, device: str | torch.device | None = None, allow: tuple[tuple[str, str], ...] = ()):
        self.device_type = torch.device(device).type if device is not None else "cpu"
        self.allow = tuple(allow)
        self.events: list[SyncEvent] = []
        self._host = WeakIdKeyDictionary()  # CPU tensors that are host data by construction
        self._modes = (_FunctionWatch(self), _DispatchWatch(self))
        self._quiet = 0  # > 0 while a Python-level finding's own aten ops run (one finding per call)

    def __enter__(self) -> HostSyncDetector:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def report(self) -> str:
        """The findings, one per line (empty string when there are none)."""
        return "\n".join(str(e) for e in self.events)

    # ------------------------------------------------------------------ used by the two modes

    def is_device_tensor(self, t) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        if self.device_type != "cpu":
            return t.device.type == self.device_type
        return t.device.type == "cpu" and t not in self._host

    def record(self, op: str, reason: str) -> None:
        if self._quiet:
            return
        site = _call_site()
        if any(op == a_op and a_site in site for a_op, a_site in self.allow):
            return
        self.events.append(SyncEvent(op, reason, site))

    def mark_host(self, outputs) -> None:
        for t in tree_flatten(outputs)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._host[t] = True


class _DispatchWatch(TorchDispatchMode):
    """Checks every aten op of the region against the sync rules."""

    def __init__(self, detector: HostSyncDetector):
        super().__init__()
        self.d = detector

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        reason = self._sync_reason(func, args, kwargs, tensors)
        if reason:
            self.d.record(str(func), reason)
        out = func(*args, **kwargs)
        generator = kwargs.get("generator")
        from_host = generator is not None and generator.device.type == "cpu"
        if from_host or (
            tensors and not any(self.d.is_device_tensor(t) for t in tensors) and self.d.device_type == "cpu"
        ):
            self.d.mark_host(out)  # drawn on the host, or computed from host data alone
        return out

    def _sync_reason(self, func, args, kwargs, tensors) -> str | None:
        on_device = any(self.d.is_device_tensor(t) for t in tensors)
        if func in ALWAYS_SYNC:
            return ALWAYS_SYNC[func] if on_device else None
        if func in BOOL_INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if on_device and any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                return "boolean-mask indexing runs a nonzero (data-dependent size); use torch.where / masked_fill"
            return None
        if func is aten.repeat_interleave.Tensor:
            if on_device and kwargs.get("output_size", args[2] if len(args) > 2 else None) is None:
                return "repeat_interleave without output_size sums the repeats on the host"
            return None
        if func is aten.multinomial.default:
            # CUDA validates the probabilities with .item() when drawing without replacement or a single
            # sample (Distributions.cpp, the 'fast path'); with replacement and n > 1 it stays on the device.
            n, replacement = args[1], args[2] if len(args) > 2 else kwargs.get("replacement", False)
            if on_device and (not replacement or n == 1):
                return "multinomial without replacement (or one sample) checks its probabilities on the host"
            return None
        if func is aten.histc.default:
            low = args[2] if len(args) > 2 else kwargs.get("min", 0)
            high = args[3] if len(args) > 3 else kwargs.get("max", 0)
            if on_device and low == high:
                return "histc with min == max reads the data's range on the host; pass the range"
            return None
        if func in COPY_OPS:
            return self._copy_reason(func, args, kwargs)
        return None

    def _copy_reason(self, func, args, kwargs) -> str | None:
        src = args[0] if func is aten._to_copy.default else args[1]
        if func is aten._to_copy.default:
            target = kwargs.get("device") or src.device
            non_blocking = kwargs.get("non_blocking", False)
        else:
            target, non_blocking = args[0].device, (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        target = torch.device(target)
        if target.type == src.device.type:
            return None
        if self.d.is_device_tensor(src) and target.type == "cpu":
            return "device-to-host copy: the host waits for the device; keep the value on the device"
        if target.type == self.d.device_type and src.device.type == "cpu" and not (non_blocking and src.is_pinned()):
            return (
                "host-to-device copy from pageable memory (or blocking): build the tensor once per device and cache it"
            )
        return None


class _FunctionWatch(TorchFunctionMode):
    """Python-level calls the dispatcher never sees on a CPU tensor."""

    def __init__(self, detector: HostSyncDetector):
        super().__init__()
        self.d = detector

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = None
        if func in FROM_PYTHON:
            data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else kwargs.get("data"))
            if not isinstance(data, torch.Tensor):
                name = "Tensor.new_tensor" if func is torch.Tensor.new_tensor else f"torch.{func.__name__}"
                reason = (
                    "from Python data: a blocking host-to-device copy inside the step; build constants "
                    "once per device (cached), or use torch.full / arange / scatter_"
                )
        elif func in TO_HOST and args and self.d.is_device_tensor(args[0]):
            name = f"Tensor.{TO_HOST[func]}"
            reason = "copies device data to the host, which waits for the device"
        if reason is None:
            return func(*args, **kwargs)
        self.d.record(name, reason)
        self.d._quiet += 1  # its own aten ops (lift_fresh, _to_copy) are the same finding
        try:
            return func(*args, **kwargs)
        finally:
            self.d._quiet -= 1


def _project_dirs() -> tuple[str, ...]:
    global _PROJECT_DIRS
    if _PROJECT_DIRS is None:
        import fastcifar
        import fastcifar.loaders

        dirs = {str(Path(fastcifar.__file__).parent), str(Path(fastcifar.loaders.__file__).parent)}
        _PROJECT_DIRS = tuple(sorted(dirs))
    return _PROJECT_DIRS


def _call_site() -> str:
    """The first frame inside the project (not this module), else the first outside torch: "path:line in f"."""
    this = __file__
    torch_dir = str(Path(torch.__file__).parent)
    frame, fallback = sys._getframe(1), None
    while frame is not None:
        path = frame.f_code.co_filename
        if path != this:
            where = f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"
            if path.startswith(_project_dirs()):
                return _short(where)
            if fallback is None and not path.startswith(torch_dir) and not path.startswith("<"):
                fallback = where
        frame = frame.f_back
    return _short(fallback or "unknown")


def _short(where: str) -> str:
    """Paths relative to the project's parent folder (fastcifar/..., loaders/...) when they are inside it."""
    for d in _project_dirs():
        parent = str(Path(d).parent) + "/"
        if where.startswith(parent):
            return where[len(parent) :]
    return where


@contextmanager
def cuda_sync_errors(enabled: bool = True) -> Iterator[None]:
    """Run the region under `torch.cuda.set_sync_debug_mode("error")`: every synchronizing CUDA call raises.

    A no-op without CUDA (or with enabled=False); the previous mode is restored on exit.
    """
    if not (enabled and torch.cuda.is_available()):
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)
