"""A restricted unpickler: NumPy arrays, NumPy scalars and plain containers only.

Downloaded pickles (``cid_mask.pickle``, released ``features_zero.pickle``) are untrusted input. The
standard unpickler would import and call whatever the file names; this one resolves only the few
globals NumPy needs to rebuild arrays (as written by NumPy 1.x and 2.x, pickle protocols 2-5, and by
Python 2) and refuses everything else *before* anything is called.
"""
from __future__ import annotations

import importlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

from utils.errors import UserError

# (module, name) pairs that may be resolved. NumPy 2 renamed numpy.core -> numpy._core; both spellings
# appear in files in the wild, so each is accepted and resolved against whichever NumPy is installed.
_NUMPY_NAMES = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 writes ``bytes`` at protocol 2 as _codecs.encode(str, 'latin1'): a pure function.
    ("_codecs", "encode"),
}
for _pkg in ("numpy.core", "numpy._core"):
    for _mod, _name in _NUMPY_NAMES:
        _ALLOWED.add((f"{_pkg}.{_mod}", _name))


def _resolve(module: str, name: str) -> Any:
    if module.startswith("numpy.core") or module.startswith("numpy._core"):
        tail = module.split(".", 2)[2]
        for candidate in (f"numpy._core.{tail}", f"numpy.core.{tail}"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")
    return getattr(importlib.import_module(module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits only the allow-list above."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401
        if (module, name) in _ALLOWED:
            return _resolve(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def safe_loads(data: bytes) -> Any:
    """Unpickle bytes with the restricted unpickler (latin1 so Python-2 files load)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def safe_load(path: str | Path, what: str = "pickle") -> Any:
    """Load a pickle file safely; any refusal or corruption becomes a one-line UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return safe_loads(data)
    except pickle.UnpicklingError as exc:
        if "refused global" in str(exc):
            raise UserError(
                f"{what} {path} was refused: it asks to run {str(exc).split('refused global ', 1)[1]}, "
                "and only NumPy arrays and plain lists/tuples/dicts are accepted (nothing of it was run)"
            ) from None
        raise UserError(f"{what} {path} is not a readable pickle ({exc})") from None
    except Exception as exc:  # truncated or garbage files raise many different types
        raise UserError(f"{what} {path} is corrupt or not a pickle ({type(exc).__name__}: {exc})") from None
