"""The one place a run's parts are assembled, so the trainer, the benchmark, evaluation, the KD teacher and the
config tests cannot drift apart.

    set_backend_flags()                       cuDNN autotuning + TF32 matmuls
    train_input(cfg, info, device, ...)       training loader + the GpuAugment that follows it
    eval_augment(cfg, info)                   resize + normalize for evaluation
    build_model_on(cfg, num_classes, device)  model on the device, in the configured memory format
    ema_of(model, cfg)                        the weight average when train.ema_decay > 0
    compile_model(model, cfg, graphs)         torch.compile with static shapes, one graph per input shape
    optimizer_and_scaler(model, cfg, device)  the optimizer and its GradScaler
    stepper(cfg, augment, model, ...)         optimizer, scaler, schedule, objective: the per-batch step
    model_from_checkpoint(state, ...)         a finished run's evaluation weights in a fresh model (eval, teacher)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fastcifar.config import Config
from fastcifar.engine.checkpoint import eval_weights
from fastcifar.engine.precision import autocast, input_dtype
from fastcifar.errors import FastcifarError

# torch.compile backend of every compiled model. The tests that count graphs swap in "aot_eager" (same dynamo
# tracing and guards, no inductor code generation: seconds instead of minutes on a CPU).
COMPILE_BACKEND = "inductor"
DYNAMO_RECOMPILE_LIMIT = 8  # torch._dynamo.config.recompile_limit's default: graphs per module before it gives up


def set_backend_flags() -> None:
    """cuDNN autotuning and TF32 matmuls, set the same way on every device (trainer and benchmark alike).

    One rule rather than "on CUDA only", so a CPU benchmark measures the trainer's settings too. cuDNN is CUDA
    only; "high" float32 matmul precision means TF32 on Ampere+ GPUs, and lets oneDNN use TF32 on the few CPUs
    that have it (on the 2-core EPYC this project tests on, CPU results are bit-identical either way, and the
    golden runs were recorded with it set). Autotuning suits fastcifar because training shapes are static
    (drop_last, padded eval batches, one graph per multi-scale side).
    """
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls / convs on Ampere and newer


# ---------------------------------------------------------------------------- data side


def train_input(cfg: Config, info, device: torch.device, rank: int = 0, world_size: int = 1,
                indices: np.ndarray | None = None):
    """The training loader of `cfg.data.loader` and the GpuAugment that completes its batches.

    Args:
        cfg: the run config.
        info: `fastcifar.engine.inputs.DataInfo` of the dataset (mean/std on the 0-255 scale, num_classes).
        device: where batches are delivered.
        rank, world_size: this process's shard.
        indices: int64 [M] training subset of the train split (the rest is the val split); None = all.

    Returns:
        (loader, augment): `augment.train_batch(images, labels)` turns a loader batch into the model input
        [B, 3, S, S] channels_last in the AMP dtype; ops a native ffcv/dali pipeline already ran are switched off.
    """
    from fastcifar.augment import GpuAugment
    from fastcifar.loaders import build_loader, remaining_augment

    loader = build_loader(cfg, "train", train=True, device=device, rank=rank, world_size=world_size, indices=indices)
    augment = GpuAugment(remaining_augment(cfg.augment, loader), info.mean, info.std, info.num_classes,
                         per_image_ops=not loader.per_image_ops_done, out_dtype=input_dtype(cfg.train.amp),
                         seed=cfg.train.seed)  # alternating flips are drawn from the seed
    return loader, augment


def eval_augment(cfg: Config, info):
    """GpuAugment whose `eval_batch` resizes to `augment.image_size` and normalizes in the AMP dtype (no randomness)."""
    from fastcifar.augment import GpuAugment

    return GpuAugment(cfg.augment, info.mean, info.std, info.num_classes, out_dtype=input_dtype(cfg.train.amp))


# ---------------------------------------------------------------------------- model side


def build_model_on(cfg: Config, num_classes: int, device: torch.device, pretrained: bool = True,
                   extra_sizes: Sequence[int] = ()) -> nn.Module:
    """`fastcifar.models.build_model` at the run's sizes, moved to `device`, channels_last when `train.channels_last`.

    Args:
        pretrained: False when a checkpoint overwrites every weight anyway (resume, init_from, eval, teacher):
            hub or file weights are then not fetched (works offline and after the weights file moved).
        extra_sizes: sides the model must also run at besides `augment.image_size` / `augment.scales`, px
            (a distillation teacher scores the student's batch at `distill.teacher_image_size`).
    """
    from fastcifar.models import build_model

    model_cfg = cfg.model if pretrained else dataclasses.replace(cfg.model, pretrained=False)
    model = build_model(model_cfg, num_classes, cfg.augment.image_size, [*cfg.augment.scales, *extra_sizes])
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    return model.to(device, memory_format=memory_format)


def ema_of(model: nn.Module, cfg: Config):
    """`ModelEma` of `model` at `train.ema_decay`, or None when it is 0; build it before compiling (a plain copy)."""
    from fastcifar.engine.ema import ModelEma

    return ModelEma(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None


def graph_count(cfg: Config, eval_compiled: bool) -> int:
    """How many static graphs a compiled model of this run needs: one per input shape and mode it meets.

    Training: one per side (`augment.scales`, else `image_size`) at the training batch size, twice that when
    `data.drop_last` is off (the last, smaller batch). Evaluation through the compiled model: one more (eval mode,
    `eval_batch_size` rows, doubled by TTA; the last batch is padded to that size, see `step.eval_pass`).
    """
    sides = len(set(cfg.augment.scales)) if cfg.augment.scales else 1
    return sides * (1 if cfg.data.drop_last else 2) + (1 if eval_compiled else 0)


def compile_model(model: nn.Module, cfg: Config, graphs: int) -> None:
    """torch.compile `model` in place (Module.compile: state-dict keys stay plain) with static shapes.

    `dynamic=False`: every input shape gets its own specialised graph and no shape ever becomes symbolic
    (automatic dynamic shapes would turn the second multi-scale side or a partial batch into a slower symbolic
    graph). Dynamo's recompile limit per module (8 by default) is set to exactly `graphs`, and reaching it fails
    loudly (the trainer turns it into `recompile_error`'s sentence) instead of silently running the rest of the
    run eagerly: a shape nobody planned for is a bug to see, not a slowdown to guess at. Dynamo's caches are reset
    first, so a benchmark cell or a second run in one process compiles from scratch and its warm-up counts that.

    Args:
        model: the plain module (compile first, DDP-wrap second: PyTorch's "Where to apply torch.compile?").
        cfg: train.compile_mode is used.
        graphs: static graphs the run will need (`graph_count`).
    """
    import torch._dynamo

    torch._dynamo.reset()
    config = torch._dynamo.config
    config.recompile_limit = graphs
    config.fail_on_recompile_limit_hit = True  # never a silent fall back to eager for the rest of the run
    model.compile(mode=cfg.train.compile_mode, dynamic=False, backend=COMPILE_BACKEND)


def graph_note(graphs: int) -> str | None:
    """The one line a run prints when it needs more static graphs than dynamo allows by default, else None."""
    if graphs <= DYNAMO_RECOMPILE_LIMIT:
        return None
    return (f"compile   {graphs} static graphs (one per multi-scale side and batch shape, one for evaluation): "
            f"torch._dynamo's recompile limit raised from {DYNAMO_RECOMPILE_LIMIT} to {graphs}; "
            "each compiles on first use.")


def recompile_error() -> FastcifarError:
    """The one sentence for a run whose compiled model met more input shapes than `graph_count` planned."""
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    return FastcifarError(
        f"torch.compile reached its limit of {limit} static graphs for this model: an input shape or mode that the "
        "run did not plan for appeared (see fastcifar.engine.build.graph_count); set train.compile: false to run "
        "eagerly, and report the config."
    )


def optimizer_and_scaler(model: nn.Module, cfg: Config, device: torch.device,
                         kernels_for: torch.device | str | None = None):
    """(optimizer per `cfg.optim`, GradScaler enabled for fp16 only: bf16 and fp32 need no loss scaling).

    Args:
        kernels_for: the device whose optimizer kernels to use (fused on CUDA, foreach elsewhere); None = `device`.
            The host-sync test builds CUDA's fused kernels on the CPU, because that is the step it stands in for.
    """
    from fastcifar.engine.optim import build_optimizer

    optimizer = build_optimizer(model, cfg.optim, device if kernels_for is None else kernels_for)
    return optimizer, torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")


def stepper(cfg: Config, augment, model: nn.Module, ema, teacher: nn.Module | None, steps_per_epoch: int,
            device: torch.device, train_model: nn.Module | None = None,
            kernels_for: torch.device | str | None = None):
    """The run's optimization (optimizer + GradScaler, per-step LR schedule, loss) as the per-batch `Stepper`.

    Args:
        cfg: the run config.
        augment: the GpuAugment of `train_input`.
        model: the plain (possibly compiled) module, on `device`; the optimizer and the EMA follow it.
        ema: `ema_of(model, cfg)`.
        teacher: the frozen distillation teacher (`distill.teacher`), else None.
        steps_per_epoch: optimizer steps per epoch (len of the training loader), for the schedule.
        device: where the run trains (GradScaler and autocast device type).
        train_model: what runs the forward (the DDP wrapper); None = `model`.
        kernels_for: see `optimizer_and_scaler`.

    Returns:
        `fastcifar.engine.step.Stepper`; its optimizer, scaler and scheduler are the ones to checkpoint.
    """
    from fastcifar.engine.optim import build_scheduler
    from fastcifar.engine.step import Stepper, make_objective
    from fastcifar.losses import build_criterion

    optimizer, scaler = optimizer_and_scaler(model, cfg, device, kernels_for)
    return Stepper(
        augment=augment, model=model, train_model=model if train_model is None else train_model, ema=ema,
        objective=make_objective(build_criterion(cfg), teacher, cfg.distill), optimizer=optimizer, scaler=scaler,
        scheduler=build_scheduler(optimizer, cfg, steps_per_epoch), autocast=autocast(device, cfg.train.amp),
        grad_clip=cfg.optim.grad_clip, scales=list(cfg.augment.scales), seed=cfg.train.seed,
    )


def load_run_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load a checkpoint's evaluation weights (EMA when the run kept one) into `model`, strictly (`train.init_from`)."""
    from fastcifar.models import load_weights

    load_weights(model, eval_weights(state), source)


def model_from_checkpoint(state: dict, source: str, device: torch.device, channels_last: bool | None = None,
                          num_classes: int | None = None, extra_sizes: Sequence[int] = ()) -> nn.Module:
    """Rebuild a finished run's model from its checkpoint's saved config and load its evaluation weights.

    Args:
        state: a best.pt / last.pt dict (`config`, `num_classes`, `model`, `ema`).
        source: the checkpoint's path, quoted in errors.
        device: where the model goes.
        channels_last: memory format; None = as the run trained.
        num_classes: the class count the caller needs; a checkpoint with another count is refused.
        extra_sizes: see `build_model_on`.

    Returns:
        The model in eval mode on `device`.
    """
    from fastcifar.config import from_dict

    cfg = from_dict(state["config"])
    if num_classes is not None and int(state["num_classes"]) != num_classes:
        raise FastcifarError(f"Checkpoint '{source}' predicts {state['num_classes']} classes but {num_classes} are "
                             "needed; use a run trained on the same dataset and data.label.")
    if channels_last is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, channels_last=channels_last))
    model = build_model_on(cfg, int(state["num_classes"]), torch.device("cpu"), pretrained=False,
                           extra_sizes=extra_sizes)
    load_run_weights(model, state, source)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    return model.to(device, memory_format=memory_format).eval()
