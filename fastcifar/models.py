"""Models: any timm backbone (pooled features) + one of our heads, and weight loading that fails kindly.

`build_model(cfg.model, num_classes)` creates `timm.create_model(name, num_classes=0)` as the backbone
(forward gives pooled features [B, F]) and puts a `fastcifar.heads` head on top. The result is a
`Classifier`: forward(x [B, 3, H, W] float, any memory format) -> logits [B, C] float.

Weights come from three places, each with its own failure message:

- `model.pretrained: true`: timm's hub download (needs network; offline it says how to use a local file);
- `model.pretrained: /path/file.safetensors|.pth`: backbone tensors only, the classifier is dropped, so
  ImageNet weights (1000 classes) or another fastcifar run's weights can start a CIFAR run;
- `load_weights(model, state_dict, source)`: a whole fastcifar model (trainer's `init_from`, the teacher),
  which must have the same class count and head.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastcifar.config import ModelConfig
from fastcifar.errors import FastcifarError
from fastcifar.heads import CLASS_WEIGHT_KEY, MARGIN_HEADS, build_head

# Wrappers that prefix state-dict keys: torch.compile (`_orig_mod.`), DDP / DataParallel (`module.`).
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Containers a checkpoint file may hold its weights under, tried in this order: a fastcifar checkpoint's
# EMA weights when it kept them (what its evaluation used, see engine/checkpoint.py), else its raw model.
_CONTAINER_KEYS = ("ema", "model", "state_dict", "model_state_dict")


class Classifier(nn.Module):
    """A timm backbone giving pooled features, then a head.

    Attributes:
        backbone: timm model created with num_classes=0; forward(x) -> pooled features [B, F].
        head: `LinearHead` or `MarginHead`.
        head_kind: "linear" | "arcface" | "cosface" (the loss reads it).
        margin_s: the margin heads' logit scale s (logits = s * cos); None for the linear head.
        num_classes: C.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, margin_s: float | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_kind: str = head.kind
        self.margin_s = margin_s
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, H, W] float (normalized) -> logits [B, C]; margin heads give s * cos(theta), no margin."""
        return self.head(self.backbone(x))

    def embed(self, x: Tensor) -> Tensor:
        """The head's representation [B, D]: unit-norm embedding for margin heads, pooled features for linear."""
        return self.head.embed(self.backbone(x))


# ---------------------------------------------------------------------------- building


def build_model(cfg: ModelConfig, num_classes: int) -> Classifier:
    """Create the model `cfg` describes, on the CPU in float32 (the trainer moves it).

    Args:
        cfg: the `model` section (name, pretrained, cifar_stem, head, embedding_dim, margin_s, drop_rate).
        num_classes: classes of the dataset/label set (10, 20 or 100).

    Returns:
        A `Classifier`. Raises FastcifarError for an unknown timm name, hub weights that cannot be
        downloaded, an unreadable or unfitting weights file, or `cifar_stem` on an architecture we cannot adapt.
    """
    _check_model_name(cfg.name)
    hub = cfg.pretrained is True
    backbone = _create_backbone(cfg.name, hub)
    if cfg.cifar_stem:
        apply_cifar_stem(backbone, cfg.name)
    if isinstance(cfg.pretrained, str) and cfg.pretrained:
        load_backbone_file(backbone, cfg.pretrained, cfg.name)
    width = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # what num_classes=0 outputs
    head = build_head(cfg.head, width, num_classes, embedding_dim=cfg.embedding_dim, s=cfg.margin_s, drop_rate=cfg.drop_rate)
    margin_s = cfg.margin_s if cfg.head in MARGIN_HEADS else None
    return Classifier(backbone, head, num_classes, margin_s)


def _check_model_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    match = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(match)}?" if match else "`python -c \"import timm; print(timm.list_models('resnet*'))\"` lists names."
    raise FastcifarError(f"model.name '{name}' is not a timm model; {hint}")


