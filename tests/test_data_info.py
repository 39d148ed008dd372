"""describe(): the rows behind `fastcifar data info`."""

from __future__ import annotations

import shutil

from fastcifar.data.cifar import raw_dir
from fastcifar.data.info import describe
from fastcifar.data.prepare import prepare

COLUMNS = ["dataset", "raw", "source", "train", "test", "formats", "raw_size", "prepared_size", "problem"]


def test_empty_root(tmp_path):
    rows = describe(tmp_path / "nothing")
    assert [r["dataset"] for r in rows] == ["cifar10", "cifar100"]
    for row in rows:
        assert list(row) == COLUMNS
        assert row["raw"] is False and row["formats"] == [] and row["train"] is None and row["raw_size"] == "0 B"


def test_raw_prepared_and_broken(tmp_path, synth_root):
    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    shutil.copytree(synth_root("cifar100"), root, dirs_exist_ok=True)
    raw_only = {r["dataset"]: r for r in describe(root)}
    assert raw_only["cifar10"]["raw"] and raw_only["cifar10"]["source"] == "SYNTHETIC"
    assert (raw_only["cifar10"]["train"], raw_only["cifar10"]["test"]) == (512, 256)
    assert raw_only["cifar10"]["raw_size"].endswith("MiB") and raw_only["cifar10"]["prepared_size"] == "0 B"

    prepare("cifar10", root, formats=("npy", "dali"), dali_encoding=("raw", "png"), progress=False)
    (raw_dir("cifar100", root) / "test").write_bytes(b"not a pickle")
    rows = {r["dataset"]: r for r in describe(root)}
    assert rows["cifar10"]["formats"] == ["npy", "dali:raw", "dali:png"]
    assert rows["cifar10"]["prepared_size"].endswith("MiB") and rows["cifar10"]["problem"] is None
    assert "test' is not a valid CIFAR pickle" in rows["cifar100"]["problem"]

    (raw_dir("cifar100", root) / "meta").unlink()
    problem = {r["dataset"]: r for r in describe(root)}["cifar100"]["problem"]
    assert "is incomplete; run `fastcifar data download cifar100" in problem
