"""prepare(): npy / ffcv / dali formats read back exactly; manifest; idempotent; interrupted runs recover."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastcifar.data import prepare as prepare_module
from fastcifar.data.cifar import read_split, source_files
from fastcifar.data.manifest import load_manifest, prepared_dir
from fastcifar.data.prepare import prepare
from fastcifar.data.synth import write_synthetic
from fastcifar.errors import FastcifarError

ALL = ("npy", "ffcv", "dali")
ENCODINGS = ("raw", "png", "jpeg")


@pytest.fixture(scope="module")
def c100(prepared_root):
    """cifar100 (fine + coarse labels) with every format and encoding, and its raw splits."""
    root = prepared_root("cifar100", formats=ALL, dali_encoding=ENCODINGS)
    return root, load_manifest("cifar100", root, require=("npy", "ffcv", "dali:raw", "dali:png", "dali:jpeg")), {
        s: read_split("cifar100", root, s) for s in ("train", "test")}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_contents(c100):
    root, manifest, splits = c100
    train = splits["train"]
    assert manifest["dataset"] == "cifar100" and manifest["synthetic"] is True
    assert manifest["splits"] == {"train": {"count": 512}, "test": {"count": 256}}
    assert manifest["num_classes"] == 100 and manifest["class_names"] == train.class_names
    assert manifest["coarse_class_names"] == train.coarse_class_names
    files = source_files("cifar100", root)
    assert manifest["sources"] == {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in files}
    pixels = train.images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(manifest["mean"], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(manifest["std"], pixels.std(0), rtol=1e-9)
    assert set(manifest["formats"]) == {"npy", "ffcv", "dali"} and set(manifest["formats"]["dali"]) == set(ENCODINGS)
    assert Path(manifest["dir"]) == prepared_dir("cifar100", root)
    on_disk = json.loads((prepared_dir("cifar100", root) / "manifest.json").read_text())
    assert on_disk == {k: v for k, v in manifest.items() if k != "dir"}


def test_npy_reads_back_exactly(c100):
    root, manifest, splits = c100
    base = Path(manifest["dir"])
    for name, split in splits.items():
        files = manifest["formats"]["npy"][name]["files"]
        images = np.load(base / files["images"], mmap_mode="r")
        assert images.shape == (len(split), 32, 32, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, split.images)
        labels = np.load(base / files["labels"])
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, split.labels)
        np.testing.assert_array_equal(np.load(base / files["coarse_labels"]), split.coarse_labels)


def test_ffcv_reads_back_exactly(c100):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    root, manifest, splits = c100
    for name, split in splits.items():
        loader = Loader(str(Path(manifest["dir"]) / manifest["formats"]["ffcv"][name]["files"]["beton"]),
                        batch_size=100, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()],
                                   "coarse_label": [IntDecoder()]})
        images, labels, coarse = [], [], []
        for image, label, coarse_label in loader:  # ffcv reuses its buffers: copy each batch
            images.append(np.array(image))
            labels.append(np.array(label).reshape(-1))
            coarse.append(np.array(coarse_label).reshape(-1))
        np.testing.assert_array_equal(np.concatenate(images), split.images)
        np.testing.assert_array_equal(np.concatenate(labels), split.labels)
        np.testing.assert_array_equal(np.concatenate(coarse), split.coarse_labels)


def _dali_read(base: Path, entry: dict, split: str, count: int):
    """Read a whole split through a CPU DALI pipeline -> (images uint8 [N,32,32,3], labels, coarse labels)."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    files = entry[split]["files"]
    pipe = Pipeline(batch_size=count, num_threads=2, device_id=None)
    with pipe:
        image, label, coarse = fn.readers.webdataset(
            paths=[str(base / p) for p in files["shards"]], index_paths=[str(base / p) for p in files["index"]],
            ext=[entry["ext"], entry["label_ext"], entry["coarse_label_ext"]], random_shuffle=False, name="reader")
        if entry["encoding"] == "raw":
            image = fn.reshape(image, shape=[32, 32, 3])  # 3072 raw bytes are HWC
        else:
            image = fn.decoders.image(image, device="cpu", output_type=types.RGB)
        pipe.set_outputs(image, label, coarse)
    pipe.build()
    assert pipe.epoch_size("reader") == count
    images, labels, coarse = pipe.run()
    as_int = lambda t: np.array([int(bytes(np.array(t[i])).decode()) for i in range(len(t))])  # noqa: E731
    return np.stack([np.array(images[i]) for i in range(len(images))]), as_int(labels), as_int(coarse)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_dali_reads_back(c100, encoding):
    root, manifest, splits = c100
    entry = manifest["formats"]["dali"][encoding]
    for name, split in splits.items():
        images, labels, coarse = _dali_read(Path(manifest["dir"]), entry, name, len(split))
        assert images.shape == split.images.shape and images.dtype == np.uint8
        np.testing.assert_array_equal(labels, split.labels)
        np.testing.assert_array_equal(coarse, split.coarse_labels)
        error = np.abs(images.astype(np.int16) - split.images).mean()
        if encoding == "jpeg":
            assert 0 < error < 6.0, error  # quality 95, 4:4:4 on noisy 32 px images
        else:
            assert error == 0  # raw and png are lossless