def _create_backbone(name: str, hub: bool) -> nn.Module:
    """timm model with its classifier removed; with `hub`, ImageNet weights from timm's hub."""
    import timm
    from timm.models import is_model_pretrained

    if hub and not is_model_pretrained(name):
        raise FastcifarError(f"timm has no pretrained weights for '{name}'; pick a tagged name such as resnet18.a1_in1k, or set model.pretrained: false.")
    if not hub:
        return timm.create_model(name, pretrained=False, num_classes=0)
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as e:  # the hub raises OSError, httpx and requests errors alike; all mean "no weights reached us"
        raise FastcifarError(
            f"Could not download timm's pretrained weights for '{name}' (no network? {type(e).__name__}); download the "
            f"weights where there is network and pass the local file with model.pretrained: /path/to/weights.safetensors (or .pth)."
        ) from None


# ---------------------------------------------------------------------------- CIFAR stem


def apply_cifar_stem(backbone: nn.Module, name: str = "") -> None:
    """Make the stem keep 32 px images at full resolution into the first stage (in place).

    - timm ResNet family (resnet*, resnext*, seresnet*, wide_resnet*): a 7x7/2 `conv1` is replaced by a
      fresh 3x3/1 conv with the same output width; a deep 3x3 stem (resnet*d, resnet*t) keeps its
      weights and its first conv gets stride 1; `maxpool` becomes Identity. Stage 1 sees H x W.
    - timm EfficientNet / MobileNetV3: `conv_stem` is already 3x3; its stride becomes 1 (weights kept).
    Anything else raises FastcifarError: we would rather refuse than silently train a different net.
    """
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    if isinstance(backbone, ResNet):
        stem = backbone.conv1
        if isinstance(stem, nn.Sequential):  # deep stem: conv3x3/2, conv3x3, conv3x3
            stem[0].stride = (1, 1)
        else:
            backbone.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        backbone.maxpool = nn.Identity()
        return
    if isinstance(backbone, (EfficientNet, MobileNetV3)):
        backbone.conv_stem.stride = (1, 1)
        return
    raise FastcifarError(
        f"model.cifar_stem is not supported for '{name}' ({type(backbone).__name__}); use a ResNet/EfficientNet/MobileNetV3 "
        f"name, or set model.cifar_stem: false and upsample with augment.image_size: 224."
    )


