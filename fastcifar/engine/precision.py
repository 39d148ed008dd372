"""Mixed precision and device waits, shared by the trainer, evaluation and the benchmark."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from fastcifar.engine.amp_modes import AMP_MODES

# train.amp -> autocast dtype (None = full float32)
AMP_DTYPES: dict[str, torch.dtype | None] = {mode: getattr(torch, name) if name else None
                                             for mode, name in AMP_MODES.items()}


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """The autocast context for `train.amp` on `device` (bf16 autocast runs on CPU too); a no-op for "none"."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def input_dtype(amp: str) -> torch.dtype:
    """dtype GpuAugment should emit: the AMP dtype (autocast would cast to it anyway, half the bytes), else float32."""
    return AMP_DTYPES[amp] or torch.float32


def synchronize(device: torch.device | str) -> None:
    """Block until `device` finished its queued work, so host timers measure it (CPU work is already done)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
