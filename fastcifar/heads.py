"""Classifier heads that sit on a backbone's pooled features.

Two kinds, named as in `model.head`:

- `linear`: dropout + one Linear layer; logits are unbounded scores.
- `arcface` / `cosface` (a `MarginHead`): Linear to an embedding, BatchNorm1d, L2-norm, then the cosine
  against L2-normed class weights, times a scale `s`. The forward pass returns `s * cos(theta)` with NO
  margin: the margin belongs to the training loss (`fastcifar.losses`), and evaluation is a plain argmax
  over the raw cosines, as in the seed experiments (ArcFace s=8, m=0.35 in training, raw cosine at eval).

Both heads keep their class weight matrix under a fixed key (`CLASS_WEIGHT_KEY`), so a checkpoint's class
count can be read from its state dict without building the model (see `fastcifar.models.load_weights`).
`fastcifar export` writes a margin head's state dict under these same names (`margin_head.safetensors` beside the
timm backbone); a linear head becomes the timm model's own classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# State-dict key (relative to the head) of the [num_classes, D] class weight matrix, per head kind.
CLASS_WEIGHT_KEY = {"linear": "fc.weight", "arcface": "weight", "cosface": "weight"}
MARGIN_HEADS = ("arcface", "cosface")


class LinearHead(nn.Module):
    """Dropout + Linear: pooled features [B, F] float -> logits [B, C] float."""

    kind = "linear"

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.drop(features))  # [B, C]

    def embed(self, features: Tensor) -> Tensor:
        """The representation the classifier sees: the pooled features themselves, [B, F]."""
        return features


class MarginHead(nn.Module):
    """Cosine classifier for ArcFace / CosFace training.

    features [B, F] -> Linear(F, E, no bias: BN follows) -> BatchNorm1d(E) -> L2-norm -> unit embedding [B, E];
    logits = s * embedding @ normalize(W).T, W [C, E], so every logit lies in [-s, s].

    The cosine is computed in float32 with autocast off: under bf16 autocast a normalized dot product can
    overshoot 1 by ~1e-2, and ArcFace's acos/sqrt of the target cosine needs it inside [-1, 1]. The cost is
    one [B, E] x [E, C] matmul, negligible next to the backbone.

    Args:
        in_features: width F of the backbone's pooled features.
        num_classes: C.
        embedding_dim: E.
        s: logit scale (the ArcFace/CosFace `s`).
        kind: "arcface" or "cosface"; the head is the same, only the loss differs.
        drop_rate: dropout on the pooled features before the embedding layer.
    """

    def __init__(self, in_features: int, num_classes: int, embedding_dim: int, s: float, kind: str = "arcface",
                 drop_rate: float = 0.0):
        super().__init__()
        if kind not in MARGIN_HEADS:
            raise ValueError(f"MarginHead kind must be one of {MARGIN_HEADS}, got {kind!r}")
        self.kind = kind
        self.s = float(s)
        self.drop = nn.Dropout(drop_rate)
        self.proj = nn.Linear(in_features, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))  # [C, E] class centres
        nn.init.xavier_uniform_(self.weight)

    def embed(self, features: Tensor) -> Tensor:
        """Unit-norm embedding [B, E] float32 of pooled features [B, F]."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = self.bn(self.proj(self.drop(features.float())))  # [B, E]
            return F.normalize(x, dim=1)

    def forward(self, features: Tensor) -> Tensor:
        embedding = self.embed(features)  # [B, E] float32, unit rows
        with torch.autocast(device_type=features.device.type, enabled=False):
            cos = F.linear(embedding, F.normalize(self.weight.float(), dim=1))  # [B, C] in [-1, 1]
        return self.s * cos


def build_head(
    kind: str, in_features: int, num_classes: int, *, embedding_dim: int = 512, s: float = 8.0, drop_rate: float = 0.0
) -> nn.Module:
    """The head named `kind` (linear | arcface | cosface) for `in_features`-wide pooled features."""
    if kind == "linear":
        return LinearHead(in_features, num_classes, drop_rate)
    if kind in MARGIN_HEADS:
        return MarginHead(in_features, num_classes, embedding_dim, s, kind=kind, drop_rate=drop_rate)
    raise ValueError(f"unknown head kind {kind!r}; expected linear, arcface or cosface")
