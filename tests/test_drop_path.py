"""`model.drop_path_rate` (stochastic depth, timm's --drop-path) reaches the model's blocks.

Through the run's own path: a config -> `build.build_model_on` -> `models.build_model` -> `timm.create_model`.
timm spreads the rate over depth (linear rule: the deepest block gets the full rate), so the DropPath modules
hold probabilities up to exactly the rate. In train mode they drop whole residual branches per sample, so the
output depends on the RNG; in eval mode they are the identity. With rate 0 the model has none at all.
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import DropPath

from fastcifar.config import from_dict, load_config
from fastcifar.engine import build
from fastcifar.errors import FastcifarError

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ["test_resnet", "test_vit"]  # timm's tiny CNN and transformer (0.3-0.4M parameters, no download)
RATE = 0.3


def model_with(name: str, rate: float) -> torch.nn.Module:
    """The run's model for `model.name: name`, `model.drop_path_rate: rate` at 32 px, 10 classes, on the CPU."""
    cfg = from_dict({"model": {"name": name, "drop_path_rate": rate}, "augment": {"image_size": 32},
                     "train": {"device": "cpu", "compile": False}})
    return build.build_model_on(cfg, 10, torch.device("cpu"))


def drop_probs(model: torch.nn.Module) -> list[float]:
    """drop_prob of every DropPath module, in module order (shallow blocks first)."""
    return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]


@torch.no_grad()
def outputs(model: torch.nn.Module, x: torch.Tensor, seeds: tuple[int, ...]) -> list[torch.Tensor]:
    """The model's logits for `x`, once per seed of the global RNG (DropPath draws from it)."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(model(x))
    return out


@torch.no_grad()
def perturb(model: torch.nn.Module) -> None:
    """Nudge every weight by a little seeded noise, as training would.

    timm zero-initializes the last BatchNorm of each ResNet block (`zero_init_last`), so at init every residual
    branch adds exactly zero and dropping it changes nothing; a trained model's branches are not zero.
    """
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=generator))


def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # [B, 3, 32, 32]


@pytest.mark.parametrize("name", MODELS)
def test_drop_path_rate_reaches_the_blocks_and_drops_in_train_mode_only(name):
    model = model_with(name, RATE)
    probs = drop_probs(model)
    assert probs, f"{name}: no DropPath module with model.drop_path_rate {RATE}"
    assert max(probs) == pytest.approx(RATE) and all(0 < p <= RATE + 1e-6 for p in probs), probs
    assert probs == sorted(probs)  # deeper blocks are dropped more often
    perturb(model)
    x = images()
    model.train()
    first, other, again = outputs(model, x, seeds=(1, 2, 1))
    assert not torch.allclose(first, other), "train mode: another RNG draw must drop other branches"
    assert torch.equal(first, again)  # ... and the same draw the same ones
    model.eval()
    first, other = outputs(model, x, seeds=(1, 2))
    assert torch.equal(first, other), "eval mode: stochastic depth must be off"


@pytest.mark.parametrize("name", MODELS)
def test_zero_drop_path_rate_builds_no_drop_path(name):
    model = model_with(name, 0.0)
    assert drop_probs(model) == []
    perturb(model)
    model.train()
    first, other = outputs(model, images(), seeds=(1, 2))
    assert torch.equal(first, other)  # nothing random left in train mode: the check above is DropPath's doing


@pytest.mark.parametrize("rate", ["-0.1", "1.5", "nan"])
def test_out_of_range_drop_path_rate_is_one_sentence(rate):
    with pytest.raises(FastcifarError) as info:
        load_config("resnet18_baseline", [f"model.drop_path_rate={rate}"])
    assert str(info.value) == (
        f"model.drop_path_rate must be >= 0.0 and <= 1.0, got {float(rate)}; "
        "fix it in the YAML or with --set model.drop_path_rate=..."
    )
