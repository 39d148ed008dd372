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
    assert {
        "resnet18_arcface_224", "resnet18_baseline", "resnet50_arcface_224", "resnet18_pretrained_arcface_kd"
    } <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        assert cfg.description, f"{name} has no description"


def test_docsaid_arcface_224_matches_the_seed_experiment():
    cfg = load_config("resnet18_arcface_224")
    model = cfg.model
    assert (model.name, model.head, model.margin_s, model.margin_m) == ("resnet18", "arcface", 8.0, 0.35)
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
    cfg = load_config(
        "resnet18_baseline",
        ["optim.lr=1e-2", "train.epochs=3", "model.pretrained=/tmp/w.pth", "schedule.milestones=[2, 4]"],
    )
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.hflip=2", r"augment.hflip must be >= 0.0 and <= 1.0, got 2.0"),
        ("augment.mix_prob=-0.1", r"augment.mix_prob must be >= 0.0 and <= 1.0"),
        ("augment.crop_padding=40", r"augment.crop_padding must be >= 0 and <= 31"),
        ("augment.hue=0.7", r"augment.hue must be >= 0.0 and <= 0.5"),
        ("augment.scale_limit=1.0", r"augment.scale_limit must be >= 0.0 and < 1.0"),
        ("augment.brightness=-1", r"augment.brightness must be >= 0.0"),
        ("augment.vflip=.nan", r"augment.vflip must be >= 0.0 and <= 1.0, got nan"),
        ("schedule.pct_start=1.0", r"schedule.pct_start must be >= 0.0 and < 1.0, got 1.0"),
        ("augment.cutout_size=0", r"augment.cutout_size must be at least 1 px when augment.cutout > 0"),
        ("train.select_metric=val_acc", r"select_metric 'val_acc' is not recorded by a run without a validation split"),
        ("train.select_metric=val_top1", r"select_metric 'val_top1' is not a recorded metric; use one of train_loss"),
        (
            "early_stop.patience=3",
            r"early_stop.metric 'val_acc' is not recorded .*data.val_split is 0.*or use test_acc",
        ),
        ("schedule.warmup_epochs=2", r"schedule.warmup_epochs and onecycle's schedule.pct_start both set the rise"),
    ],
)
def test_field_ranges_and_cross_field_rules_fail_with_dump_config(override, message, capsys):
    """Every rule is checked when the config is built: `--dump-config` refuses before any data is read."""
    from fastcifar.cli import main

    extra = ["--set", "augment.cutout=0.5"] if override.startswith("augment.cutout_size") else []
    extra += ["--set", "data.val_split=0"] if "metric" in message else []  # this config holds 5000 images out
    assert main(["train", "fast_cifar10_resnet18", "--set", override, *extra, "--dump-config"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert re_search(message, out), out


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_rules_accept_what_the_run_supports():
    cfg = from_dict({"data": {"val_split": 100}, "train": {"select_metric": "val_loss"},
                     "early_stop": {"metric": "val_top5", "patience": 2}, "schedule": {"pct_start": 0.0}})
    assert cfg.train.select_metric == "val_loss" and cfg.early_stop.metric == "val_top5"
    assert from_dict({"early_stop": {"metric": "val_acc", "patience": 0}}).early_stop.patience == 0  # off: not checked
    with pytest.raises(FastcifarError, match=r"warmup_epochs \(5.0\) is longer than the run \(3 train.epochs\)"):
        from_dict({"train": {"epochs": 3}, "schedule": {"warmup_epochs": 5}})


def test_non_utf8_and_binary_config_files_get_one_sentence(tmp_path, capsys):
    from fastcifar.cli import main

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(FastcifarError, match=r"'.*latin.yaml' is not UTF-8 text \(byte 0xe9 on line 1\); save it as"):
        load_config(str(latin))
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    assert main(["train", str(binary), "--dump-config"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "is a binary file, not YAML text" in out and "Traceback" not in out
