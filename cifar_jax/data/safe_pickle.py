"""Unpickling the official CIFAR-10 python batches without running code from the file.

Those batches are Python 2 pickles of a dict whose 'data' is a numpy
array. Unpickling that normally imports numpy and calls whatever globals the file names, which
lets a crafted file run code. Here every global is refused except the three numpy names an
array needs, and even those resolve to inert stand-ins that only record their arguments; the
recorded bytes become an array through np.frombuffer with a plain numeric dtype.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from typing import Any

import numpy as np

from cifar_jax.errors import DataError, brief

_NUMERIC_DTYPE = re.compile(r"[<>|=]?[uif][1248]|[<>|=]?b1")


class _DtypeStub:
    """Records `numpy.dtype(spec, ...)` and its pickled state instead of calling numpy."""

    def __init__(self, spec: Any, *_: Any) -> None:
        self.spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1:
            order = state[1]
            self.byteorder = order.decode("latin1") if isinstance(order, bytes) else order

    def to_numpy(self, where: str) -> np.dtype:
        spec = f"{self.byteorder}{self.spec}" if isinstance(self.byteorder, str) else None
        if not isinstance(self.spec, str) or spec is None or not _NUMERIC_DTYPE.fullmatch(spec):
            raise DataError(f"{where}: refusing array of dtype {self.spec!r}; only plain numeric ones are read")
        return np.dtype(spec)


class _ArrayStub:
    """Records the state numpy.ndarray would be rebuilt from: (version, shape, dtype, fortran, bytes)."""

    def __init__(self, *_: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_numpy(self, where: str) -> np.ndarray:
        state = self.state
        if not (isinstance(state, tuple) and len(state) == 5):
            raise DataError(f"{where}: malformed pickled array")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes):
            raise DataError(f"{where}: refusing pickled array that is not raw numeric bytes")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise DataError(f"{where}: malformed pickled array shape {shape!r}")
        dtype = dtype.to_numpy(where)
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise DataError(f"{where}: pickled array of shape {shape} has {len(raw)} bytes (truncated?)")
        return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")


def _reconstruct_stub(*_: Any) -> _ArrayStub:
    return _ArrayStub()


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What Python 3 writes for bytes in protocol-2 pickles: `_codecs.encode(str, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode call that is not a latin1 bytes literal")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_stub,  # numpy 1.x / Python 2 writers
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_stub,  # numpy 2.x writers
    ("numpy", "ndarray"): _ArrayStub,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_encode,  # Python 3 re-pickles at protocol 2
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only containers, bytes, strings, numbers and the inert array stand-ins above."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def restricted_unpickle(raw: bytes, where: str) -> Any:
    """Unpickles untrusted bytes (Python 2 or 3 pickles) without importing or calling anything."""
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a malformed pickle fails in many ways; none may escape raw
        raise DataError(f"{where}: not a plain CIFAR-10 batch pickle ({brief(error)})") from error


def as_array(value: Any, where: str, what: str) -> np.ndarray:
    """The numpy array an unpickled array stand-in describes; a DataError naming `what` (the
    dict entry) for anything else."""
    if not isinstance(value, _ArrayStub):
        raise DataError(f"{where}: {what} is {type(value).__name__}, expected a uint8 array")
    return value.to_numpy(where)
