"""Models: any timm backbone (pooled features) + one of our heads, and weight loading that fails kindly.

`build_model(cfg.model, num_classes, image_size, scales)` creates the timm model with `num_classes=0` as the
backbone (forward gives pooled features [B, F]) and puts a `fastcifar.heads` head on top. The result is a
`Classifier`: forward(x [B, 3, H, W] float, any memory format) -> logits [B, C] float.

Sizes the timm way: a fixed-size model (timm's `fixed_input_size`: ViT, DeiT, Swin, ...) is built with
`img_size=image_size` (exactly timm's `resolve_model_input_args` rule), and with `dynamic_img_size=True` when
`augment.scales` asks for other sides; every side is then tried once on a 1-image batch, so a model that cannot
run at a size fails at build time with one sentence instead of a traceback in the first step.

Weights come from four places, each loaded by timm itself, so its checkpoint filters run (position-embedding
resampling, classifier reset, input-channel adaptation):

- `model.pretrained: true`: the name's weights: timm's hub for a registry name, the repo for `hf-hub:ORG/NAME`,
  the folder for `local-dir:PATH` (offline, the error names the HF cache, HF_HUB_OFFLINE=1 and local files);
- `model.pretrained: /path/file.safetensors|.pth`: a timm-format file through
  `pretrained_cfg_overlay=dict(file=PATH)`; a fastcifar checkpoint (`backbone.*` keys) is converted to timm
  keys first and passed as `pretrained_cfg_overlay=dict(state_dict=...)`. Only our own CIFAR stem is placed by
  hand (timm's stock model has a 7x7 conv1 where a cifar-stem run saved a 3x3 one);
- `load_weights(model, state_dict, source)`: a whole fastcifar model (trainer's `init_from`, the teacher),
  which must have the same class count and head.
"""

from __future__ import annotations

import difflib
import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

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
_SOURCES = ("hf-hub", "local-dir")  # timm's model-name prefixes


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

    # timm's optimizer helpers (param_groups_weight_decay / _layer_decay) read these two methods by name.

    def no_weight_decay(self) -> set[str]:
        """The backbone's own no-decay names (ViT `pos_embed`, `cls_token`, ...), as names in this module."""
        names = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{n}" for n in (names() if callable(names) else ())}

    def group_matcher(self, coarse: bool = False):
        """Layer ids for layer-wise lr decay: the backbone's timm `group_matcher` (stem first, blocks in depth
        order), and the head one layer above the backbone's last, where timm puts an unmatched classifier."""
        from timm.models import group_parameters

        if hasattr(self.backbone, "group_matcher"):
            layers = group_parameters(self.backbone, self.backbone.group_matcher(coarse=coarse), reverse=True)
        else:  # timm's own fallback: consecutive parameters in groups of 12
            from timm.optim._param_groups import auto_group_layers

            layers = auto_group_layers(self.backbone)
        top = max(layers.values(), default=-1) + 1

        def layer_of(name: str) -> int:
            return layers.get(name[len("backbone.") :], top) if name.startswith("backbone.") else top

        return layer_of


# ---------------------------------------------------------------------------- building


def build_model(
    cfg: ModelConfig, num_classes: int, image_size: int | None = None, scales: Sequence[int] = ()
) -> Classifier:
    """Create the model `cfg` describes, on the CPU in float32 (the trainer moves it).

    Args:
        cfg: the `model` section (name, pretrained, cifar_stem, head, embedding_dim, margin_s, drop rates, kwargs).
        num_classes: classes of the dataset/label set (10, 20 or 100).
        image_size: side of the inputs in px (`augment.image_size`); None keeps timm's default size and skips
            the size check.
        scales: other sides the model will see (`augment.scales`, a teacher's size), px.

    Returns:
        A `Classifier`. Raises FastcifarError for an unknown timm name, hub files that cannot be fetched, an
        unreadable or unfitting weights file, a size the model cannot run at, or `cifar_stem` on an architecture
        we cannot adapt.
    """
    _check_model_name(cfg.name)
    others = sorted({int(s) for s in scales} - {image_size}) if image_size is not None else []
    pretrained, overlay, stem = _weights_overlay(cfg)
    backbone = create_backbone(
        cfg, 0, image_size, dynamic=bool(others), pretrained=pretrained, overlay=overlay, placed=set(stem)
    )
    if cfg.cifar_stem:
        apply_cifar_stem(backbone, cfg.name, stem, loaded=pretrained)
    if image_size is not None:
        _check_sizes(backbone, cfg.name, image_size, others)
    width = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # what num_classes=0 outputs
    head = build_head(
        cfg.head, width, num_classes, embedding_dim=cfg.embedding_dim, s=cfg.margin_s, drop_rate=cfg.drop_rate
    )
    margin_s = cfg.margin_s if cfg.head in MARGIN_HEADS else None
    return Classifier(backbone, head, num_classes, margin_s)


