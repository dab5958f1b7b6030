"""Reading images for the app: the uploaded query (checked before it is decoded) and the gallery photos.

Gallery photos are read the way every other image of the project is read (``ListDataset``; embedded through
``engine.trained_run``); when that reader changes, :func:`read_photo` follows it.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.dataset import ListDataset
from data.images import to_rgb

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


def class_folder_labels(rel_paths: Sequence[str]) -> Optional[tuple[np.ndarray, list[str]]]:
    """(int64 labels, sorted class names) when every path lies in a class folder (``<class>/...``, the top
    folder names the class), else None."""
    tops = [rel.split("/", 1)[0] if "/" in rel else None for rel in rel_paths]
    if not tops or None in tops:
        return None
    names = sorted(set(tops))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[t] for t in tops], dtype=np.int64), names


def read_photo(root: Path, rel_path: str) -> Image.Image:
    """One gallery photo, RGB."""
    return ListDataset(root, [rel_path], np.zeros(1, dtype=np.int64), list_file=str(root)).load_image(0)
