"""`fastcifar export RUN_DIR OUT_DIR`: a run's weights in timm's own format, loadable without fastcifar.

OUT_DIR gets what timm's `save_for_hf` writes, `model.safetensors` (plain timm keys) and `config.json`
(architecture, num_classes, model_args such as img_size, and the preprocessing: the run's input size, its
mean/std on timm's 0-1 scale, crop_pct 1, bilinear), plus a README.md model card. Then

    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)

rebuilds the run's evaluation model, and images prepared with timm's own data config (`resolve_data_config`
+ `create_transform`) get the logits `fastcifar eval` computes in float32 (tests/test_export.py checks it in a
process that never imports fastcifar).

- Linear head: the timm model is created with num_classes=C, and our Linear becomes its classifier (`fc`,
  `head`, `classifier`, ...: whatever `get_classifier()` names).
- Margin head (arcface / cosface): `model.safetensors` is the timm backbone with num_classes=0 (its forward gives
  pooled features [B, F]); the head is in `margin_head.safetensors` under the `MarginHead` names: `proj.weight`
  [E, F], `bn.weight` / `bn.bias` / `bn.running_mean` / `bn.running_var` [E], `bn.num_batches_tracked`, and
  `weight` [C, E]; config.json's "fastcifar" entry holds `margin_s`. Logits (what eval's argmax reads) are
  s * normalize(batch_norm(features @ proj.T)) @ normalize(weight).T (README has the snippet).
- `model.cifar_stem` runs are refused: no timm argument builds a stride-1 stem without a max-pool, so plain timm
  cannot rebuild them.

Before anything is written, the timm model is run beside the fastcifar model on random input; an export that
would not reproduce the run is refused. The folder appears whole or not at all (written aside, then renamed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor, nn

from fastcifar.atomic import TEMP_PREFIX
from fastcifar.config import Config, from_dict
from fastcifar.engine.checkpoint import BEST, eval_weights, load_checkpoint, resolve_checkpoint
from fastcifar.errors import FastcifarError

MARGIN_FILE = "margin_head.safetensors"
BN_EPS = 1e-5  # nn.BatchNorm1d's default, which MarginHead uses
_TOLERANCE = 1e-4  # rtol and atol of the self-check, float32 logits


def export_run(
    target: str | os.PathLike,
    out_dir: str | os.PathLike,
    ema: bool | None = None,
    root: str | None = None,
    push: str | None = None,
    console: Console | None = None,
) -> Path:
    """Write the run's weights as a timm model folder; optionally upload it to the Hugging Face hub.

    Args:
        target: run directory (its best.pt) or a checkpoint file.
        out_dir: folder to create; it must not exist yet or be empty.
        ema: True = the EMA weights (the run must have kept them), False = the raw weights, None = what
            evaluation used (EMA when kept).
        root: data root holding the run's manifest (mean/std, class names), if it moved since training.
        push: `ORG/NAME` of a Hugging Face model repo to upload the folder to.

    Returns:
        The written folder.
    """
    console = console or Console()
    path = resolve_checkpoint(target, BEST)
    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    if cfg.model.cifar_stem:
        raise FastcifarError(
            f"Run '{path.parent}' uses model.cifar_stem, a stride-1 stem without max-pool that no timm argument "
            f"builds, so plain timm could not rebuild it; load it with fastcifar, or train with model.cifar_stem: "
            f"false to export."
        )
    if root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)))
    out = _check_out_dir(Path(out_dir).expanduser())
    weights = _weights(state, ema, path)
    from fastcifar.engine.inputs import data_info

    info = data_info(cfg)  # the manifest: mean/std and class names
    model = _fastcifar_model(cfg, weights, info.num_classes, str(path))
    timm_model = to_timm(model, cfg)
    _check_same(model, timm_model, cfg)
    tmp = out.parent / f"{TEMP_PREFIX}{out.name}.{secrets.token_hex(4)}"
    try:
        _write(tmp, timm_model, model, cfg, info, state)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"[green]exported[/] {path} -> {out} (timm.create_model('local-dir:{out}', pretrained=True))")
    if push:
        push_folder(out, push)
        console.print(f"[green]pushed[/] {out} -> https://huggingface.co/{push}")
    return out


def _check_out_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastcifarError(
            f"Export folder '{out}' already exists and is not empty; give a new folder or delete it first."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _weights(state: dict, ema: bool | None, path: Path) -> dict[str, Tensor]:
    if ema is None:
        return eval_weights(state)  # what evaluation used
    if ema and not state.get("ema"):
        raise FastcifarError(f"Checkpoint '{path}' kept no EMA weights (train.ema_decay was 0); export without --ema.")
    return state["ema"] if ema else state["model"]


def _fastcifar_model(cfg: Config, weights: dict[str, Tensor], num_classes: int, source: str) -> nn.Module:
    from fastcifar.models import build_model, load_weights

    model = build_model(
        dataclasses.replace(cfg.model, pretrained=False), num_classes, cfg.augment.image_size, cfg.augment.scales
    )
    load_weights(model, weights, source)
    return model.eval()


def to_timm(model: nn.Module, cfg: Config) -> nn.Module:
    """A plain timm model holding `model`'s weights: with its classifier for a linear head, else features only.

    Raises:
        FastcifarError: the architecture's timm classifier is not one Linear layer (e.g. a distilled two-head
            DeiT), so our head has no place in it.
    """
    from fastcifar.models import create_backbone

    linear = model.head_kind == "linear"
    dynamic = bool(set(cfg.augment.scales) - {cfg.augment.image_size})
    timm_model = create_backbone(
        dataclasses.replace(cfg.model, pretrained=False),
        model.num_classes if linear else 0,
        cfg.augment.image_size,
        dynamic,
    ).eval()
    state = dict(model.backbone.state_dict())
    if linear:
        classifier = timm_model.get_classifier()
        name = next((n for n, m in timm_model.named_modules() if m is classifier), None)
        if not isinstance(classifier, nn.Linear) or name is None:
            raise FastcifarError(
                f"'{cfg.model.name}'s timm classifier is a {type(classifier).__name__}, not one Linear layer, so "
                f"the run's linear head has no place in it; export supports single-Linear-classifier models."
            )
        state[f"{name}.weight"], state[f"{name}.bias"] = model.head.fc.weight, model.head.fc.bias
    try:
        timm_model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FastcifarError(
            f"The run's weights do not fit a plain timm '{cfg.model.name}' ({str(e).splitlines()[-1].strip()}); "
            f"it cannot be exported as a timm model."
        ) from None
    return timm_model


def margin_logits(features: Tensor, head: dict[str, Tensor], s: float) -> Tensor:
    """The margin head in plain torch, as README's snippet writes it: features [B, F] -> s * cos [B, C]."""
    import torch.nn.functional as F

    x = F.batch_norm(
        features @ head["proj.weight"].T,
        head["bn.running_mean"],
        head["bn.running_var"],
        head["bn.weight"],
        head["bn.bias"],
        training=False,
        eps=BN_EPS,
    )
    return s * F.normalize(x, dim=1) @ F.normalize(head["weight"], dim=1).T