def _check_model_name(name: str) -> None:
    import timm
    from timm.models import parse_model_name

    try:
        source, ident = parse_model_name(name)
    except ValueError as e:
        raise FastcifarError(
            f"model.name '{name}' is not a timm model name ({e}); "
            f"write hf-hub:ORG/NAME or local-dir:PATH for those sources."
        ) from None
    if source == "local-dir":
        if not (Path(ident).expanduser() / "config.json").is_file():
            raise FastcifarError(
                f"model.name '{name}': '{ident}' has no config.json; "
                f"give a folder written by timm's save_for_hf or `fastcifar export`."
            )
        return
    if source is not None or timm.is_model(name):
        return
    match = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(match)}?"
        if match
        else "`python -c \"import timm; print(timm.list_models('resnet*'))\"` lists names."
    )
    raise FastcifarError(f"model.name '{name}' is not a timm model; {hint}")


def model_kwargs(cfg: ModelConfig, image_size: int | None, dynamic: bool) -> dict[str, Any]:
    """`timm.create_model` keyword arguments for `cfg` at `image_size` (None: timm's default size).

    `img_size` goes exactly where timm's `resolve_model_input_args` puts it (fixed-size models and models whose
    saved config carries it), and `dynamic_img_size=True` with it when the model will see other sides too.
    """
    kwargs = {**cfg.kwargs, "drop_path_rate": cfg.drop_path_rate or None}  # None: left to the model (timm prunes it)
    if image_size is None or "img_size" in cfg.kwargs:
        return kwargs
    from timm.models import resolve_model_input_args

    with _hub_errors(cfg.name, _needs_hub(cfg.name, False)):
        resolved = resolve_model_input_args(cfg.name, args={"img_size": image_size})
    if resolved.get("img_size") is not None:
        kwargs["img_size"] = image_size
        if dynamic:
            kwargs.setdefault("dynamic_img_size", True)
    return kwargs


def create_backbone(
    cfg: ModelConfig,
    num_classes: int = 0,
    image_size: int | None = None,
    dynamic: bool = False,
    pretrained: bool = False,
    overlay: dict | None = None,
    placed: set[str] = frozenset(),
) -> nn.Module:
    """`timm.create_model(cfg.name, ...)` with our sizes and weights, timm's load report turned into our messages.

    Args:
        num_classes: 0 for the pooled-features backbone; C for the plain timm classifier `fastcifar export` writes.
        pretrained, overlay: as `_weights_overlay` returns them.
        placed: keys held back from timm that the caller loads itself (not reported missing).
    """
    import timm

    kwargs = model_kwargs(cfg, image_size, dynamic)
    what = f"weights '{cfg.pretrained}'" if isinstance(cfg.pretrained, str) else f"'{cfg.name}'"
    remote = _needs_hub(cfg.name, pretrained and not overlay)
    with _hub_errors(cfg.name, remote), _timm_load_report() as report:
        try:
            try:
                model = timm.create_model(
                    cfg.name, pretrained=pretrained, pretrained_cfg_overlay=overlay, num_classes=num_classes, **kwargs
                )
            except TypeError as e:  # this family has no dynamic_img_size: build it fixed, the size check decides
                if "dynamic_img_size" not in str(e) or "dynamic_img_size" in cfg.kwargs:
                    raise
                kwargs.pop("dynamic_img_size")
                model = timm.create_model(
                    cfg.name, pretrained=pretrained, pretrained_cfg_overlay=overlay, num_classes=num_classes, **kwargs
                )
        except TypeError as e:
            raise FastcifarError(
                f"timm could not build '{cfg.name}' with {sorted(kwargs)} ({e}); "
                f"fix model.kwargs or pick another model."
            ) from None
        except RuntimeError as e:  # torch's load_state_dict (a tensor of another shape), or a folder without weights
            if "No suitable checkpoints found" in str(e):
                raise FastcifarError(
                    f"'{cfg.name}' holds no weights file (model.safetensors, pytorch_model.bin, ...); copy the weights "
                    f"into it, or set model.pretrained: false to take its architecture only."
                ) from None
            if "Error(s) in loading state_dict" not in str(e):
                raise
            first = next(
                (line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0]
            )
            raise FastcifarError(
                f"The {what} do not fit '{cfg.name}' ({first.rstrip('.')}); set model.name, model.cifar_stem "
                f"and model.kwargs to those of the model that saved them."
            ) from None
    if overlay and "state_dict" in overlay:  # timm keeps the overlay in pretrained_cfg: do not hold a second copy
        for attr in ("pretrained_cfg", "default_cfg"):
            cfg_dict = getattr(model, attr, None)
            if isinstance(cfg_dict, dict):
                cfg_dict.pop("state_dict", None)
    if pretrained:
        report["missing"] = [k for k in report["missing"] if k not in placed]
        _check_load_report(report, model, what, cfg.name)
    return model


