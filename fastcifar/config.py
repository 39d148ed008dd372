"""Typed run configuration: nested dataclasses, YAML in, validated, `--set a.b=value` overrides.

Every field has a default and a comment with its unit, so a YAML file only states what differs.
Unknown or misspelled keys are errors that name the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from fastcifar.data.cifar import DATASETS
from fastcifar.data.manifest import DALI_ENCODINGS
from fastcifar.engine.amp_modes import AMP_MODES
from fastcifar.errors import FastcifarError
from fastcifar.loaders.registry import LOADERS

STORED_SIDE = 32  # px of every stored CIFAR image


@dataclass
class DataConfig:
    dataset: str = "cifar100"  # cifar10 | cifar100
    root: str | None = None  # data root; None = $FASTCIFAR_ROOT or ~/.cache/fastcifar
    label: str = "fine"  # cifar100 only: fine (100 classes) | coarse (20 superclasses)
    loader: str = "gpu"  # a name in fastcifar.loaders.LOADERS: gpu | torch | ffcv | dali
    batch_size: int = 256  # images per step, per process
    eval_batch_size: int = 1024  # images per eval step
    drop_last: bool = True  # static shapes for torch.compile; the last partial train batch is dropped
    workers: int = 4  # CPU workers (torch), threads (ffcv, dali)
    prefetch: int = 2  # batches prepared ahead per worker / pipeline
    val_split: int = 0  # images held out of train for model selection (0 = select on test)
    native_augment: bool = False  # ffcv/dali: use the library's own crop/flip instead of GpuAugment
    ffcv_os_cache: bool = True  # ffcv: read the .beton through the OS page cache
    ffcv_order: str = "random"  # ffcv: random | quasi_random | sequential
    dali_encoding: str = "raw"  # dali: shard encoding to read (raw | png | jpeg)


@dataclass
class AugmentConfig:
    image_size: int = 32  # side the model sees, px; resized on the device from the stored 32 px
    scales: list[int] = field(default_factory=list)  # multi-scale training: each batch gets a side drawn
    # from this list, px (evaluation stays at image_size); empty = always image_size
    crop_padding: int = 0  # random crop after padding by this many px (a translate); 0 = off
    pad_mode: str = "reflect"  # reflect | constant (zeros)
    hflip: float = 0.0  # probability of a horizontal mirror, per image
    hflip_mode: str = "random"  # random | alternate (airbench: each image mirrored in every other epoch, which
    # half first decided by (train.seed, the image's pixels); needs hflip: 0.5)
    vflip: float = 0.0  # probability of a vertical mirror, per image
    cutout: float = 0.0  # probability of one cutout hole, per image
    cutout_size: int = 8  # hole side at the stored 32 px resolution, px
    jitter: float = 0.0  # probability of color jitter, per image
    brightness: float = 0.4  # jitter strength: factor drawn from [1-b, 1+b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0  # fraction of a full turn, in [0, 0.5]
    ssr: float = 0.0  # probability of shift-scale-rotate, per image
    shift_limit: float = 0.0625  # fraction of the image side
    scale_limit: float = 0.1  # scale drawn from [1-s, 1+s]
    rotate_limit: float = 45.0  # degrees
    policy: str = "none"  # none | randaugment | trivialaugment | autoaugment (CIFAR-10 policy): torchvision's
    # auto-augment ops drawn per image on the device, at the stored 32 px, after crop/flip
    policy_ops: int = 2  # randaugment: ops per image (N)
    policy_magnitude: int = 9  # randaugment: magnitude bin (M) of torchvision's 31, 0..30
    policy_magnitude_std: float = 0.0  # randaugment: timm's Gaussian noise on M per op, bins; .inf = uniform in [0, M]
    rrc_scale: list[float] = field(default_factory=list)  # RandomResizedCrop: area fraction [lo, hi] of the
    # stored image, cut and resized to image_size per image on the device; empty = off
    rrc_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # RandomResizedCrop: aspect ratio [lo, hi]
    one_of: bool = False  # albumentations OneOf: each image gets exactly one op of
    # (ssr, cutout, jitter, hflip, vflip), picked with weights = their probabilities
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for mixup; 0 = off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for cutmix; 0 = off
    mix_prob: float = 1.0  # probability a batch is mixed (when either alpha > 0)
    mix_switch_prob: float = 0.5  # when both are on: probability of cutmix over mixup
    mix_mode: str = "batch"  # batch: one draw per batch | elem: each image its own coin, lambda and mixup/cutmix
    normalize: bool = True  # subtract train mean, divide by train std (from the manifest)


def _check_augment(config: "Config") -> None:
    """The policy, RandomResizedCrop, alternating-flip and mix-mode fields: values their types cannot catch."""
    aug = config.augment

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise FastcifarError(message)

    need(1 <= aug.policy_ops <= 16, f"augment.policy_ops is RandAugment's ops per image, 1..16; got {aug.policy_ops}.")
    need(0 <= aug.policy_magnitude <= 30,
         f"augment.policy_magnitude is a bin of torchvision's 31 (0..30), got {aug.policy_magnitude}.")
    need(aug.policy_magnitude_std >= 0,  # also refuses NaN
         f"augment.policy_magnitude_std must be >= 0 bins (.inf = uniform in [0, M]), got {aug.policy_magnitude_std}.")
    scale, ratio = aug.rrc_scale, aug.rrc_ratio
    need(not scale or (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1),
         f"augment.rrc_scale must be [] (off) or [lo, hi] with 0 < lo <= hi <= 1 (area fractions), got {scale}.")
    need(len(ratio) == 2 and 0 < ratio[0] <= ratio[1] and all(map(math.isfinite, ratio)),
         f"augment.rrc_ratio must be [lo, hi] with 0 < lo <= hi (width / height), got {ratio}.")
    if aug.hflip_mode == "alternate":
        need(aug.hflip == 0.5, "augment.hflip_mode: alternate mirrors each image in every other epoch, i.e. half "
             f"the time; set augment.hflip: 0.5 (got {aug.hflip}).")
        need(not aug.one_of, "augment.hflip_mode: alternate cannot be one of augment.one_of's choices; "
             "set augment.one_of: false or augment.hflip_mode: random.")
        need(not config.data.native_augment, "augment.hflip_mode: alternate needs the stored image to decide its "
             "flip, which a native ffcv/dali pipeline has already cropped; set data.native_augment: false.")


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any timm model name, or hf-hub:ORG/NAME / local-dir:PATH (timm's sources)
    pretrained: Union[bool, str] = False  # true = the name's weights (timm hub, hf-hub:, local-dir:), or a
    # path to a weights file (timm format or a fastcifar checkpoint), loaded through timm's filters
    cifar_stem: bool = False  # 3x3 stride-1 stem and no max-pool, for 32 px inputs
    head: str = "linear"  # linear | arcface | cosface
    embedding_dim: int = 512  # margin heads: embedding width
    margin_s: float = 8.0  # margin heads: logit scale
    margin_m: float = 0.35  # margin heads: margin (radians for arcface, cosine for cosface)
    easy_margin: bool = False  # arcface: apply the margin only where cos > 0 (else the insightface continuation)
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth (timm's --drop-path); 0 = off
    kwargs: dict[str, Any] = field(default_factory=dict)  # more timm.create_model arguments (timm's --model-kwargs)


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3  # peak learning rate, at batch_size
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    decay_norm_and_bias: bool = False  # false = no weight decay on biases and norm weights
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    layer_decay: float = 0.0  # layer-wise lr decay (timm's --layer-decay): lr * decay ** (depth below the head);
    # 0 = off. Groups come from the backbone's timm group_matcher


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | onecycle | multistep | constant; stepped per iteration
    warmup_epochs: float = 0.0  # linear warmup from 0, epochs
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1  # multistep factor
    pct_start: float = 0.25  # onecycle: fraction of the run spent rising


@dataclass
class EarlyStopConfig:
    metric: str = "val_acc"  # any key of an epoch record: val_acc, val_loss, test_acc, ...
    mode: str = "auto"  # auto (min for *_loss metrics, else max) | max | min
    patience: int = 0  # epochs without improvement before stopping; 0 = off
    min_delta: float = 0.0  # smallest change that counts as an improvement


@dataclass
class DistillConfig:
    teacher: str | None = None  # run dir or checkpoint of the teacher; None = no distillation
    teacher_image_size: int = 224  # the teacher sees the same batch resized to this, px
    temperature: float = 4.0
    alpha: float = 0.7  # loss = alpha * KL(T) * T^2 + (1 - alpha) * CE


@dataclass
class TrainConfig:
    epochs: int = 30
    seed: int = 0
    device: str = "auto"  # auto | cuda | cpu | cuda:N
    amp: str = "bf16"  # bf16 | fp16 | none
    compile: bool = True  # torch.compile the model
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune
    channels_last: bool = True  # the model's weight layout; batches from GpuAugment are channels_last always
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # exponential moving average of weights per step; 0 = off
    tta: str = "none"  # none | flip (mean of the softmaxes of the image and its mirror) | flip_translate
    # (airbench: also 1 px translates and their mirrors); true / false in older files mean flip / none
    select_metric: str = "auto"  # metric for `best`: auto = val_acc if val_split else test_acc
    init_from: str | None = None  # load weights only (run dir or checkpoint)
    eval_every: int = 1  # epochs between evaluations
    save_every: int = 1  # epochs between writes of last.pt (always after the last epoch); best.pt on every improvement
    out_dir: str = "runs"  # run folders are created under this


@dataclass
class Config:
    name: str = "unnamed"
    description: str = ""  # one line: what the run reproduces or should reach
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# Lists kept elsewhere are read from their one source (none of these imports torch).
CHOICES = {
    "data.dataset": tuple(DATASETS),
    "data.label": ("fine", "coarse"),
    "data.loader": tuple(LOADERS),
    "data.ffcv_order": ("random", "quasi_random", "sequential"),
    "data.dali_encoding": DALI_ENCODINGS,
    "augment.pad_mode": ("reflect", "constant"),
    "augment.policy": ("none", "randaugment", "trivialaugment", "autoaugment"),
    "augment.hflip_mode": ("random", "alternate"),
    "augment.mix_mode": ("batch", "elem"),
    "model.head": ("linear", "arcface", "cosface"),
    "optim.name": ("sgd", "adam", "adamw"),
    "schedule.name": ("cosine", "onecycle", "multistep", "constant"),
    "early_stop.mode": ("auto", "max", "min"),
    "train.amp": tuple(AMP_MODES),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune"),
    "train.tta": ("none", "flip", "flip_translate"),
}


# ---------------------------------------------------------------------------- building


def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'?" if match else f"valid keys: {', '.join(valid)}"


def _check_value(where: str, value: Any, hint: Any) -> Any:
    """Return `value` converted to the annotated type, or raise a FastcifarError naming `where`."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(where, value, option)
            except FastcifarError as e:
                errors.append(str(e))
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise FastcifarError(f"{where} must be {names}, got {value!r}.")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise FastcifarError(f"{where} must be a mapping of names to values, got {value!r}; "
                                 "write it as {key: value}.")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise FastcifarError(f"{where} must be a list, got {value!r}; write it as [a, b].")
        return [_check_value(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise FastcifarError(f"{where} must be true or false, got {value!r}.")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FastcifarError(f"{where} must be an integer, got {value!r}.")
    if hint in (float, str) and not isinstance(value, hint):
        raise FastcifarError(f"{where} must be a {hint.__name__}, got {value!r}.")
    choices = CHOICES.get(where)
    if choices and value not in choices:
        raise FastcifarError(f"{where} must be one of {', '.join(choices)}, got {value!r}; "
                             f"{_closest(str(value), list(choices))}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise FastcifarError(f"'{prefix or 'config'}' must be a mapping of keys to values, got {data!r}.")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            valid_full = [f"{prefix}.{v}" if prefix else v for v in valid]
            raise FastcifarError(f"Unknown config key '{where}': {_closest(where, valid_full)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, where)
        else:
            kwargs[key] = _check_value(where, value, hint)
    return cls(**kwargs)


# dotted key -> (lowest, highest, which bounds are allowed): True = both, False = neither, or "[)" / "(]" for one.
# None = unbounded on that side. Checked once here, so a bad value fails before any data is read (and with
# --dump-config), not as a NaN or a traceback mid-run; NaN fails every bound.
RANGES = {
    "data.batch_size": (1, None, True),
    "data.eval_batch_size": (1, None, True),
    "data.workers": (0, None, True),
    "data.prefetch": (1, None, True),
    "data.val_split": (0, None, True),
    "augment.crop_padding": (0, STORED_SIDE - 1, True),  # px; the pad is at most one image side less one
    **{f"augment.{name}": (0.0, 1.0, True) for name in  # probabilities, per image (per batch: mix_prob)
       ("hflip", "vflip", "cutout", "jitter", "ssr", "mix_prob", "mix_switch_prob")},
    **{f"augment.{name}": (0.0, None, True) for name in
       ("brightness", "contrast", "saturation", "shift_limit", "rotate_limit", "mixup_alpha", "cutmix_alpha")},
    "augment.hue": (0.0, 0.5, True),  # a fraction of a full turn
    "augment.scale_limit": (0.0, 1.0, "[)"),  # scale drawn from [1-s, 1+s] must stay positive
    "model.embedding_dim": (1, None, True),
    "model.margin_s": (0.0, None, False),
    "model.drop_rate": (0.0, 1.0, True),
    "model.drop_path_rate": (0.0, 1.0, True),
    "optim.lr": (0.0, None, False),
    "optim.weight_decay": (0.0, None, True),
    "optim.momentum": (0.0, 1.0, True),
    "optim.grad_clip": (0.0, None, True),
    "optim.layer_decay": (0.0, 1.0, True),
    "schedule.warmup_epochs": (0.0, None, True),
    "schedule.min_lr_ratio": (0.0, 1.0, True),
    "schedule.gamma": (0.0, None, False),
    "schedule.pct_start": (0.0, 1.0, "[)"),  # onecycle must leave some of the run to come down (engine/optim.py)
    "train.epochs": (1, None, True),
    "train.seed": (0, 2**32 - 1, True),
    "train.label_smoothing": (0.0, 1.0, True),
    "train.ema_decay": (0.0, 0.999999, True),
    "train.eval_every": (1, None, True),
    "train.save_every": (1, None, True),
    "early_stop.patience": (0, None, True),
    "early_stop.min_delta": (0.0, None, True),
    "distill.teacher_image_size": (1, None, True),
    "distill.temperature": (0.0, None, False),
    "distill.alpha": (0.0, 1.0, True),
}

# Metrics a run records per epoch, which train.select_metric and early_stop.metric may name; val_* only
# when data.val_split holds images out (the trainer records what its eval splits give).
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "test_loss", "test_acc", "test_top5")


def _check_ranges(config: Config) -> None:
    for dotted, (low, high, inclusive) in RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if isinstance(inclusive, bool):
            low_in = high_in = inclusive
        else:
            low_in, high_in = inclusive[0] == "[", inclusive[1] == "]"
        ok_low = low is None or (value >= low if low_in else value > low)  # comparisons with NaN are all False
        ok_high = high is None or (value <= high if high_in else value < high)
        if not (ok_low and ok_high):
            low_text = "" if low is None else (f">= {low}" if low_in else f"> {low}")
            high_text = "" if high is None else (f"<= {high}" if high_in else f"< {high}")
            bounds = " and ".join(t for t in (low_text, high_text) if t)
            raise FastcifarError(f"{dotted} must be {bounds}, got {value}; "
                                 f"fix it in the YAML or with --set {dotted}=...")
    for side in [*config.augment.scales, config.augment.image_size]:
        if side < 1:
            raise FastcifarError(f"augment.image_size and augment.scales must be positive sides in px, got {side}.")


def _check_rules(config: Config) -> None:
    """Rules between fields: each names both fields and the fix."""
    aug, sched, val_split = config.augment, config.schedule, config.data.val_split
    if aug.cutout > 0 and aug.cutout_size < 1:
        raise FastcifarError(f"augment.cutout_size must be at least 1 px when augment.cutout > 0, got "
                             f"{aug.cutout_size}.")
    for dotted, metric, used in (("train.select_metric", config.train.select_metric, True),
                                 ("early_stop.metric", config.early_stop.metric, config.early_stop.patience > 0)):
        if not used or metric == "auto" and dotted == "train.select_metric":
            continue
        if metric not in METRICS:
            raise FastcifarError(f"{dotted} '{metric}' is not a recorded metric; use one of {', '.join(METRICS)}"
                                 f"{' (or auto)' if dotted == 'train.select_metric' else ''}.")
        if metric.startswith("val_") and val_split <= 0:
            raise FastcifarError(f"{dotted} '{metric}' is not recorded by a run without a validation split "
                                 f"(data.val_split is 0); hold images out with --set data.val_split=5000, or use "
                                 f"test_{metric[4:]}.")
    if sched.name == "onecycle" and sched.warmup_epochs > 0:
        raise FastcifarError("schedule.warmup_epochs and onecycle's schedule.pct_start both set the rise; set "
                             "schedule.warmup_epochs: 0.")
    if sched.warmup_epochs > config.train.epochs:
        raise FastcifarError(f"schedule.warmup_epochs ({sched.warmup_epochs}) is longer than the run "
                             f"({config.train.epochs} train.epochs); lower it.")


def _upgrade(data: dict) -> dict:
    """Accept older spellings: train.tta true / false (before the TTA modes) means flip / none."""
    train = data.get("train") if isinstance(data, dict) else None
    if isinstance(train, dict) and isinstance(train.get("tta"), bool):
        data = {**data, "train": {**train, "tta": "flip" if train["tta"] else "none"}}
    return data


def from_dict(data: dict) -> Config:
    """Validate a plain mapping (as parsed from YAML) into a Config."""
    config = _build(Config, _upgrade(data or {}), "")
    for dotted in CHOICES:  # defaults were not checked by _build
        section, key = dotted.split(".")
        _check_value(dotted, getattr(getattr(config, section), key), str)
    _check_ranges(config)
    _check_rules(config)
    _check_augment(config)
    return config


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings to a raw mapping; values are parsed as YAML (`1e-3`, `true`, `[1, 2]`)."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise FastcifarError(f"Override '{item}' has no '='; write it as --set section.key=value.")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        value = yaml.safe_load(raw) if raw.strip() else None
        if isinstance(value, str) and _looks_like_number(value):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FastcifarError(f"Override '{dotted}': '{part}' is a value, not a section.")
        node[parts[-1]] = value
    return data


def _looks_like_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _deepcopy(data: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(data)) if data else {}


# ---------------------------------------------------------------------------- files


def packaged_configs() -> dict[str, Path]:
    """Names of the packaged YAML configs, mapped to their paths."""
    folder = resources.files("fastcifar") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_config_path(name_or_path: str) -> Path:
    """A packaged config name (`resnet18_arcface_224`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FastcifarError(f"Config file '{path}' does not exist; "
                                 "give a YAML path or a name from `fastcifar configs`.")
        return path
    known = packaged_configs()
    if name_or_path not in known:
        raise FastcifarError(f"No packaged config named '{name_or_path}': {_closest(name_or_path, sorted(known))} "
                             "(`fastcifar configs` lists them).")
    return known[name_or_path]


def read_yaml(path: Path) -> dict:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise FastcifarError(f"Config file '{path}' is a binary file, not YAML text; give the path of a .yaml config.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise FastcifarError(f"Config file '{path}' is not UTF-8 text (byte {raw[e.start]:#04x} on line {line}); "
                             f"save it as UTF-8.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise FastcifarError(f"Config file '{path}' is not valid YAML ({e.__class__.__name__}: {e}); "
                             "fix the line it names.") from None
    if not isinstance(data, dict):
        raise FastcifarError(f"Config file '{path}' must be a mapping of sections, got {type(data).__name__}.")
    return data


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config. Raises FastcifarError with the fix on any problem."""
    path = resolve_config_path(name_or_path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return from_dict(apply_overrides(data, overrides or []))


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
