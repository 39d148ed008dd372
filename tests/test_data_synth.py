"""Synthetic stand-ins: learnable (linear and small CNN beat chance widely), labelled, never overwrite real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fastcifar.data.cifar import SYNTHETIC_MARKER, raw_dir, read_split
from fastcifar.data.synth import write_synthetic
from fastcifar.errors import FastcifarError


def _pixels(split):
    return split.images.reshape(len(split), -1).astype(np.float64) / 255.0  # [N, 3072]


@pytest.mark.parametrize("dataset,min_acc", [("cifar10", 0.6), ("cifar100", 0.3)])
def test_linear_model_on_pixels_beats_chance(synth_root, dataset, min_acc):
    """Ridge regression to one-hot targets on raw pixels (chance: 0.1 / 0.01)."""
    root = synth_root(dataset)
    train, test = read_split(dataset, root, "train"), read_split(dataset, root, "test")
    x, xt = _pixels(train), _pixels(test)
    mean = x.mean(0)
    x, xt = x - mean, xt - mean
    gram = x @ x.T + 10.0 * np.eye(len(x))  # dual form of ridge: [N, N] with N = 512 < 3072 pixels

    def accuracy(labels, test_labels, classes):
        weights = x.T @ np.linalg.solve(gram, np.eye(classes)[labels])  # [3072, classes]
        return float(((xt @ weights).argmax(1) == test_labels).mean())

    assert accuracy(train.labels, test.labels, len(train.class_names)) >= min_acc
    if train.coarse_labels is not None:  # coarse labels are learnable too (chance 0.05)
        assert accuracy(train.coarse_labels, test.coarse_labels, 20) >= 0.3


@pytest.fixture
def one_thread():
    """A tiny CNN runs faster on one thread than on two contended ones (tests share 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_small_cnn_learns_in_two_epochs(synth_root, one_thread):
    torch.manual_seed(0)
    root = synth_root("cifar10")
    train, test = read_split("cifar10", root, "train"), read_split("cifar10", root, "test")
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0 - 0.5  # noqa: E731  [N, 3, 32, 32]
    x, y, xt = to_tensor(train.images), torch.from_numpy(train.labels), to_tensor(test.images)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(2):
        for idx in torch.randperm(len(x)).split(64):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(xt).argmax(1).numpy() == test.labels).mean())
    assert accuracy >= 0.35, accuracy  # chance 0.1


def test_marked_synthetic_and_replaces_only_synthetic(tmp_path):
    folder = write_synthetic("cifar10", tmp_path, train=20, test=10, seed=1)
    assert (folder / SYNTHETIC_MARKER).read_text().startswith("SYNTHETIC")
    assert read_split("cifar10", tmp_path, "test").synthetic
    first = (folder / "test_batch").read_bytes()
    write_synthetic("cifar10", tmp_path, train=20, test=10, seed=2)  # a synthetic folder may be replaced
    assert (folder / "test_batch").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # no temp folders left
    (folder / SYNTHETIC_MARKER).unlink()  # now it looks like real data
    with pytest.raises(FastcifarError, match="already holds real CIFAR-10 data; write the synthetic stand-in to "
                                             "another root"):
        write_synthetic("cifar10", tmp_path, train=20, test=10)


def test_tiny_and_invalid_sizes(tmp_path):
    write_synthetic("cifar100", tmp_path, train=5, test=1)
    assert len(read_split("cifar100", tmp_path, "train")) == 5
    assert len(read_split("cifar10", write_synthetic("cifar10", tmp_path, train=5, test=1).parent, "train")) == 5
    with pytest.raises(FastcifarError, match="at least 5 train and 1 test images"):
        write_synthetic("cifar10", tmp_path / "x", train=4, test=1)
    assert raw_dir("cifar10", tmp_path).is_dir()
