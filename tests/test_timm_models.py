"""timm-native models.

Fixed-size families at any size, hf-hub:/local-dir: names, weight files through timm's filters.
"""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
from tiny_run import run_tiny

from fastcifar.cli import main
from fastcifar.config import ModelConfig
from fastcifar.errors import FastcifarError
from fastcifar.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# swin_tiny's layout (patch 4, window 7, four stages) at 0.7M parameters: a few steps take seconds on one core
SMALL_SWIN = {
    "name": "swin_tiny_patch4_window7_224",
    "kwargs": {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]},
}


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("model", [{"name": "test_vit3"}, SMALL_SWIN], ids=["vit", "swin"])
def test_fixed_size_families_train_at_32px_and_multiscale(model, prepared_root, tmp_path, monkeypatch):
    import fastcifar.engine.step as step

    sides, real = [], step.train_step

    def recording(model, x, *args, **kwargs):
        sides.append(x.shape[-1])
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(step, "train_step", recording)
    root = prepared_root("cifar10")
    _, records, _ = run_tiny(root, tmp_path, model=model, train={"epochs": 1})
    assert records[-1]["step"] == 8 and set(sides) == {32}  # 512 images / 64: every step ran at 32 px
    assert math.isfinite(records[-1]["train_loss"]) and records[-1]["test_acc"] is not None
    sides.clear()
    _, records, _ = run_tiny(root, tmp_path, model=model, augment={"scales": [32, 48]}, train={"epochs": 1})
    assert records[-1]["step"] == 8 and set(sides) == {32, 48}  # both sides really went through the model
    assert math.isfinite(records[-1]["train_loss"])


def test_fixed_size_model_gets_img_size_and_dynamic_only_when_scales_ask():
    fixed = build_model(ModelConfig(name="test_vit3"), 10, image_size=32)
    assert fixed.backbone.patch_embed.img_size == (32, 32) and not fixed.backbone.dynamic_img_size
    assert fixed.backbone.pos_embed.shape[1] == 2 * 2 + 1  # 32 px / patch 16 = 2x2 tokens + one register token
    multi = build_model(ModelConfig(name="test_vit3"), 10, image_size=32, scales=[32, 48])
    assert multi.backbone.dynamic_img_size and multi(torch.zeros(2, 3, 48, 48)).shape == (2, 10)
    cnn = build_model(ModelConfig(name="test_resnet"), 10, image_size=32, scales=[48])  # no img_size argument at all
    assert cnn(torch.zeros(2, 3, 48, 48)).shape == (2, 10)


def test_model_that_cannot_run_at_a_size_says_so_in_one_sentence(capsys, tmp_path):
    # coatnet is fixed-size and has no dynamic_img_size: 48 px breaks its relative-position attention
    with pytest.raises(FastcifarError) as info:
        build_model(ModelConfig(name="test_coatnet"), 10, image_size=32, scales=[48])
    message = str(info.value)
    assert message.startswith("Model 'test_coatnet' cannot run on 48 px images (RuntimeError:")
    assert message.endswith(
        "drop 48 from augment.scales (it was built for 32 px and this family cannot change size) or pick another model."
    )
    assert "\n" not in message
    # through the CLI: an error line, exit 2, no traceback (the size check runs before any data is read)
    config = tmp_path / "vit.yaml"
    config.write_text(
        "model: {name: test_vit}\ntrain: {device: cpu, compile: false}\naugment: {image_size: 8}\n"
        f"data: {{dataset: cifar10, root: '{tmp_path}'}}\n"
    )
    code = main(["train", str(config)])
    out = capsys.readouterr().out
    assert code == 2 and "Traceback" not in out


def test_unknown_size_argument_in_kwargs_is_one_sentence():
    with pytest.raises(FastcifarError, match=r"timm could not build 'test_resnet' with .*fix model.kwargs"):
        build_model(ModelConfig(name="test_resnet", kwargs={"not_an_arg": 1}), 10)


# ---------------------------------------------------------------------------- weights in


def _save_timm_folder(tmp_path, name="test_vit", **kwargs):
    torch.manual_seed(11)
    source = timm.create_model(name, **kwargs).eval()
    folder = tmp_path / "timm-folder"
    timm.models.save_for_hf(source, str(folder), safe_serialization=True)
    return source, folder


