"""CIFAR pickles, both ways: a restricted reader that cannot run code, and a Python-2-style writer.

The official CIFAR files are Python 2 pickles (protocol 2) of a dict whose `str` keys and values
load as `bytes` under `encoding="bytes"`, holding one numpy uint8 array. `pickle.load` would
import and call whatever a file names, so a file from an untrusted source could run code; the
reader here resolves only the few globals numpy needs to rebuild an array and refuses the rest.

The writer emits the same opcodes a Python 2 pickler did (`str` as BINSTRING, numpy globals
under `numpy.core`), so synthetic files are loadable by the same code path as the real ones,
and by Python 2 era tools.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fastcifar.errors import FastcifarError

try:  # numpy >= 2 moved the implementation; `numpy.core` is a deprecated shim there.
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes; only latin-1 allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> object: everything a CIFAR pickle may legitimately reference.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,  # files written by numpy < 2 (official)
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,  # files written by numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,  # bytes in Python 3 protocol-2 pickles
}


class _RefusedGlobal(Exception):
    """Raised by find_class; carries the refused name out of the C unpickler."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only numpy array reconstruction; any other global raises."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by CIFAR pickles")


def load_pickle(path: str | Path, fix: str) -> Any:
    """Load one CIFAR pickle safely (Python 2 `str` values arrive as `bytes`).

    Args:
        path: the file to read.
        fix: the remedy to name in error messages, e.g. "run `fastcifar data download cifar10`".

    Returns:
        The unpickled object (a dict with bytes keys for a CIFAR file; callers validate it).

    Raises:
        FastcifarError: the file is missing, truncated, not a pickle, or references anything other
            than numpy array reconstruction (which could run code); nothing in it was executed.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise FastcifarError(f"File '{path}' is missing; {fix}.") from None
    except _RefusedGlobal as refused:
        raise FastcifarError(
            f"'{path}' is not a CIFAR pickle: it asks to load '{refused}', which was refused because "
            f"unpickling it could run code; delete the file and {fix}."
        ) from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, struct.error, IndexError,
            KeyError, AttributeError, UnicodeDecodeError, MemoryError, OverflowError) as exc:
        reason = "is truncated" if _looks_truncated(exc) else f"is not a valid CIFAR pickle ({exc})"
        raise FastcifarError(f"'{path}' {reason}; delete it and {fix}.") from None


def _looks_truncated(exc: BaseException) -> bool:
    return isinstance(exc, EOFError) or "truncated" in str(exc)


# ---------------------------------------------------------------------------- writer


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us replace per-type writers
    """Protocol-2 pickler that writes `bytes` and ASCII `str` as Python 2 `str` (BINSTRING).

    Python 3 would write `bytes` at protocol 2 as a call to `_codecs.encode`, and numpy >= 2
    names `numpy._core`; both differ from the official files. Non-ASCII `str` stays unicode.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: BinaryIO):
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        if obj.isascii():
            self.save_py2_str(obj)
        else:
            pickle._Pickler.save_str(self, obj)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        name = name or getattr(obj, "__qualname__", None) or obj.__name__
        module = pickle.whichmodule(obj, name)
        if module.startswith("numpy._core"):  # the official (numpy 1.x) spelling
            module = "numpy.core" + module[len("numpy._core"):]
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.PicklingError(f"CIFAR pickles hold only numpy arrays, not {module}.{name}")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_str


def dumps_py2(obj: Any) -> bytes:
    """Pickle `obj` (dicts, lists, ints, bytes, ASCII str, numpy arrays) like Python 2 did."""
    buffer = io.BytesIO()
    Py2Pickler(buffer).dump(obj)
    return buffer.getvalue()