def test_dali_index_matches_wds2idx_and_shards(tmp_path, synth_root):
    """Our index files equal what DALI's own wds2idx writes; 10,000-sample shards become several small ones."""
    wds2idx = pytest.importorskip("wds2idx", reason="wds2idx ships with nvidia-dali")
    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    manifest = prepare("cifar10", root, formats=("dali",), dali_encoding="png", progress=False, dali_shard_size=200)
    entry = manifest["formats"]["dali"]["png"]
    shards = [Path(p).name for p in entry["train"]["files"]["shards"]]
    assert shards == ["train-0000.tar", "train-0001.tar", "train-0002.tar"]
    base = Path(manifest["dir"])
    for shard, index in zip(entry["train"]["files"]["shards"], entry["train"]["files"]["index"]):
        reference = tmp_path / "reference.idx"
        creator = wds2idx.IndexCreator(str(base / shard), str(reference), verbose=False)
        creator.create_index()
        creator.close()
        assert (base / index).read_text() == reference.read_text()
    images, labels, _ = _dali_read_cifar10(base, entry)
    split = read_split("cifar10", root, "train")
    np.testing.assert_array_equal(images, split.images)
    np.testing.assert_array_equal(labels, split.labels)


def _dali_read_cifar10(base, entry):
    patched = {**entry, "coarse_label_ext": entry["label_ext"]}  # CIFAR-10 has no coarse label entry
    return _dali_read(base, patched, "train", 512)


