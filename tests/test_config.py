"""The config schema: packaged files validate, mistakes get a helpful sentence, overrides are type-checked."""

import pytest

from fastcifar.config import (
    dump_config,
    from_dict,
    load_config,
    packaged_configs,
    read_yaml,
)
from fastcifar.errors import FastcifarError


def test_every_packaged_config_validates_and_has_a_description():
    names = packaged_configs()
    assert {"resnet18_arcface_224", "resnet18_baseline", "resnet50_arcface_224", "resnet18_pretrained_arcface_kd"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        assert cfg.description, f"{name} has no description"


def test_docsaid_arcface_224_matches_the_seed_experiment():
    cfg = load_config("resnet18_arcface_224")
    assert (cfg.model.name, cfg.model.head, cfg.model.margin_s, cfg.model.margin_m) == ("resnet18", "arcface", 8.0, 0.35)
    assert cfg.augment.image_size == 224 and cfg.model.pretrained is True
    assert (cfg.optim.name, cfg.optim.lr, cfg.data.batch_size) == ("adamw", 1e-3, 250)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "did you mean 'optim.lr'"),
        ("optimizer.lr=0.1", "did you mean 'optim'"),
        ("optim.lr=fast", "optim.lr must be a float"),
        ("train.epochs=2.5", "train.epochs must be an integer"),
        ("train.compile=maybe", "train.compile must be true or false"),
        ("data.loader=dalli", "did you mean 'dali'"),
        ("optim.betas=0.9", "must be a list"),
        ("epochs", "has no '='"),
        ("train.eval_every=0", r"train.eval_every must be >= 1"),
        ("train.ema_decay=1.0", r"train.ema_decay must be >= 0.0 and <= 0.999999"),
        ("distill.temperature=0", r"distill.temperature must be > 0.0"),
        ("train.label_smoothing=1.5", r"train.label_smoothing must be >= 0.0 and <= 1.0"),
        ("data.prefetch=0", r"data.prefetch must be >= 1"),
        ("augment.scales=[64, 0]", "positive sides"),
    ],
)
def test_bad_overrides_name_the_fix(override, message):
    with pytest.raises(FastcifarError, match=message):
        load_config("resnet18_baseline", [override])


def test_overrides_are_typed_and_applied():
    cfg = load_config("resnet18_baseline", ["optim.lr=1e-2", "train.epochs=3", "model.pretrained=/tmp/w.pth", "schedule.milestones=[2, 4]"])
    assert cfg.optim.lr == pytest.approx(0.01) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.model.pretrained == "/tmp/w.pth"
    assert cfg.schedule.milestones == [2, 4]


def test_int_is_accepted_where_a_float_is_expected():
    assert from_dict({"optim": {"lr": 1}}).optim.lr == 1.0


def test_unknown_config_name_suggests_the_closest():
    with pytest.raises(FastcifarError, match="did you mean 'resnet18_baseline'"):
        load_config("resnet18_basline")


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(FastcifarError, match="not valid YAML"):
        load_config(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(FastcifarError, match="must be a mapping"):
        read_yaml(scalar)
    with pytest.raises(FastcifarError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_dumped_config_loads_back_identically(tmp_path):
    cfg = load_config("seed003_resnet34_cifar10_cutmix_mixup", ["train.seed=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg
