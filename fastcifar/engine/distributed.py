"""Data-parallel plumbing: one code path for a single process and for `torchrun --nproc_per_node N`.

With no torchrun environment (WORLD_SIZE unset or 1) no process group is created and every helper is a no-op,
so the trainer never branches on "distributed or not".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fastcifar.errors import FastcifarError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that prints and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1, option: str = "train.device") -> torch.device:
    """`auto` -> cuda when available (the local rank's GPU under torchrun) else cpu; `cuda`, `cuda:N`, `cpu` as given.

    `option` names the setting in error messages (`train.device`, `--device`). The chosen GPU becomes the
    current device, so libraries that allocate on "the" GPU (ffcv's streams, DALI) use the same one.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FastcifarError(f"{option} '{name}' is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise FastcifarError(f"{option} '{name}' is not supported; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FastcifarError(f"{option} is '{name}' but no CUDA GPU is visible; use cpu (or auto).")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif world_size > 1 and device.index != local_rank:
            raise FastcifarError(
                f"{option} '{name}' would put every torchrun process on one GPU; "
                f"use cuda (each rank takes its local GPU)."
            )
        if device.index >= torch.cuda.device_count():
            raise FastcifarError(
                f"{option} '{name}' asks for GPU {device.index} but {torch.cuda.device_count()} are visible; "
                f"pick cuda:0..{torch.cuda.device_count() - 1}."
            )
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun), join the process group, pick the device.

    Backend: nccl for CUDA, gloo for CPU. Without those variables: rank 0 of 1 and no process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, info.local_rank, info.world_size)
    if info.active and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)
    return info, device


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP-wrap `model` when running on several processes; the model itself otherwise.

    Compile first, wrap second (PyTorch "Where to apply torch.compile?": compile the inner module passed
    to DDP, since dynamo does not trace the DDP wrapper well).
    """
    if not info.active:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    # gradient_as_bucket_view: gradients are views into DDP's all-reduce buckets, not separate copies (one
    # model's worth of memory and a copy per step saved; the optimizer reads the same values).
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def sync_buffers(*modules: nn.Module | None) -> None:
    """Broadcast rank 0's buffers (BatchNorm running statistics, counters) to every rank, in place.

    Parameters are identical on every rank (DDP all-reduces their gradients), but each rank's BatchNorm
    statistics saw its own batches since DDP last broadcast them at the start of a forward, and an EMA copy
    averages those. Rank 0's buffers are what its checkpoint stores, and DDP already treats them as the
    reference (`broadcast_buffers`), so broadcasting them (rather than averaging, which would change what rank 0
    saves) makes every rank evaluate exactly the model in best.pt / last.pt. A no-op in a single process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for module in modules:
        if module is None:
            continue
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place and returned (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]
    return obj


def gather_object(obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` in a single process)."""
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup(barrier: bool = True) -> None:
    """Leave the process group (no-op without one); after a barrier unless a rank failed (it would hang)."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
