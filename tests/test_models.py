"""build_model, heads, cifar stem, weight files and whole-model loading, on CPU with tiny timm nets."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

from fastcifar.config import ModelConfig
from fastcifar.errors import FastcifarError
from fastcifar.models import build_model, checkpoint_head, load_weights, unwrap_model

torch.set_num_threads(1)  # two cores shared by the team


def _x(batch: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _stage1_size(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    seen = {}

    def hook(module, inputs, output):  # returns None, so the output is left alone
        seen["shape"] = output.shape

    handle = model.backbone.layer1.register_forward_hook(hook)
    model.eval()(x)
    handle.remove()
    return tuple(seen["shape"][-2:])


# ---------------------------------------------------------------------------- heads


def test_linear_head_shapes():
    model = build_model(ModelConfig(name="resnet10t", head="linear", drop_rate=0.2), num_classes=10)
    logits = model(_x())
    assert logits.shape == (4, 10) and logits.dtype == torch.float32
    assert model.head_kind == "linear" and model.margin_s is None and model.num_classes == 10
    assert model.embed(_x()).shape == (4, 512)  # resnet10t's pooled width


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_head_gives_scaled_cosines_and_unit_embeddings(kind):
    cfg = ModelConfig(name="resnet10t", head=kind, embedding_dim=64, margin_s=8.0)
    model = build_model(cfg, num_classes=20)
    x = _x(6)
    logits = model(x)
    assert logits.shape == (6, 20)
    assert model.head_kind == kind and model.margin_s == 8.0
    cos = logits / model.margin_s
    assert cos.abs().max() <= 1 + 1e-6
    emb = model.embed(x)
    assert emb.shape == (6, 64)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(6))
    # logits are exactly s * <embedding, normalized class weight>
    w = torch.nn.functional.normalize(model.head.weight, dim=1)
    torch.testing.assert_close(logits, 8.0 * emb @ w.T)


def test_margin_head_is_float32_under_bf16_autocast():
    model = build_model(ModelConfig(name="resnet10t", head="arcface", embedding_dim=32), num_classes=10).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(_x(2))
    assert logits.dtype == torch.float32
    assert (logits / model.margin_s).abs().max() <= 1 + 1e-6


# ---------------------------------------------------------------------------- cifar stem


def test_cifar_stem_keeps_full_resolution_into_stage1():
    plain = build_model(ModelConfig(name="resnet18"), num_classes=10)
    assert _stage1_size(plain, _x(2)) == (8, 8)  # 7x7/2 conv + max-pool: 32 -> 8
    model = build_model(ModelConfig(name="resnet18", cifar_stem=True), num_classes=10)
    conv1 = model.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.out_channels == 64
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    assert _stage1_size(model, _x(2)) == (32, 32)
    assert model(_x(2)).shape == (2, 10)


def test_cifar_stem_deep_stem_keeps_its_convs():
    model = build_model(ModelConfig(name="resnet10t", cifar_stem=True), num_classes=10)
    stem = model.backbone.conv1
    assert isinstance(stem, torch.nn.Sequential) and stem[0].stride == (1, 1) and stem[0].kernel_size == (3, 3)
    assert _stage1_size(model, _x(2)) == (32, 32)


def test_cifar_stem_unknown_architecture_fails_clearly():
    with pytest.raises(FastcifarError, match=r"cifar_stem is not supported for 'convnext_atto'.*cifar_stem: false"):
        build_model(ModelConfig(name="convnext_atto", cifar_stem=True), num_classes=10)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(FastcifarError, match=r"'resnet18x' is not a timm model; did you mean .*resnet18"):
        build_model(ModelConfig(name="resnet18x"), num_classes=10)


# ---------------------------------------------------------------------------- pretrained


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_local_file_loads_backbone_exactly(tmp_path, suffix):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", num_classes=1000)  # an "ImageNet" model with its own classifier
    state = source.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full fit must not warn
        model = build_model(ModelConfig(name="resnet10t", pretrained=str(path)), num_classes=10)
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert model.head.fc.weight.shape == (10, 512)  # the 1000-class fc was dropped, ours is fresh


def test_pretrained_from_fastcifar_model_and_stem_mismatch_warns(tmp_path):
    torch.manual_seed(3)
    source = build_model(ModelConfig(name="resnet18"), num_classes=100)  # 7x7 stem
    path = tmp_path / "run.pt"
    torch.save({"model": source.state_dict(), "ema": None, "epoch": 3}, path)  # a trainer-style checkpoint dict
    torch.manual_seed(4)
    with pytest.warns(UserWarning, match=r"fresh 3x3 stride-1 conv1; the pretrained 7x7 conv1 is not used"):
        model = build_model(ModelConfig(name="resnet18", cifar_stem=True, pretrained=str(path)), num_classes=10)
    src, dst = source.backbone.state_dict(), model.backbone.state_dict()
    assert dst["conv1.weight"].shape == (64, 3, 3, 3)  # fresh CIFAR stem, not the file's 7x7
    assert all(torch.equal(dst[k], src[k]) for k in dst if k != "conv1.weight")


def test_pretrained_file_that_fits_nothing_or_is_missing(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(FastcifarError, match=r"fit none of .resnet10t.s 70 tensors.*set model.name"):
        build_model(ModelConfig(name="resnet10t", pretrained=str(path)), num_classes=10)
    with pytest.raises(FastcifarError, match=r"does not exist"):
        build_model(ModelConfig(name="resnet10t", pretrained=str(tmp_path / "nope.pth")), num_classes=10)


def test_pretrained_hub_offline_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # what no network looks like, without touching it
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))  # and no cached copy
    with pytest.raises(FastcifarError) as info:
        build_model(ModelConfig(name="resnet18", pretrained=True), num_classes=10)
    message = str(info.value)
    assert "no network" in message and "model.pretrained: /path/to/weights.safetensors" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence


# ---------------------------------------------------------------------------- whole-model weights


def test_load_weights_roundtrip_through_compile_prefix():
    torch.manual_seed(5)
    source = build_model(ModelConfig(name="resnet10t", head="cosface", embedding_dim=32), num_classes=10)
    state = {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}  # as saved from a compiled model
    torch.manual_seed(6)
    target = build_model(ModelConfig(name="resnet10t", head="cosface", embedding_dim=32), num_classes=10)
    load_weights(torch.compile(target), state, "runs/a")  # the wrapper is not compiled until called
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert checkpoint_head(state) == ("margin", 10)
    assert unwrap_model(torch.compile(target)) is target


def test_load_weights_class_count_mismatch_names_the_fix():
    imagenet = timm.create_model("resnet10t", num_classes=1000).state_dict()
    model = build_model(ModelConfig(name="resnet10t"), num_classes=100)
    with pytest.raises(FastcifarError) as info:
        load_weights(model, imagenet, "resnet10t_in1k.pth")
    assert str(info.value).startswith("Checkpoint resnet10t_in1k.pth has 1000 classes but this model has 100;")
    assert "data.dataset" in str(info.value) and "model.pretrained: resnet10t_in1k.pth" in str(info.value)
    cifar10 = build_model(ModelConfig(name="resnet10t"), num_classes=10).state_dict()
    with pytest.raises(FastcifarError, match=r"has 10 classes but this model has 100"):
        load_weights(model, cifar10, "runs/c10")


def test_load_weights_head_or_architecture_mismatch():
    model = build_model(ModelConfig(name="resnet10t", head="arcface", embedding_dim=32), num_classes=10)
    linear = build_model(ModelConfig(name="resnet10t"), num_classes=10).state_dict()
    with pytest.raises(FastcifarError, match=r"has a linear head but this model has model.head: arcface"):
        load_weights(model, linear, "runs/lin")
    other = build_model(ModelConfig(name="resnet10t", head="arcface", embedding_dim=16), num_classes=10).state_dict()
    fit = r"does not fit this model \(0 missing, 0 unexpected, 6 of another shape, e.g. .head.weight."
    with pytest.raises(FastcifarError, match=fit):
        load_weights(model, other, "runs/e16")


def test_pretrained_prefers_a_checkpoints_ema_weights(tmp_path):
    torch.manual_seed(7)
    raw = build_model(ModelConfig(name="resnet10t"), num_classes=10).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    path = tmp_path / "best.pt"
    torch.save({"model": raw, "ema": ema}, path)
    model = build_model(ModelConfig(name="resnet10t", pretrained=str(path)), num_classes=100)
    assert torch.equal(model.backbone.conv1[0].weight, ema["backbone.conv1.0.weight"])