def test_local_dir_name_loads_through_timms_filters_pos_embed_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    source, folder = _save_timm_folder(tmp_path)  # test_vit at its 160 px default: 10x10 position grid
    model = build_model(ModelConfig(name=f"local-dir:{folder}", pretrained=True), 10, image_size=32)
    loaded, state = model.backbone.state_dict(), source.state_dict()
    want = resample_abs_pos_embed(state["pos_embed"], (2, 2), num_prefix_tokens=1)  # timm's checkpoint filter does this
    torch.testing.assert_close(loaded["pos_embed"], want)
    assert all(torch.equal(loaded[k], state[k]) for k in loaded if k != "pos_embed")
    assert model.head.fc.weight.shape == (10, 64)  # the 1000-class head was reset, ours is fresh
    # without pretrained: the architecture (and saved model_args) only, fresh weights
    fresh = build_model(ModelConfig(name=f"local-dir:{folder}"), 10, image_size=32)
    assert not torch.equal(fresh.backbone.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_pretrained_timm_file_uses_timms_filters(tmp_path):
    source, folder = _save_timm_folder(tmp_path)
    model = build_model(ModelConfig(name="test_vit", pretrained=str(folder / "model.safetensors")), 100, image_size=48)
    assert model.backbone.pos_embed.shape == (1, 3 * 3 + 1, 64)  # resampled 10x10 -> 3x3, not left at init
    assert torch.equal(
        model.backbone.state_dict()["blocks.5.mlp.fc2.weight"], source.state_dict()["blocks.5.mlp.fc2.weight"]
    )
    with pytest.raises(FastcifarError, match=r"is a folder; a timm folder is a model name \(model.name: local-dir:"):
        build_model(ModelConfig(name="test_vit", pretrained=str(folder)), 10)
    state = timm.create_model("resnet10t").state_dict()
    state["conv1.0.weight"] = torch.zeros(24, 3, 5, 5)  # another shape where the names agree
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(
        FastcifarError, match=r"do not fit 'resnet10t' \(size mismatch for conv1.0.weight.*set model.name"
    ):
        build_model(ModelConfig(name="resnet10t", pretrained=str(tmp_path / "other.pth")), 10)


def test_pretrained_fastcifar_run_carries_its_cifar_stem(tmp_path):
    torch.manual_seed(3)
    source = build_model(ModelConfig(name="resnet18", cifar_stem=True), num_classes=100)
    path = tmp_path / "best.pt"
    torch.save({"model": source.state_dict(), "ema": None}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor placed: nothing to warn about
        model = build_model(ModelConfig(name="resnet18", cifar_stem=True, pretrained=str(path)), num_classes=10)
    src, dst = source.backbone.state_dict(), model.backbone.state_dict()
    assert dst["conv1.weight"].shape == (64, 3, 3, 3) and all(torch.equal(dst[k], src[k]) for k in dst)
    with pytest.raises(
        FastcifarError, match=r"do not fit 'resnet18' \(size mismatch for conv1.weight.*model.cifar_stem"
    ):
        build_model(ModelConfig(name="resnet18", pretrained=str(path)), num_classes=10)  # a 3x3 stem into timm's 7x7


@pytest.mark.parametrize(
    "config",
    [ModelConfig(name="hf-hub:timm/test_vit.r160_in1k"), ModelConfig(name="test_vit", pretrained=True)],
    ids=["hf-hub-name", "hub-weights"],
)
def test_hub_offline_names_the_cache_the_offline_switch_and_local_files(config, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(FastcifarError) as info:
        build_model(config, 10, image_size=32)
    message = str(info.value)
    assert str(tmp_path / "hub") in message and "HF_HUB_OFFLINE=1" in message
    assert "model.pretrained: /path/to/weights.safetensors" in message and "local-dir:PATH" in message
    assert message.count(". ") == 0 and "\n" not in message


def test_local_dir_without_weights_says_so(tmp_path):
    _, folder = _save_timm_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FastcifarError, match=r"holds no weights file .*model.pretrained: false"):
        build_model(ModelConfig(name=f"local-dir:{folder}", pretrained=True), 10, image_size=32)


def test_bad_source_prefix_and_missing_local_dir(tmp_path):
    with pytest.raises(FastcifarError, match=r"has no config.json"):
        build_model(ModelConfig(name=f"local-dir:{tmp_path}"), 10)
    with pytest.raises(FastcifarError, match=r"not a timm model name .*hf-hub:ORG/NAME"):
        build_model(ModelConfig(name="timm/resnet18"), 10)


def test_resume_and_eval_need_no_weights_file(prepared_root, tmp_path):
    """weights_follow: a run started from a weights file evaluates (and resumes) after the file is gone."""
    from fastcifar.engine.evaluate import evaluate

    source, folder = _save_timm_folder(tmp_path, img_size=32)
    weights = folder / "model.safetensors"
    root = prepared_root("cifar10")
    run, records, _ = run_tiny(
        root, tmp_path / "runs", model={"name": "test_vit", "pretrained": str(weights)}, train={"epochs": 1}
    )
    weights.unlink()
    assert evaluate(run, root=str(root), device="cpu")["acc"] == pytest.approx(records[-1]["test_acc"])
    from fastcifar.engine.trainer import train

    assert train(None, resume=str(run), progress=False) == run  # rebuilt from the checkpoint alone


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "mobilenetv3_small_050"])
def test_cifar_stem_keeps_serving_its_families(name):
    model = build_model(ModelConfig(name=name, cifar_stem=True), 10, image_size=32)
    first = model.backbone.conv1[0] if name == "test_resnet" else model.backbone.conv_stem
    assert first.stride == (1, 1) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_init_from_and_a_run_folder_as_pretrained_fetch_nothing(prepared_root, tmp_path, monkeypatch):
    """init_from overwrites every weight, so `pretrained: true` is not fetched (offline here: a fetch would fail);
    a run folder as model.pretrained gives its best.pt's backbone."""
    import huggingface_hub.constants as hf

    root = prepared_root("cifar10")
    first, _, _ = run_tiny(root, tmp_path / "runs", train={"epochs": 1})
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _, records, _ = run_tiny(
        root, tmp_path / "runs", model={"pretrained": True}, train={"epochs": 1, "init_from": str(first)}
    )
    assert records[-1]["step"] == 8
    state = torch.load(first / "best.pt", weights_only=True)["model"]
    model = build_model(ModelConfig(name="test_resnet", pretrained=str(first)), 100, image_size=32)
    assert all(torch.equal(v, state[f"backbone.{k}"]) for k, v in model.backbone.state_dict().items())