def test_rerun_is_a_noop_and_formats_add_incrementally(tmp_path, synth_root, capsys):
    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    base = prepared_dir("cifar10", root)
    first = prepare("cifar10", root, formats=("npy",), progress=False)
    assert first["built"] == ["npy"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (base / "npy").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700: shared roots stay readable
    assert (base / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask
    before = _mtimes(base)
    capsys.readouterr()
    again = prepare("cifar10", root, formats=("npy",), progress=True)
    assert again["built"] == [] and _mtimes(base) == before
    assert "npy up to date" in " ".join(capsys.readouterr().err.split())
    added = prepare("cifar10", root, formats=("npy", "dali"), progress=False)
    assert added["built"] == ["dali:raw"]
    after = _mtimes(base)
    npy_after = {k: v for k, v in after.items() if k.startswith("npy/")}
    assert npy_after == {k: v for k, v in before.items() if k.startswith("npy/")}
    assert set(load_manifest("cifar10", root, require=("npy", "dali"))["formats"]) == {"npy", "dali"}


def test_sources_changed_rebuilds_everything(tmp_path):
    write_synthetic("cifar10", tmp_path, train=30, test=10, seed=1)
    old = prepare("cifar10", tmp_path, formats=("npy", "dali"), progress=False)
    write_synthetic("cifar10", tmp_path, train=40, test=10, seed=2)
    new = prepare("cifar10", tmp_path, formats=("npy",), progress=False)
    assert new["built"] == ["npy"] and new["sources"] != old["sources"]
    assert new["splits"]["train"]["count"] == 40 and "dali" not in new["formats"]
    assert not (prepared_dir("cifar10", tmp_path) / "dali").exists()  # stale format removed, not kept as complete
    images = np.load(Path(new["dir"]) / "npy/train_images.npy")
    np.testing.assert_array_equal(images, read_split("cifar10", tmp_path, "train").images)


def test_interrupted_ffcv_write_is_recovered(tmp_path, synth_root, monkeypatch):
    import ffcv.writer

    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    base = prepared_dir("cifar10", root)
    original = ffcv.writer.DatasetWriter.finalize

    def crash(self, allocations):  # the writer dies after workers wrote the pages, before the table
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(ffcv.writer.DatasetWriter, "finalize", crash)  # inherited by the forked writer process
    with pytest.raises(FastcifarError, match=r"Writing '.*/prepared/cifar10/ffcv/train.beton' for the ffcv format "
                                             r"failed \(KeyboardInterrupt: simulated kill\)"):
        prepare("cifar10", root, formats=("npy", "ffcv"), progress=False)
    assert not (base / ".lock").exists() and not list(base.glob(".tmp-*"))
    manifest = json.loads((base / "manifest.json").read_text())
    assert set(manifest["formats"]) == {"npy"}  # npy finished before the crash; ffcv is not recorded
    assert not (base / "ffcv").exists()
    with pytest.raises(FastcifarError, match=r"lacks the prepared format\(s\) ffcv; run `fastcifar data prepare "
                                             r"cifar10 "
                                             r".* --formats ffcv`"):
        load_manifest("cifar10", root, require=("npy", "ffcv"))
    # a hard kill leaves temp folders and an unrecorded final folder behind: neither may count as complete
    (base / ".tmp-ffcv-stale").mkdir()
    (base / ".tmp-ffcv-stale" / "train.beton").write_bytes(b"partial")
    (base / "ffcv").mkdir()
    (base / "ffcv" / "train.beton").write_bytes(b"partial")
    monkeypatch.setattr(ffcv.writer.DatasetWriter, "finalize", original)
    npy_before = {k: v for k, v in _mtimes(base).items() if k.startswith("npy/")}
    result = prepare("cifar10", root, formats=("npy", "ffcv"), progress=False)
    assert result["built"] == ["ffcv"]
    assert not list(base.glob(".tmp-*"))
    assert {k: v for k, v in _mtimes(base).items() if k.startswith("npy/")} == npy_before
    assert (base / "ffcv" / "train.beton").stat().st_size > 512 * 3072
    load_manifest("cifar10", root, require=("npy", "ffcv"))


def test_interrupted_npy_write_leaves_nothing(tmp_path, synth_root, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)

    def half_write(splits, out, folder):
        (out / "train_images.npy").write_bytes(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "write_npy", half_write)
    with pytest.raises(FastcifarError, match=r"Writing '.*/prepared/cifar10/npy' for the npy format failed "
                                             r"\(disk full\)"):
        prepare("cifar10", root, formats=("npy",), progress=False)
    base = prepared_dir("cifar10", root)
    assert not (base / "npy").exists() and not list(base.glob(".tmp-*")) and not (base / "manifest.json").exists()
    with pytest.raises(FastcifarError, match=r"cifar10 is not prepared in .*; run `fastcifar data prepare cifar10 "
                                             r"--root "
                                             r".* --formats npy`"):
        load_manifest("cifar10", root)


def test_deleted_file_means_incomplete(tmp_path, synth_root):
    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    manifest = prepare("cifar10", root, formats=("dali",), dali_encoding="raw", progress=False)
    (Path(manifest["dir"]) / manifest["formats"]["dali"]["raw"]["test"]["files"]["index"][0]).unlink()
    with pytest.raises(FastcifarError, match=r"The prepared dali:raw format of cifar10: '.*/dali/raw/test-0000.idx' "
                                             r"is missing; rebuild it with `fastcifar data prepare .* --formats dali`"):
        load_manifest("cifar10", root, require=("dali",))
    assert prepare("cifar10", root, formats=("dali",), progress=False)["built"] == ["dali:raw"]
    load_manifest("cifar10", root, require=("dali:raw",))
    with pytest.raises(FastcifarError, match=r"--formats dali --dali-encoding png`"):
        load_manifest("cifar10", root, require=("dali:png",))


def test_missing_data_messages(tmp_path):
    with pytest.raises(FastcifarError, match=r"No cifar10 data under .*fastcifar data download cifar10 --root .*"
                                             r"fastcifar data synth cifar10.*then `fastcifar data prepare cifar10"):
        load_manifest("cifar10", tmp_path)
    with pytest.raises(FastcifarError, match=r"No CIFAR-100 raw data in .*fastcifar data download cifar100"):
        prepare("cifar100", tmp_path, formats=("npy",), progress=False)
    with pytest.raises(FastcifarError, match=r"Unknown data format 'tfrecord'"):
        prepare("cifar10", tmp_path, formats=("tfrecord",), progress=False)
    with pytest.raises(FastcifarError, match=r"No format to prepare"):
        prepare("cifar10", tmp_path, formats=(), progress=False)
    with pytest.raises(FastcifarError, match=r"Unknown DALI encoding 'webp'"):
        prepare("cifar10", tmp_path, formats=("dali",), dali_encoding="webp", progress=False)