def _weights_overlay(cfg: ModelConfig) -> tuple[bool, dict | None, dict[str, Tensor]]:
    """(pretrained, pretrained_cfg_overlay, stem tensors we place ourselves) for `cfg.pretrained`."""
    if cfg.pretrained is True:
        from timm.models import is_model_pretrained, parse_model_name

        if parse_model_name(cfg.name)[0] is None and not is_model_pretrained(cfg.name):
            raise FastcifarError(
                f"timm has no pretrained weights for '{cfg.name}'; pick a tagged name such as resnet18.a1_in1k, "
                f"or set model.pretrained: false."
            )
        return True, None, {}
    if not (isinstance(cfg.pretrained, str) and cfg.pretrained):
        return False, None, {}
    path = Path(cfg.pretrained).expanduser()
    if path.is_dir() and (path / "best.pt").is_file():  # a fastcifar run folder: its best checkpoint
        path = path / "best.pt"
    if path.is_dir():
        raise FastcifarError(
            f"model.pretrained '{path}' is a folder; a timm folder is a model name (model.name: local-dir:{path}, "
            f"model.pretrained: true), else give the weights file inside it."
        )
    # `source: None` makes timm read `file`/`state_dict` even for hf-hub:/local-dir: names
    # (their own source wins otherwise)
    if not _is_fastcifar_file(path):
        return True, {"file": str(path), "source": None}, {}
    state = strip_wrapper_prefixes(read_weights(path))
    state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}  # timm keys
    stem = {}
    if (
        cfg.cifar_stem and "conv1.weight" in state and state["conv1.weight"].shape[-1] == 3
    ):  # a cifar-stem ResNet's 3x3 conv1
        stem["conv1.weight"] = state.pop("conv1.weight")
    return True, {"state_dict": state, "source": None}, stem


