"""Prepared data that cannot rot unseen: per-file sha256 in the manifest, `fastcifar data verify`, truncation named."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fastcifar.cli import main
from fastcifar.data.manifest import MANIFEST, load_manifest, prepared_dir
from fastcifar.data.prepare import prepare
from fastcifar.data.verify import verify
from fastcifar.errors import FastcifarError


@pytest.fixture()
def root(tmp_path, synth_root) -> Path:
    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    prepare("cifar10", root, formats=("npy", "dali"), progress=False)
    return root


def test_manifest_records_size_and_sha256_of_every_file(root):
    base = prepared_dir("cifar10", root)
    manifest = json.loads((base / MANIFEST).read_text())
    for entry in (manifest["formats"]["npy"], manifest["formats"]["dali"]["raw"]):
        assert entry["checksums"] and entry["bytes"] == sum(c["bytes"] for c in entry["checksums"].values())
        for rel, check in entry["checksums"].items():
            data = (base / rel).read_bytes()
            assert check == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    rows = verify("cifar10", root)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 4 + 4  # npy: 4 files; dali: tar + idx per split
    assert main(["data", "verify", "--root", str(root)]) == 0


def test_bit_rot_is_found_struck_and_rebuilt(root, capsys):
    base = prepared_dir("cifar10", root)
    images = base / "npy" / "train_images.npy"
    data = bytearray(images.read_bytes())
    data[-1] ^= 0xFF  # one flipped pixel, same size: the loaders' fast check cannot see it
    images.write_bytes(bytes(data))
    load_manifest("cifar10", root, require=("npy",))  # passes: no hashing at train start
    assert main(["data", "verify", "cifar10", "--root", str(root)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"Damaged prepared data: '{images}' (damaged (sha256 differs))" in out
    assert f"rebuild with `fastcifar data prepare cifar10 --root {root} --formats npy`" in out
    with pytest.raises(FastcifarError, match=r"lacks the prepared format\(s\) npy"):  # struck: no run trains on it
        load_manifest("cifar10", root, require=("npy",))
    load_manifest("cifar10", root, require=("dali",))  # the intact format stays
    assert prepare("cifar10", root, formats=("npy",), progress=False)["built"] == ["npy"]
    assert {r["status"] for r in verify(None, root)} == {"ok"}
    assert not (base / ".lock").exists()


def test_truncated_file_is_reported_as_damaged(root):
    base = prepared_dir("cifar10", root)
    shard = base / "dali" / "raw" / "train-0000.tar"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(FastcifarError, match=rf"'{shard}' is damaged \({size - 1000} of {size} bytes\); rebuild it "
                                             rf"with `fastcifar data prepare cifar10 --root .* --formats dali`"):
        load_manifest("cifar10", root, require=("dali",))
    with pytest.raises(FastcifarError, match=rf"'{shard}' \(damaged \({size - 1000} of {size} bytes\)\)"):
        verify("cifar10", root)
    assert prepare("cifar10", root, formats=("dali",), progress=False)["built"] == ["dali:raw"]
    assert shard.stat().st_size == size


def test_nothing_prepared_and_old_manifests(tmp_path, root):
    with pytest.raises(FastcifarError, match=r"Nothing is prepared under .*; run `fastcifar data prepare DATASET"):
        verify(None, tmp_path / "empty")
    with pytest.raises(FastcifarError, match=r"cifar100 is not prepared in"):
        verify("cifar100", root)
    base = prepared_dir("cifar10", root)
    manifest = json.loads((base / MANIFEST).read_text())
    del manifest["formats"]["npy"]["checksums"]  # as written before checksums existed
    (base / MANIFEST).write_text(json.dumps(manifest))
    assert {r["status"] for r in verify("cifar10", root) if r["format"] == "npy"} == {"no checksum recorded"}
    load_manifest("cifar10", root, require=("npy",))  # still trusted by its total size
