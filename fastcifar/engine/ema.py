"""Exponential moving average of a model's weights, updated once per optimizer step."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fastcifar.models import unwrap_model


class ModelEma:
    """ema <- decay * ema + (1 - decay) * model, for every parameter and floating-point buffer.

    Integer buffers (BatchNorm's num_batches_tracked) are copied. The average lives in `.module`, a deep
    copy of the unwrapped model, in eval mode, without grads, on the model's device and dtype; evaluate it
    like the model itself. torch.compile (`_orig_mod`) and DDP (`.module`) wrappers are unwrapped, both
    when copying and on every `update`, so the trainer can pass whatever it trains.

    Warm-up (timm's): step n uses min(decay, (1 + n) / (10 + n)), so early steps forget the initial
    weights quickly; without it, decay 0.9998 over 3,500 steps would leave half of the average at the
    weights the run started from.

    Args:
        model: the model being trained (possibly wrapped).
        decay: per-step decay in [0, 1); e.g. 0.999 averages over roughly the last 1000 steps.
        warmup: ramp the decay up over the first steps (see above).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0  # steps averaged so far (drives the warm-up; saved in the state dict)
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self._float_params, self._float_buffers, self._other_buffers = self._split(self.module)

    @staticmethod
    def _split(module: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params = [p for p in module.parameters()]
        buffers = [b for b in module.buffers()]
        floats = [b for b in buffers if b.is_floating_point()]
        others = [b for b in buffers if not b.is_floating_point()]
        return params, floats, others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of `model` (same architecture, possibly wrapped) into the average."""
        params, floats, others = self._split(unwrap_model(model))
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        self.updates += 1
        weight = 1.0 - decay  # lerp(ema, new, 1 - d) = d * ema + (1 - d) * new
        ema = self._float_params + self._float_buffers
        new = [p.detach() for p in params] + floats
        if len(ema) != len(new):
            raise ValueError(
                "ModelEma.update got a model with a different set of tensors than the one it was built from"
            )
        if ema:
            torch._foreach_lerp_(ema, new, weight)
        for mine, theirs in zip(self._other_buffers, others):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights as a plain model state dict (loadable with `fastcifar.models.load_weights`);
        the warm-up step count travels separately (`updates`), so this stays a model state dict."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, Tensor], updates: int | None = None) -> None:
        self.module.load_state_dict(state_dict)
        if updates is not None:
            self.updates = int(updates)