def _check_same(model: nn.Module, timm_model: nn.Module, cfg: Config) -> None:
    """Refuse an export whose timm model does not give the fastcifar model's logits (float32, eval mode)."""
    side = cfg.augment.image_size
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(x)
        got = timm_model(x)
        if model.head_kind != "linear":
            got = margin_logits(got, dict(model.head.state_dict()), model.margin_s)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=_TOLERANCE, atol=_TOLERANCE):
        raise FastcifarError(
            f"The plain timm '{cfg.model.name}' does not reproduce the run's logits (largest difference "
            f"{(got - want).abs().max().item() if got.shape == want.shape else 'shape'}); "
            f"it cannot be exported as a timm model."
        )


def _write(folder: Path, timm_model: nn.Module, model: nn.Module, cfg: Config, info, state: dict) -> None:
    from timm.models import save_for_hf

    side = cfg.augment.image_size
    mean, std = (info.mean, info.std) if cfg.augment.normalize else ((0.0,) * 3, (255.0,) * 3)
    data_config = {  # timm's 0-1 scale: what GpuAugment applies to 0-255 pixels, divided by 255
        "input_size": (3, side, side),
        "mean": tuple(m / 255.0 for m in mean),
        "std": tuple(s / 255.0 for s in std),
        "crop_pct": 1.0,  # the whole image: fastcifar resizes 32 px to `side`, it never crops at eval
        "crop_mode": "center",
        "interpolation": "bilinear",
    }
    linear = model.head_kind == "linear"
    extra = {
        "run": cfg.name,
        "epoch": int(state["epoch"]) + 1,
        "dataset": cfg.data.dataset,
        "label": cfg.data.label,
        "synthetic_data": info.synthetic,
        "head": model.head_kind,
    }
    model_config: dict = {"fastcifar": extra}
    if linear:
        model_config["label_names"] = list(info.class_names)
    else:
        extra.update(
            margin_s=model.margin_s,
            num_classes=model.num_classes,
            head_file=MARGIN_FILE,
            class_names=list(info.class_names),
        )
    save_for_hf(timm_model, str(folder), model_config=model_config, safe_serialization=True, data_config=data_config)
    if not linear:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(folder / MARGIN_FILE))
    (folder / "README.md").write_text(model_card(folder, cfg, extra, data_config))