def _is_fastcifar_file(path: Path) -> bool:
    """Whether a weights file holds a fastcifar model (`backbone.*` keys), reading only its key names."""
    if not path.is_file():
        raise FastcifarError(f"Weights file '{path}' does not exist; give the path to a .safetensors or .pth file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
        else:
            try:  # mmap: tensors stay on disk, only the key names are read
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save format cannot be mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
            keys = list(_as_state_dict(obj, path))
    except FastcifarError:
        raise
    except Exception as e:
        raise FastcifarError(
            f"Could not read weights file '{path}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"give a .safetensors file or a torch.save'd state dict."
        ) from None
    return any(k.startswith("backbone.") for k in strip_wrapper_prefixes(dict.fromkeys(keys)))


@contextmanager
def _timm_load_report() -> Iterator[dict[str, list[str]]]:
    """Collect the missing / unexpected keys timm's `load_pretrained` logs (it does not return them)."""
    logger = logging.getLogger("timm.models._builder")
    report: dict[str, list[str]] = {"missing": [], "unexpected": []}

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.match(r"(Missing|Unexpected) keys \((.*)\) (?:discovered|found)", record.getMessage(), re.S)
            if found:
                report[found[1].lower()] = [k for k in found[2].split(", ") if k]
            elif record.levelno >= logging.WARNING:
                warnings.warn(f"timm: {record.getMessage()}", stacklevel=4)

    handler, level, propagate = Keep(logging.INFO), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # reported once, in our words
    try:
        yield report
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _check_load_report(report: dict[str, list[str]], model: nn.Module, what: str, name: str) -> None:
    own = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]  # BatchNorm fills that one itself
    missing, unexpected = report["missing"], report["unexpected"]
    if own and len(missing) >= len(own):
        raise FastcifarError(
            f"The {what} fit none of '{name}'s {len(own)} tensors; "
            f"set model.name to the architecture they were saved from."
        )
    if missing or unexpected:
        warnings.warn(
            f"{what}: loaded {len(own) - len(missing)} of {len(own)} backbone tensors; "
            f"{len(missing)} missing (kept at init: {', '.join(missing[:3]) or '-'}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3]) or '-'})",
            stacklevel=3,
        )


def _needs_hub(name: str, hub_weights: bool) -> bool:
    """Whether building `name` reads the Hugging Face hub: an hf-hub: name, or a registry name's hub weights."""
    from timm.models import parse_model_name

    source = parse_model_name(name)[0]
    return source == "hf-hub" or (source is None and hub_weights)


@contextmanager
def _hub_errors(name: str, remote: bool = True) -> Iterator[None]:
    """Turn a failed Hugging Face hub fetch (no network, offline mode, no cached copy) into one sentence;
    without `remote` (local files only) a read error becomes one sentence about those files."""
    try:
        yield
    except FastcifarError:
        raise
    except Exception as e:  # the hub raises OSError, httpx and requests errors alike; all mean "nothing reached us"
        module = type(e).__module__.split(".")[0]
        if module not in ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib") and not isinstance(
            e, (OSError, ConnectionError)
        ):
            raise
        if not remote:
            reason = (str(e).strip().splitlines() or [""])[0].rstrip(".")
            raise FastcifarError(
                f"Could not read the files of '{name}' ({type(e).__name__}: {reason}); "
                f"check the folder or file it names."
            ) from None
        from huggingface_hub import constants

        raise FastcifarError(
            f"Could not fetch '{name}' from the Hugging Face hub (no network? {type(e).__name__}); "
            f"fetch it once where there is network into the HF cache ({constants.HF_HUB_CACHE}, copy that folder over) "
            f"and set HF_HUB_OFFLINE=1 to use it, or use local files: model.pretrained: "
            f"/path/to/weights.safetensors, or a saved folder as model.name: local-dir:PATH."
        ) from None


def _check_sizes(backbone: nn.Module, name: str, image_size: int, others: Sequence[int]) -> None:
    """Run the backbone once per side on one zero image (eval mode, no grad: no RNG draw, no BN update)."""
    was_training = backbone.training
    backbone.eval()
    try:
        for side in (image_size, *others):
            try:
                with torch.inference_mode():
                    backbone(torch.zeros(1, 3, side, side))
            except Exception as e:
                default = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1]
                if side == image_size:
                    fix = (
                        f"set augment.image_size to a side it supports (timm's default for it is {default} px) "
                        f"or pick another model"
                    )
                else:
                    how = (
                        "with dynamic_img_size"
                        if getattr(backbone, "dynamic_img_size", False)
                        else "and this family cannot change size"
                    )
                    fix = (
                        f"drop {side} from augment.scales (it was built for {image_size} px {how}) "
                        f"or pick another model"
                    )
                reason = (str(e).strip().splitlines() or [""])[0].rstrip(".")
                raise FastcifarError(
                    f"Model '{name}' cannot run on {side} px images ({type(e).__name__}: {reason}); {fix}."
                ) from None
    finally:
        backbone.train(was_training)


# ---------------------------------------------------------------------------- CIFAR stem


