"""Custom data: a user's own folder in the CIFAR-10 pickle layout, with 4,000 training images and classes of its
own, prepared with `--custom`, trained with every loader, evaluated and benchmarked, and labelled custom
everywhere a run reports its data. Without the flag it is refused with a message naming it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from tiny_run import run_tiny

from fastcifar.cli import main
from fastcifar.data import cifar as cifar_module
from fastcifar.data.cifar import SYNTHETIC_MARKER, get_spec, raw_dir, read_split
from fastcifar.data.files import md5_file
from fastcifar.data.info import describe
from fastcifar.data.manifest import load_manifest
from fastcifar.data.pickles import dumps_py2, load_pickle
from fastcifar.data.prepare import prepare
from fastcifar.data.synth import write_synthetic
from fastcifar.errors import FastcifarError

TRAIN, TEST = 4000, 1000  # images: not CIFAR-10's 50,000 / 10,000
NAMES = [f"kind_{i}" for i in range(10)]  # the user's own class names, read from the meta file
FORMATS = {"gpu": ("npy",), "torch": ("npy",), "ffcv": ("npy", "ffcv"), "dali": ("npy", "dali")}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_custom_folder(root: Path, train: int = TRAIN, test: int = TEST) -> Path:
    """A CIFAR-10-layout folder that is nobody's stand-in: synthetic pixels (learnable), rewritten as Python-2-style
    pickles without any synthetic mark, with the user's class names in batches.meta."""
    write_synthetic("cifar10", root, train=train, test=test, seed=3)
    folder = raw_dir("cifar10", root)
    (folder / SYNTHETIC_MARKER).unlink()
    spec = get_spec("cifar10")
    for number, name in enumerate((*spec.train_files, *spec.test_files), start=1):
        batch = load_pickle(folder / name, fix="")
        batch[b"batch_label"] = f"my batch {number}".encode()
        (folder / name).write_bytes(dumps_py2(batch))
    (folder / spec.meta_file).write_bytes(dumps_py2({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}))
    return folder


@pytest.fixture(scope="module")
def custom_root(tmp_path_factory) -> Path:
    """A root with the custom folder prepared as custom data in every format (read-only for the tests)."""
    root = tmp_path_factory.mktemp("custom")
    make_custom_folder(root)
    prepare("cifar10", root, formats=("npy", "ffcv", "dali"), progress=False, custom=True)
    return root


def test_refused_without_the_flag_with_a_message_naming_it(tmp_path):
    make_custom_folder(tmp_path)
    with pytest.raises(FastcifarError) as err:
        prepare("cifar10", tmp_path, formats=("npy",), progress=False)
    message = str(err.value)
    assert "holds 4000 train images where CIFAR-10 has 50000" in message
    assert f"`fastcifar data prepare cifar10 --root {tmp_path} --custom`" in message
    assert not (tmp_path / "prepared" / "cifar10" / "manifest.json").exists()
    assert main(["data", "prepare", "cifar10", "--root", str(tmp_path), "--formats", "npy"]) == 2


def test_official_counts_with_other_bytes_are_not_official(tmp_path, monkeypatch):
    """A folder with CIFAR-10's counts whose files differ from the official ones is not labelled official."""
    make_custom_folder(tmp_path, train=50, test=10)
    monkeypatch.setitem(cifar_module.DATASETS, "cifar10",
                        dataclasses.replace(get_spec("cifar10"), train_count=50, test_count=10))
    with pytest.raises(FastcifarError, match=r"batches.meta' differs from the official CIFAR-10 file \(md5 "
                                             r"[0-9a-f]{32}, official 5ff9c542aee3614f3951f8cda6e48888\); "
                                             r".* --custom`"):
        prepare("cifar10", tmp_path, formats=("npy",), progress=False)
    assert prepare("cifar10", tmp_path, formats=("npy",), progress=False, custom=True)["source"] == "custom"