# ---------------------------------------------------------------------------- weight files


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a `.safetensors` file or a `torch.save` file (read with weights_only=True), on the CPU.

    A checkpoint dict holding its weights under `ema` (when not None), `model`, `state_dict` or
    `model_state_dict` is unwrapped, in that order.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FastcifarError(f"Weights file '{path}' does not exist; give the path to a .safetensors or .pth file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FastcifarError(f"Could not read weights file '{path}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                             f"give a .safetensors file or a torch.save'd state dict.") from None
    return _as_state_dict(obj, path)


def _as_state_dict(obj: Any, source: Any) -> dict[str, Tensor]:
    if isinstance(obj, dict) and obj and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                return _as_state_dict(obj[key], source)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise FastcifarError(f"'{source}' holds no state dict of tensors (top-level keys: {list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__}); "
                             f"save model.state_dict(), or a dict with it under 'model'.")
    return obj


def strip_wrapper_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop leading `_orig_mod.` (torch.compile) and `module.` (DDP) from every key, repeatedly."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the timm classifier(s) the file may carry (`fc.`, `head.fc.`, ...)."""
    names = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_backbone_file(backbone: nn.Module, path: str | Path, name: str = "") -> dict[str, list[str]]:
    """Load a weights file's backbone tensors into `backbone` (a timm model with num_classes=0), in place.

    Accepts a timm/ImageNet state dict (its classifier, e.g. `fc.*`, is dropped) or a fastcifar model's
    (only `backbone.*` is taken). Tensors whose shape differs (e.g. a 7x7 ImageNet conv1 into a 3x3
    CIFAR stem) stay at their fresh init. A partial fit warns with counts; no fit at all is an error.

    Returns:
        {"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]} key lists.
    """
    state = strip_wrapper_prefixes(read_weights(path))
    if any(k.startswith("backbone.") for k in state):  # a fastcifar Classifier: keep its backbone only
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    else:
        drop = _classifier_prefixes(backbone)
        state = {k: v for k, v in state.items() if not k.startswith(drop)}
    own = backbone.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = {
        "loaded": sorted(fits),
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(k for k in state if k not in own),
        "mismatched": sorted(k for k in state if k in own and own[k].shape != state[k].shape),
    }
    if not fits:
        raise FastcifarError(f"Weights file '{path}' fits none of '{name}'s {len(own)} backbone tensors ({len(state)} in the file); "
                             f"set model.name to the architecture the file was saved from.")
    backbone.load_state_dict(fits, strict=False)
    if report["missing"] or report["unexpected"] or report["mismatched"]:
        warnings.warn(
            f"model.pretrained '{path}': loaded {len(fits)} of {len(own)} backbone tensors; {len(report['missing'])} missing, "
            f"{len(report['unexpected'])} unexpected, {len(report['mismatched'])} of another shape (kept at init: "
            f"{', '.join(report['mismatched'][:3]) or '-'})",
            stacklevel=2,
        )
    return report


# ---------------------------------------------------------------------------- whole-model weights


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile (`_orig_mod`) and DDP / DataParallel (`.module`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def checkpoint_head(state_dict: dict[str, Tensor]) -> tuple[str, int] | None:
    """(head family, class count) read from a state dict's class weight matrix, or None if it has none.

    Family is "linear" or "margin" for fastcifar models, "timm" for a bare timm classifier (`fc.weight`, ...).
    """
    state = strip_wrapper_prefixes(state_dict)
    if any(k.startswith("backbone.") for k in state):  # a fastcifar Classifier
        for family, kind in (("linear", "linear"), ("margin", "arcface")):
            weight = state.get(f"head.{CLASS_WEIGHT_KEY[kind]}")
            if weight is not None and weight.dim() == 2:
                return family, weight.shape[0]
        return None
    for key in ("fc.weight", "classifier.weight", "head.weight", "head.fc.weight"):  # timm's classifier names
        if key in state and state[key].dim() == 2:
            return "timm", state[key].shape[0]
    return None


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Load a whole fastcifar model's weights (init_from, teacher), strictly, with errors a user can act on.

    Args:
        model: a `Classifier`, possibly wrapped by torch.compile / DDP.
        state_dict: its tensors; `_orig_mod.` / `module.` key prefixes are removed first.
        source: where they came from (a path or run dir), quoted in the error messages.

    Raises:
        FastcifarError: the checkpoint's class count differs from the model's (the classic 1000-vs-100
        pitfall), its head kind differs, or its tensors do not fit the architecture.
    """
    target = unwrap_model(model)
    state = strip_wrapper_prefixes(state_dict)
    found = checkpoint_head(state)
    classes = getattr(target, "num_classes", None)
    if found and classes is not None and found[1] != classes:
        raise FastcifarError(
            f"Checkpoint {source} has {found[1]} classes but this model has {classes}; set data.dataset/data.label to the "
            f"dataset it was trained on, or keep only its backbone with model.pretrained: {source} instead of loading it whole."
        )
    kind = getattr(target, "head_kind", None)
    if found and kind and found[0] != ("margin" if kind in MARGIN_HEADS else "linear"):
        what = {"timm": "a bare timm classifier", "linear": "a linear head", "margin": "a margin (arcface/cosface) head"}[found[0]]
        raise FastcifarError(f"Checkpoint {source} has {what} but this model has model.head: {kind}; set model.head to match it, "
                             f"or keep only its backbone with model.pretrained: {source}.")
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        example = (mismatched or missing or unexpected)[0]
        raise FastcifarError(
            f"Checkpoint {source} does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} of another shape, e.g. '{example}'); set model.name/model.cifar_stem/model.embedding_dim as in the run that saved it."
        )
    target.load_state_dict(state, strict=True)
