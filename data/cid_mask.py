"""``cid_mask.pickle``: per seen class, its WordNet relatedness to the 1000 ImageNet classes."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.safe_pickle import safe_load


def load_cid_mask(path: str | Path, n_seen: int, n_imagenet: int = 1000) -> torch.Tensor:
    """Return an (n_seen, n_imagenet) float32 tensor; a missing file gives zeros with a warning."""
    path = Path(path)
    if not path.is_file():
        warnings.warn(f"{path} not found: using a zero cid_mask, so the semantic bias (+0.3*mask) vanishes",
                      stacklevel=2)
        return torch.zeros(n_seen, n_imagenet)
    raw = safe_load(path, what="cid_mask")
    if not isinstance(raw, dict):
        raise UserError(f"cid_mask {path} holds a {type(raw).__name__}, expected a dict {{class id: array}}")
    mask = np.zeros((n_seen, n_imagenet), dtype=np.float32)
    for key, value in raw.items():
        try:
            cid = int(key)
        except (TypeError, ValueError):
            raise UserError(f"cid_mask {path}: key {key!r} is not a class id") from None
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if not 0 <= cid < n_seen:
            raise UserError(f"cid_mask {path}: class id {cid} is outside 0..{n_seen - 1}")
        if arr.shape[0] != n_imagenet:
            raise UserError(f"cid_mask {path}: class {cid} has {arr.shape[0]} values, expected {n_imagenet}")
        mask[cid] = arr
    return torch.from_numpy(mask)
