"""Reading images for the app: the uploaded query (checked before it is decoded) and the gallery photos.

Gallery photos are read the way every other image of the project is read (``ListDataset``); when that
reader changes, :func:`gallery_dataset` and :func:`read_photo` follow it.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from data.dataset import ListDataset
from data.images import to_rgb
from utils.errors import UserError

MAX_QUERY_BYTES = 10 * 1024 * 1024
MAX_QUERY_SIDE = 4096
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
BLANK_RANGE = 8        # a query whose pixel values span less than this is an empty drawing


class QueryError(ValueError):
    """A query the server refuses: an HTTP status and one sentence for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_query(data: bytes) -> Image.Image:
    """The uploaded sketch as an RGB image (transparency flattened onto white), or :class:`QueryError`."""
    if not data:
        raise QueryError(400, "the request holds no image: send a PNG or JPEG body or a multipart 'file' field")
    if len(data) > MAX_QUERY_BYTES:
        raise QueryError(413, f"the image is {len(data) / 2**20:.1f} MB; the limit is {MAX_QUERY_BYTES // 2**20} MB")
    try:
        img = Image.open(io.BytesIO(data))        # reads the header only: the size is checked before decoding
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise QueryError(415, "the upload is not an image Pillow can read (send PNG, JPEG or WebP)") from None
    if max(img.size) > MAX_QUERY_SIDE:
        raise QueryError(413, f"the image is {img.size[0]}x{img.size[1]} px; at most {MAX_QUERY_SIDE} px a side "
                              "is accepted")
    try:
        img.load()
        img = to_rgb(img, alpha_background=(255, 255, 255))   # as every image is read, transparency on white
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise QueryError(415, f"the image cannot be decoded ({' '.join(str(exc).split()) or 'truncated'})") from None
    if all(hi - lo < BLANK_RANGE for lo, hi in img.getextrema()):
        raise QueryError(400, "the drawing is empty: draw something (or upload a sketch) before searching")
    return img


def find_photos(folder: Path) -> list[str]:
    """Every JPEG/PNG/WebP under ``folder`` (recursive, hidden entries skipped): sorted POSIX paths relative to it."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


class _Tolerant(Dataset):
    """Items (image tensor, index); an unreadable photo gives a zero tensor and index -1 instead of an error."""

    def __init__(self, dataset: ListDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return self.dataset[index][0], index
        except UserError:
            blank = Image.new("RGB", (8, 8))
            return (self.dataset.transform(blank) if self.dataset.transform else torch.zeros(3, 8, 8)), -1


def gallery_dataset(root: Path, rel_paths: Sequence[str], transform: Optional[Callable]) -> Dataset:
    """The photos as a dataset of (tensor, index), index -1 for a photo that cannot be read."""
    labels = np.arange(len(rel_paths), dtype=np.int64)
    return _Tolerant(ListDataset(root, rel_paths, labels, transform, list_file=str(root)))


def read_photo(root: Path, rel_path: str) -> Image.Image:
    """One gallery photo, RGB."""
    return ListDataset(root, [rel_path], np.zeros(1, dtype=np.int64), list_file=str(root)).load_image(0)