def model_card(folder: Path, cfg: Config, extra: dict, data_config: dict) -> str:
    """A short README: what the weights are, and how to load them with timm alone."""
    data = f"{cfg.data.dataset}{' (SYNTHETIC stand-in data: not an accuracy claim)' if extra['synthetic_data'] else ''}"
    load = (
        "import timm, torch\n"
        "from timm.data import resolve_data_config, create_transform\n"
        "model = timm.create_model('local-dir:PATH', pretrained=True).eval()  # or 'hf-hub:ORG/NAME'\n"
        "transform = create_transform(**resolve_data_config({}, model=model))  # PIL image -> normalized tensor\n"
    )
    if extra["head"] == "linear":
        load += "logits = model(transform(image).unsqueeze(0))\n"
    else:
        load += (
            "from safetensors.torch import load_file\n"
            "import torch.nn.functional as F\n"
            f"head = load_file('PATH/{MARGIN_FILE}')\n"
            f"features = model(transform(image).unsqueeze(0))  # [B, F] pooled features\n"
            f"x = F.batch_norm(features @ head['proj.weight'].T, head['bn.running_mean'], head['bn.running_var'],\n"
            f"                 head['bn.weight'], head['bn.bias'], training=False, eps={BN_EPS})\n"
            f"logits = {extra['margin_s']} * F.normalize(x, dim=1) @ F.normalize(head['weight'], dim=1).T  # s * cos\n"
        )
    return (
        f"---\nlibrary_name: timm\ntags:\n- image-classification\n- timm\n- fastcifar\n---\n"
        f"# {cfg.name}\n\n{cfg.description}\n\n"
        f"Trained with fastcifar on {data}, {extra['epoch']} epochs, `{cfg.model.name}` at "
        f"{data_config['input_size'][-1]} px, {extra['head']} head. Inputs: {data_config['input_size'][-1]} px, "
        f"mean {json.dumps([round(m, 6) for m in data_config['mean']])}, "
        f"std {json.dumps([round(s, 6) for s in data_config['std']])} on the 0-1 scale (config.json holds them).\n\n"
        f"```python\n{load}```\n"
    )


def push_folder(folder: Path, repo_id: str) -> None:
    """Upload an export folder to the Hugging Face model repo `repo_id` (created if missing)."""
    from huggingface_hub import HfApi, constants

    later = f"the export in '{folder}' is complete: upload it later with `hf upload {repo_id} {folder}`"
    if constants.HF_HUB_OFFLINE:
        raise FastcifarError(f"Cannot push to the Hugging Face hub while HF_HUB_OFFLINE is set; {later}.")
    try:
        api = HfApi(library_name="fastcifar")
        repo = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="fastcifar export")
    except Exception as e:  # network, authentication, permissions: the hub's exception types vary by version
        raise FastcifarError(
            f"Could not push to the Hugging Face hub repo '{repo_id}' (no network or not logged in? "
            f"{type(e).__name__}); {later} after `hf auth login`."
        ) from None
