"""The restricted unpickler: pickles that try to run code are refused, and the code does not run."""

from __future__ import annotations

import builtins
import os
import pickle
import shutil

import numpy as np
import pytest

from fastcifar.data.cifar import raw_dir, read_split
from fastcifar.data.pickles import RestrictedUnpickler, dumps_py2, load_pickle
from fastcifar.errors import FastcifarError


class _SystemCall:
    """Unpickling this runs `os.system(command)` under the standard unpickler."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _OpenCall:
    """Unpickling this creates a file via builtins.open."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


class _EvalCall:
    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return (builtins.eval, (self.source,))


def _payloads(tmp_path):
    """(description, pickle bytes, path the payload would create) for each attack."""
    def batch(evil):  # the attack hides inside an otherwise plausible CIFAR batch
        return {b"batch_label": b"training batch 1 of 5", b"labels": [0], b"data": evil, b"filenames": [b"x.png"]}

    system_marker, open_marker, eval_marker = (tmp_path / n for n in ("by_system", "by_open", "by_eval"))
    return [
        ("os.system", pickle.dumps(batch(_SystemCall(f"touch {system_marker}")), protocol=2), system_marker),
        ("builtins.open", pickle.dumps(batch(_OpenCall(str(open_marker))), protocol=2), open_marker),
        ("builtins.eval", pickle.dumps(batch(_EvalCall(f"open({str(eval_marker)!r}, 'w')")), protocol=2), eval_marker),
    ]


def test_payloads_are_real_under_plain_pickle(tmp_path):
    """Sanity: the standard unpickler does run each payload (so the refusal below means something)."""
    for _, data, marker in _payloads(tmp_path):
        result = pickle.loads(data, encoding="bytes")
        if hasattr(result[b"data"], "close"):
            result[b"data"].close()
        assert marker.exists()


@pytest.mark.parametrize("index,expected", [(0, ".system"), (1, ".open"), (2, ".eval")])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, index, expected):
    name, data, marker = _payloads(tmp_path)[index]
    path = tmp_path / "data_batch_1"
    path.write_bytes(data)
    with pytest.raises(FastcifarError) as err:
        load_pickle(path, fix="run `fastcifar data download cifar10`")
    message = str(err.value)
    assert str(path) in message and expected in message and "refused" in message
    assert "fastcifar data download cifar10" in message
    assert not marker.exists(), f"{name} payload ran"


def test_malicious_batch_in_dataset_folder_is_refused(synth_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synth_root("cifar10"), root)
    _, data, marker = _payloads(tmp_path)[0]
    (raw_dir("cifar10", root) / "data_batch_2").write_bytes(data)
    with pytest.raises(FastcifarError, match=r"data_batch_2' is not a CIFAR pickle: it asks to load 'posix.system'"):
        read_split("cifar10", root, "train")
    assert not marker.exists()


def test_other_globals_refused(tmp_path):
    """Even harmless-looking classes outside the numpy allow-list are refused (e.g. collections.OrderedDict)."""
    import collections

    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps(collections.OrderedDict(a=1), protocol=2))
    with pytest.raises(FastcifarError, match="collections.OrderedDict"):
        load_pickle(path, fix="x")


def test_allowed_content_loads(tmp_path):
    """numpy arrays (numpy >= 2 and numpy.core spellings), bytes via _codecs, plain containers."""
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    obj = {b"data": array, b"labels": [1, 2, 3], b"names": [b"a", "b"]}
    for data in (pickle.dumps(obj, protocol=2), pickle.dumps(obj, protocol=4), dumps_py2(obj)):
        path = tmp_path / "ok"
        path.write_bytes(data)
        got = load_pickle(path, fix="x")
        np.testing.assert_array_equal(got[b"data"], array)
        assert got[b"labels"] == [1, 2, 3]


def test_codecs_encode_only_latin1(tmp_path):
    import io

    class _Encode:
        def __reduce__(self):
            import codecs

            return (codecs.encode, ("x", "rot13"))

    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(_Encode(), protocol=2)), encoding="bytes").load()
