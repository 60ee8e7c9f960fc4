"""Reading files back without running code from them.

Every file the platform reads back (checkpoints, caches, datasets) is data: a pickle can name any callable,
and unpickling it calls that callable, so nothing here lets a pickle name one that is not on a short list.

- :func:`torch_load`: ``torch.load(..., weights_only=True)`` (tensors, dicts, lists, tuples, sets, numbers,
  strings, bytes, None), with an error that names the file.
- :func:`load_numpy_pickle`: a restricted unpickler for the CIFAR python pickles: numpy arrays and dtypes,
  dicts, lists, tuples, bytes, strings and numbers; any other global is refused before anything is called.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

from cl.core.registry import ConfigError


class UnsafeFile(ConfigError):
    """A file that is not plain data (it names code to run), or that cannot be read as such."""


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes (a codec, no code)
}


class _NumpyUnpickler(pickle.Unpickler):
    def __init__(self, f, where: str):
        super().__init__(f, encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeFile(f"{self.where}: refusing to load: the pickle names {module}.{name}, which is not a "
                         f"numpy array, list, dict or bytes (a data file never needs to run code)")


def load_numpy_pickle(f, where: str = "pickle"):
    """Unpickle a data file that holds only numpy arrays, lists, dicts, bytes, strings and numbers."""
    if isinstance(f, (bytes, bytearray)):
        f = io.BytesIO(f)
    try:
        return _NumpyUnpickler(f, where).load()
    except UnsafeFile:
        raise
    except Exception as e:
        raise UnsafeFile(f"{where}: not a readable data pickle: {type(e).__name__}: {e}") from None


def torch_load(path: str | Path, map_location=None):
    """``torch.load`` that never runs code from the file (``weights_only=True``); a file that needs more
    (a pickled object, a callable) raises UnsafeFile naming the file."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeFile(f"{path}: not loadable as plain tensors and values (weights_only=True): {first}") from None
