"""``features_zero.pickle`` in the released format (METHOD.md section 7), read without running code.

The file is a pickled list ``[gallery_features (Ng x D), gallery_labels (Ng,), query_features (Nq x D),
query_labels (Nq,), scores or None]``. Files written here and the authors' files are interchangeable.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.checkpoint import atomic_write
from utils.errors import UserError
from utils.safe_pickle import safe_load

# Protocol 4 is what Python 3.8+ writes by default and every Python 3 reader loads; arrays pickled by
# NumPy 2 name numpy._core, which NumPy >= 1.26 and 2.x resolve.
PICKLE_PROTOCOL = 4


@dataclass
class FeatureSet:
    """Gallery and query features (float32, one row per image) with their integer class labels."""

    gallery: np.ndarray
    gallery_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.gallery.shape[1])


def _check_features(name: str, value: object, path: Path) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 2 or not np.issubdtype(value.dtype, np.floating):
        kind = f"a {value.ndim}-D {value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
        raise UserError(f"features file {path}: {name} must be a 2-D float array, found {kind}")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise UserError(f"features file {path}: {name} is empty (shape {value.shape})")
    if not np.isfinite(value).all():
        raise UserError(f"features file {path}: {name} contains NaN or infinite values")
    return np.ascontiguousarray(value, dtype=np.float32)


def _check_labels(name: str, value: object, n_rows: int, features_name: str, path: Path) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
        kind = f"a {value.ndim}-D {value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
        raise UserError(f"features file {path}: {name} must be a 1-D integer array, found {kind}")
    if value.shape[0] != n_rows:
        raise UserError(f"features file {path}: {name} has {value.shape[0]} entries but {features_name} "
                        f"has {n_rows} rows")
    return value.astype(np.int64)


def validate_features(raw: object, path: Path) -> FeatureSet:
    """Check the five-item layout; any violation is one sentence naming what is wrong."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 5:
        found = f"{len(raw)} items" if isinstance(raw, (list, tuple)) else f"a {type(raw).__name__}"
        raise UserError(f"features file {path} must hold a list of five items [gallery features, gallery "
                        f"labels, query features, query labels, scores or None], found {found}")
    gallery = _check_features("item 1 (gallery features)", raw[0], path)
    query = _check_features("item 3 (query features)", raw[2], path)
    if gallery.shape[1] != query.shape[1]:
        raise UserError(f"features file {path}: gallery features are {gallery.shape[1]}-d but query features "
                        f"are {query.shape[1]}-d")
    gallery_labels = _check_labels("item 2 (gallery labels)", raw[1], gallery.shape[0], "item 1", path)
    query_labels = _check_labels("item 4 (query labels)", raw[3], query.shape[0], "item 3", path)
    if raw[4] is not None and not isinstance(raw[4], np.ndarray):
        raise UserError(f"features file {path}: item 5 must be None or an array of scores, "
                        f"found {type(raw[4]).__name__}")
    return FeatureSet(gallery, gallery_labels, query, query_labels)


def load_features(path: str | Path) -> FeatureSet:
    """Read and validate a features file with the restricted unpickler (nothing in it is executed).

    A score matrix in item 5 is not used: distances are always recomputed from the features.
    """
    path = Path(path)
    return validate_features(safe_load(path, what="features file"), path)


def save_features(features: FeatureSet, path: str | Path) -> None:
    """Write the released five-item list atomically (a crash leaves no half-written file)."""
    payload = [features.gallery.astype(np.float32), features.gallery_labels.astype(np.int64),
               features.query.astype(np.float32), features.query_labels.astype(np.int64), None]
    atomic_write(path, lambda fh: pickle.dump(payload, fh, protocol=PICKLE_PROTOCOL))
