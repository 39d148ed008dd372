"""Reading the official pickle layouts: round trips, orientation, validation errors."""

from __future__ import annotations

import pickle
import pickletools
import shutil

import numpy as np
import pytest

from fastcifar.data.cifar import (
    DATASETS,
    SYNTHETIC_MARKER,
    get_spec,
    raw_dir,
    read_split,
)
from fastcifar.data.names import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_TO_COARSE,
)
from fastcifar.data.synth import write_synthetic
from fastcifar.errors import FastcifarError


def _plain_load(path):
    """The reference reader: the standard unpickler, as torchvision-style code reads CIFAR."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_synthetic_round_trip_equals_files(synth_root, dataset):
    root, spec = synth_root(dataset), get_spec(dataset)
    for split in ("train", "test"):
        got = read_split(dataset, root, split)
        batches = [_plain_load(raw_dir(dataset, root) / name) for name in spec.split_files(split)]
        data = np.concatenate([b[b"data"] for b in batches])  # [N, 3072] CHW rows
        assert got.images.shape == (len(data), 32, 32, 3) and got.images.dtype == np.uint8
        assert got.images.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got.images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels = np.concatenate([b[spec.label_key] for b in batches])
        np.testing.assert_array_equal(got.labels, labels)
        assert got.labels.dtype == np.int64 and got.synthetic is True
        assert all(b"synthetic" in b[b"batch_label"] for b in batches)
    assert len(read_split(dataset, root, "train")) == 512 and len(read_split(dataset, root, "test")) == 256


def test_cifar10_layout_matches_official(synth_root):
    folder = raw_dir("cifar10", synth_root("cifar10"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch", SYNTHETIC_MARKER])
    batch = _plain_load(folder / "data_batch_1")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].shape == (103, 3072) and batch[b"data"].dtype == np.uint8  # 512 = 103 + 4 * 102
    assert isinstance(batch[b"filenames"][0], bytes) and isinstance(batch[b"labels"][0], int)
    meta = _plain_load(folder / "batches.meta")
    assert [n.decode() for n in meta[b"label_names"]] == list(CIFAR10_CLASSES)
    # Python 2 style protocol 2: no `_codecs.encode` calls, no unicode strings, numpy under numpy.core
    raw = (folder / "data_batch_1").read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert raw[:2] == b"\x80\x02" and "BINUNICODE" not in ops and b"_codecs" not in raw
    assert b"numpy.core.multiarray\n_reconstruct" in raw


def test_cifar100_labels_and_names(synth_root):
    root = synth_root("cifar100")
    train = read_split("cifar100", root, "train")
    assert train.class_names == list(CIFAR100_CLASSES) and train.coarse_class_names == list(CIFAR100_COARSE_CLASSES)
    np.testing.assert_array_equal(train.coarse_labels, np.array(CIFAR100_FINE_TO_COARSE)[train.labels])
    assert np.bincount(train.labels, minlength=100).min() == 5  # balanced: 512 = 100 * 5 + 12
    batch = _plain_load(raw_dir("cifar100", root) / "train")
    assert set(batch) == {b"batch_label", b"fine_labels", b"coarse_labels", b"data", b"filenames"}


def test_synthetic_is_deterministic(tmp_path):
    a = write_synthetic("cifar10", tmp_path / "a", train=40, test=10, seed=3)
    b = write_synthetic("cifar10", tmp_path / "b", train=40, test=10, seed=3)
    c = write_synthetic("cifar10", tmp_path / "c", train=40, test=10, seed=4)
    assert (a / "data_batch_2").read_bytes() == (b / "data_batch_2").read_bytes()
    assert (a / "data_batch_2").read_bytes() != (c / "data_batch_2").read_bytes()


def test_python3_pickles_and_pixel_orientation(tmp_path):
    """A file written by Python 3's own pickler (bytes via _codecs.encode) with a known pattern:
    row = R plane, G plane, B plane; the image must come out NHWC with R in channel 0."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((2, 3, 32, 32), np.uint8)
    data[0, 0] = 255  # image 0 pure red
    data[1, 2, 5, 7] = 9  # image 1: blue at row 5, column 7
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {b"batch_label": b"synthetic hand-made", b"labels": [3, 9], b"data": data.reshape(2, -1),
                 b"filenames": [b"a.png", b"b.png"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    test = read_split("cifar10", tmp_path, "test")
    assert test.synthetic and test.labels.tolist() == [3, 9]
    assert (test.images[0, :, :, 0] == 255).all() and (test.images[0, :, :, 1:] == 0).all()
    assert test.images[1, 5, 7, 2] == 9 and test.images[1].sum() == 9
    assert len(read_split("cifar10", tmp_path, "train")) == 10


def _copy(synth_root, dataset, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synth_root(dataset), root)
    return root, raw_dir(dataset, root)


def test_truncated_file_names_file_and_fix(synth_root, tmp_path):
    root, folder = _copy(synth_root, "cifar10", tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(FastcifarError) as err:
        read_split("cifar10", root, "train")
    message = str(err.value)
    assert str(path) in message and "is truncated" in message and "fastcifar data download cifar10" in message


def test_text_file_and_missing_file(synth_root, tmp_path):
    root, folder = _copy(synth_root, "cifar10", tmp_path)
    (folder / "test_batch").write_text("<html>404 Not Found</html>\n")
    with pytest.raises(FastcifarError, match=r"test_batch' is not a valid CIFAR pickle.*delete it and run"):
        read_split("cifar10", root, "test")
    (folder / "data_batch_5").unlink()
    with pytest.raises(FastcifarError, match=r"data_batch_5' is missing; run `fastcifar data download cifar10"):
        read_split("cifar10", root, "train")
    with pytest.raises(FastcifarError, match=r"No CIFAR-100 data in .*fastcifar data synth cifar100"):
        read_split("cifar100", root, "train")


def test_cifar10_batch_where_cifar100_expected(synth_root, tmp_path):
    root, folder = _copy(synth_root, "cifar100", tmp_path)
    shutil.copy(raw_dir("cifar10", synth_root("cifar10")) / "data_batch_1", folder / "train")
    with pytest.raises(FastcifarError, match=r"train' holds CIFAR-10 data where CIFAR-100 is expected"):
        read_split("cifar100", root, "train")
    shutil.copy(raw_dir("cifar10", synth_root("cifar10")) / "batches.meta", folder / "meta")
    with pytest.raises(FastcifarError, match=r"meta' lacks 100 class names under b'fine_label_names'"):
        read_split("cifar100", root, "test")


def test_bad_labels_and_shapes(synth_root, tmp_path):
    root, folder = _copy(synth_root, "cifar10", tmp_path)
    batch = _plain_load(folder / "test_batch")
    batch[b"labels"][7] = 10
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(FastcifarError, match=r"labels in \[0, 10\], outside \[0, 10\)"):
        read_split("cifar10", root, "test")
    batch[b"labels"] = batch[b"labels"][:-1]
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(FastcifarError, match=r"has 255 labels for 256 images"):
        read_split("cifar10", root, "test")
    batch[b"data"] = batch[b"data"][:, :1000]
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(FastcifarError, match=r"b'data' is ndarray \(256, 1000\), not uint8 \[N, 3072\]"):
        read_split("cifar10", root, "test")


def test_real_data_must_have_official_counts(synth_root, tmp_path):
    """Without the synthetic marks, 256 test images are a broken download, not a dataset."""
    root, folder = _copy(synth_root, "cifar10", tmp_path)
    (folder / SYNTHETIC_MARKER).unlink()
    batch = _plain_load(folder / "test_batch")
    batch[b"batch_label"] = b"testing batch 1 of 1"
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(FastcifarError, match=r"holds 256 test images where CIFAR-10 has 10000"):
        read_split("cifar10", root, "test")
    assert read_split("cifar10", root, "train").synthetic  # its batch labels still say synthetic


def test_unknown_dataset_and_split(synth_root):
    with pytest.raises(FastcifarError, match="Unknown dataset 'cifar1000'; choose one of cifar10, cifar100"):
        get_spec("cifar1000")
    with pytest.raises(FastcifarError, match="Unknown split 'val'"):
        read_split("cifar10", synth_root("cifar10"), "val")
    assert set(DATASETS) == {"cifar10", "cifar100"}
