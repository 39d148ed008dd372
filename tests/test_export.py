"""`fastcifar export`: a trained run loads in plain timm, in a process that never imports fastcifar, and gives
the logits and the accuracy `fastcifar eval` gives (float32; tolerance 1e-4 absolute and relative on logits)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastcifar.cli import main
from fastcifar.errors import FastcifarError
from fastcifar.export import MARGIN_FILE, export_run, push_folder
from tests.tiny_run import run_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

# Plain timm only: the data config timm resolves from the export's config.json, its own PIL transform.
TIMM_SIDE = textwrap.dedent("""
    import sys, json
    import numpy as np, torch, timm
    from PIL import Image
    from timm.data import resolve_data_config, create_transform
    from safetensors.torch import load_file
    import torch.nn.functional as F
    torch.set_num_threads(1)
    images_npy, jobs = sys.argv[1], json.loads(sys.argv[2])
    images = np.load(images_npy)  # uint8 [N, 32, 32, 3]
    for folder, out in jobs:
        model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
        transform = create_transform(**resolve_data_config({}, model=model))
        x = torch.stack([transform(Image.fromarray(image)) for image in images])
        with torch.no_grad():
            y = model(x)
        config = json.load(open(folder + "/config.json"))
        if config["fastcifar"]["head"] != "linear":  # the README's margin-head snippet
            head = load_file(folder + "/margin_head.safetensors")
            e = F.batch_norm(y @ head["proj.weight"].T, head["bn.running_mean"], head["bn.running_var"],
                             head["bn.weight"], head["bn.bias"], training=False, eps=1e-5)
            y = config["fastcifar"]["margin_s"] * F.normalize(e, dim=1) @ F.normalize(head["weight"], dim=1).T
        np.save(out, y.numpy())
    imported = [name for name in sys.modules if name == "fastcifar" or name.startswith("fastcifar.")]
    assert not imported, "the timm side imported fastcifar"
""")


def _fastcifar_logits(run, root) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C] of the run's evaluation model on the test split, labels [N]).

    As `fastcifar eval` computes them.
    """
    from fastcifar.augment import GpuAugment
    from fastcifar.config import from_dict
    from fastcifar.engine.checkpoint import eval_weights, load_checkpoint
    from fastcifar.engine.inputs import data_info
    from fastcifar.models import build_model, load_weights

    state = load_checkpoint(run)
    cfg = from_dict(state["config"])
    info = data_info(cfg)
    model = build_model(cfg.model, info.num_classes, cfg.augment.image_size, cfg.augment.scales)
    load_weights(model, eval_weights(state), str(run))
    base = root / "prepared" / "cifar10" / "npy"
    images = torch.from_numpy(np.load(base / "test_images.npy")).permute(0, 3, 1, 2)  # uint8 [N, 3, 32, 32]
    x = GpuAugment(cfg.augment, info.mean, info.std, info.num_classes).eval_batch(images)
    with torch.no_grad():
        return model.eval()(x).numpy(), np.load(base / "test_labels.npy")


def test_export_loads_in_plain_timm_with_the_same_logits(prepared_root, tmp_path):
    from fastcifar.engine.evaluate import evaluate

    root = prepared_root("cifar10")
    runs = {
        # a fixed-size ViT built at 32 px (model_args img_size) with EMA weights, and a margin head on a ResNet
        "vit": run_tiny(root, tmp_path / "runs", model={"name": "test_vit"}, train={"epochs": 1, "ema_decay": 0.9})[0],
        "arcface": run_tiny(
            root, tmp_path / "runs", model={"head": "arcface", "embedding_dim": 32}, train={"epochs": 1}
        )[0],
    }
    jobs = []
    for name, run in runs.items():
        assert main(["export", str(run), str(tmp_path / f"export-{name}")]) == 0
        jobs.append((str(tmp_path / f"export-{name}"), str(tmp_path / f"{name}.npy")))
    config = json.loads((tmp_path / "export-vit" / "config.json").read_text())
    assert config["architecture"] == "test_vit" and config["num_classes"] == 10
    assert config["model_args"]["img_size"] == [32, 32] and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    manifest = json.loads((root / "prepared" / "cifar10" / "manifest.json").read_text())
    assert config["pretrained_cfg"]["mean"] == pytest.approx([m / 255 for m in manifest["mean"]])
    assert config["pretrained_cfg"]["std"] == pytest.approx([s / 255 for s in manifest["std"]])
    assert sorted(p.name for p in (tmp_path / "export-arcface").iterdir()) == [
        "README.md",
        "config.json",
        MARGIN_FILE,
        "model.safetensors",
    ]

    images = root / "prepared" / "cifar10" / "npy" / "test_images.npy"
    subprocess.run([sys.executable, "-c", TIMM_SIDE, str(images), json.dumps(jobs)], check=True, timeout=300)
    for name, run in runs.items():
        ours, labels = _fastcifar_logits(run, root)
        theirs = np.load(tmp_path / f"{name}.npy")
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
        scored = evaluate(run, root=str(root), device="cpu")
        assert (theirs.argmax(1) == labels).mean() == pytest.approx(scored["acc"], abs=1e-12)


def test_export_refuses_cifar_stem_nonempty_folder_and_missing_ema(tmp_path):
    from fastcifar.config import from_dict, to_dict
    from fastcifar.models import build_model

    cfg = from_dict({"model": {"name": "test_resnet", "cifar_stem": True}, "data": {"dataset": "cifar10"}})
    path = tmp_path / "best.pt"
    torch.save(
        {"model": build_model(cfg.model, 10).state_dict(), "ema": None, "config": to_dict(cfg), "epoch": 0}, path
    )
    with pytest.raises(FastcifarError, match=r"model.cifar_stem.*plain timm could not rebuild it"):
        export_run(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    plain = from_dict({"model": {"name": "test_resnet"}, "data": {"dataset": "cifar10"}})
    torch.save(
        {"model": build_model(plain.model, 10).state_dict(), "ema": None, "config": to_dict(plain), "epoch": 0}, path
    )
    with pytest.raises(FastcifarError, match=r"already exists and is not empty"):
        export_run(path, tmp_path / "full")
    with pytest.raises(FastcifarError, match=r"kept no EMA weights.*without --ema"):
        export_run(path, tmp_path / "out", ema=True)


def test_push_offline_is_one_sentence(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    with pytest.raises(FastcifarError) as info:
        push_folder(tmp_path, "me/model")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and f"hf upload me/model {tmp_path}" in message
    assert message.count(". ") == 0 and "\n" not in message