def test_prepared_manifest_records_source_counts_classes_and_md5s(custom_root):
    manifest = load_manifest("cifar10", custom_root, require=("npy", "ffcv", "dali"))
    assert manifest["source"] == "custom" and manifest["synthetic"] is False
    assert manifest["splits"] == {"train": {"count": TRAIN}, "test": {"count": TEST}}
    assert manifest["class_names"] == NAMES and manifest["num_classes"] == 10
    folder = raw_dir("cifar10", custom_root)
    assert manifest["sources"] == {p.name: md5_file(p) for p in folder.iterdir()}  # all 7 raw files
    assert len(manifest["sources"]) == 7
    row = next(r for r in describe(custom_root) if r["dataset"] == "cifar10")
    assert (row["source"], row["train"], row["test"]) == ("custom", TRAIN, TEST)
    assert read_split("cifar10", custom_root, "test", custom=True).source == "custom"
    # once custom, always named so: a later prepare without the flag is refused, and hints carry the flag
    with pytest.raises(FastcifarError, match=r"was prepared as custom data; pass --custom .*--formats npy --custom`"):
        prepare("cifar10", custom_root, formats=("npy",), progress=False)
    with pytest.raises(FastcifarError, match=r"lacks the prepared format\(s\) dali:png; run .* --dali-encoding png "
                                             r"--custom`"):
        load_manifest("cifar10", custom_root, require=("dali:png",))


def test_other_class_counts_come_from_the_meta_file(tmp_path):
    folder = make_custom_folder(tmp_path, train=60, test=20)
    (folder / "batches.meta").write_bytes(dumps_py2({b"label_names": [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h",
                                                                       b"i", b"j", b"k", b"l"]}))
    with pytest.raises(FastcifarError, match=r"lacks 10 class names .* --custom`"):
        read_split("cifar10", tmp_path, "train")
    manifest = prepare("cifar10", tmp_path, formats=("npy",), progress=False, custom=True)
    assert manifest["num_classes"] == 12 and manifest["class_names"][-1] == "l"
    (folder / "batches.meta").write_bytes(dumps_py2({b"label_names": [b"a", b"b", b"c"]}))  # labels reach 9
    with pytest.raises(FastcifarError, match=r"labels in \[0, 9\], outside \[0, 3\)"):
        read_split("cifar10", tmp_path, "train", custom=True)


@pytest.mark.parametrize("loader", ["gpu", "torch", "ffcv", "dali"])
def test_trains_with_every_loader_and_is_labelled_custom(loader, custom_root, tmp_path, capsys):
    run, records, summary = run_tiny(custom_root, tmp_path, data={"loader": loader, "batch_size": 250},
                                     augment={"crop_padding": 2, "hflip": 0.5}, train={"epochs": 1})
    assert summary["source"] == "custom" and summary["synthetic"] is False and summary["loader"] == loader
    assert records[-1]["step"] == TRAIN // 250  # every image of the 4,000, in 16 batches
    assert records[-1]["test_acc"] > 0.2  # 10 classes: well above chance after one epoch
    assert "CUSTOM DATA" in capsys.readouterr().out
    assert main(["results", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "custom" in table and "SYNTHETIC" not in table
    if loader == "gpu":  # eval reads the same manifest
        from fastcifar.engine.evaluate import evaluate

        result = evaluate(run, split="test", device="cpu")
        assert result["source"] == "custom" and result["images"] == TEST
        assert "custom" in capsys.readouterr().out


def test_bench_reports_custom_data(custom_root, tmp_path):
    path = tmp_path / "b.json"
    code = main(["bench", "--root", str(custom_root), "--dataset", "cifar10", "--views", "loader", "--loaders",
                 "gpu,torch,ffcv,dali", "--image-sizes", "32", "--batch-size", "250", "--iters", "2", "--warmup", "1",
                 "--min-seconds", "0", "--workers", "1", "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    assert data["data"]["source"] == "custom" and data["data"]["synthetic"] is False
    assert data["data"]["train_images"] == TRAIN and not data["failed"]
    assert sorted(r["loader"] for r in data["rows"]) == ["dali", "ffcv", "gpu", "torch"]


def test_user_archive_is_prepared_with_archive_flag(tmp_path):
    """`data prepare --custom --archive FILE` extracts a user's tarball (never over an existing folder)."""
    import tarfile

    source = tmp_path / "src"
    folder = make_custom_folder(source, train=60, test=20)
    archive = tmp_path / "mine.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    root = tmp_path / "root"
    assert main(["data", "prepare", "cifar10", "--root", str(root), "--formats", "npy", "--custom",
                 "--archive", str(archive)]) == 0
    assert load_manifest("cifar10", root)["source"] == "custom"
    shutil.rmtree(root / "prepared")
    assert main(["data", "prepare", "cifar10", "--root", str(root), "--archive", str(archive), "--custom"]) == 2