def apply_cifar_stem(
    backbone: nn.Module, name: str = "", stem: dict[str, Tensor] | None = None, loaded: bool = False
) -> None:
    """Make the stem keep 32 px images at full resolution into the first stage (in place).

    - timm ResNet family (resnet*, resnext*, seresnet*, wide_resnet*): a 7x7/2 `conv1` is replaced by a
      3x3/1 conv with the same output width (fresh, or `stem["conv1.weight"]` from a cifar-stem checkpoint);
      a deep 3x3 stem (resnet*d, resnet*t) keeps its weights and its first conv gets stride 1; `maxpool`
      becomes Identity. Stage 1 sees H x W.
    - timm EfficientNet / MobileNetV3: `conv_stem` is already 3x3; its stride becomes 1 (weights kept).
    Anything else raises FastcifarError: we would rather refuse than silently train a different net.
    Plain timm cannot rebuild these stems (no timm argument makes a stride-1 stem), so `fastcifar export`
    refuses cifar-stem runs.

    Args:
        stem: tensors for the new stem taken out of a fastcifar checkpoint (timm could not load them into its
            stock 7x7 conv1); loaded into the replacement conv.
        loaded: pretrained weights were loaded; a 7x7 conv1 they filled is dropped, with a warning.
    """
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    stem = dict(stem or {})
    if isinstance(backbone, ResNet):
        conv = backbone.conv1
        if isinstance(conv, nn.Sequential):  # deep stem: conv3x3/2, conv3x3, conv3x3
            conv[0].stride = (1, 1)
        else:
            backbone.conv1 = nn.Conv2d(
                conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False
            )
            weight = stem.pop("conv1.weight", None)
            if weight is not None and weight.shape == backbone.conv1.weight.shape:
                with torch.no_grad():
                    backbone.conv1.weight.copy_(weight)
            elif loaded:
                warnings.warn(
                    f"model.cifar_stem: '{name}' gets a fresh 3x3 stride-1 conv1; "
                    f"the pretrained 7x7 conv1 is not used.",
                    stacklevel=3,
                )
        backbone.maxpool = nn.Identity()
    elif isinstance(backbone, (EfficientNet, MobileNetV3)):
        backbone.conv_stem.stride = (1, 1)
    else:
        raise FastcifarError(
            f"model.cifar_stem is not supported for '{name}' ({type(backbone).__name__}); "
            f"use a ResNet/EfficientNet/MobileNetV3 name, or set model.cifar_stem: false and upsample with "
            f"augment.image_size: 224."
        )
    if stem:
        raise FastcifarError(
            f"The stem tensors {sorted(stem)} of model.pretrained do not fit '{name}'s CIFAR stem; "
            f"set model.name to the architecture they were saved from."
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
        raise FastcifarError(
            f"Could not read weights file '{path}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"give a .safetensors file or a torch.save'd state dict."
        ) from None
    return _as_state_dict(obj, path)


def _as_state_dict(obj: Any, source: Any) -> dict[str, Tensor]:
    if isinstance(obj, dict) and obj and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                return _as_state_dict(obj[key], source)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise FastcifarError(
            f"'{source}' holds no state dict of tensors "
            f"(top-level keys: {list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__}); "
            f"save model.state_dict(), or a dict with it under 'model'."
        )
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
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


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
            f"Checkpoint {source} has {found[1]} classes but this model has {classes}; "
            f"set data.dataset/data.label to the dataset it was trained on, "
            f"or keep only its backbone with model.pretrained: {source} instead of loading it whole."
        )
    kind = getattr(target, "head_kind", None)
    if found and kind and found[0] != ("margin" if kind in MARGIN_HEADS else "linear"):
        what = {
            "timm": "a bare timm classifier",
            "linear": "a linear head",
            "margin": "a margin (arcface/cosface) head",
        }[found[0]]
        raise FastcifarError(
            f"Checkpoint {source} has {what} but this model has model.head: {kind}; set model.head to match it, "
            f"or keep only its backbone with model.pretrained: {source}."
        )
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        example = (mismatched or missing or unexpected)[0]
        raise FastcifarError(
            f"Checkpoint {source} does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} of another shape, e.g. '{example}'); "
            f"set model.name/model.cifar_stem/model.embedding_dim/model.kwargs "
            f"(and augment.image_size for fixed-size models) as in the run that saved it, "
            f"or take its backbone with model.pretrained: {source}."
        )
    target.load_state_dict(state, strict=True)
