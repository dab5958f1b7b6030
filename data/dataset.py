"""The one list-file dataset used by every setting."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.images import read_problem, read_rgb
from data.lists import parse_list_file
from data.transforms import drawing_from
from utils.errors import UserError


class ListDataset(Dataset):
    """Images named by a list file, relative to ``root``; items are (image tensor, label).

    ``line_numbers`` maps each item back to its line in ``list_file`` so that a bad image is reported
    with the line that names it.
    """

    def __init__(self, root: str | Path, paths: Sequence[str], labels: np.ndarray,
                 transform: Optional[Callable] = None, list_file: str | Path = "?",
                 line_numbers: Optional[Sequence[int]] = None):
        self.root = Path(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.list_file = str(list_file)
        self.line_numbers = list(line_numbers) if line_numbers is not None else list(range(1, len(self.paths) + 1))

    @classmethod
    def from_list(cls, root: str | Path, list_file: str | Path, n_classes: int | None = None,
                  transform: Optional[Callable] = None, class_file: str | Path | None = None) -> "ListDataset":
        paths, labels, lines = parse_list_file(list_file, n_classes, class_file, with_line_numbers=True)
        return cls(root, paths, labels, transform, list_file, lines)

    def subset(self, indices: Sequence[int]) -> "ListDataset":
        idx = list(indices)
        return ListDataset(self.root, [self.paths[i] for i in idx], self.labels[idx], self.transform,
                           self.list_file, [self.line_numbers[i] for i in idx])

    def __len__(self) -> int:
        return len(self.paths)

    alpha_background: Optional[tuple[int, int, int]] = None      # see data.images.to_rgb

    def where(self, index: int) -> str:
        """Where an item is named, for messages."""
        return f" ({self.list_file}, line {self.line_numbers[index]})"

    def load_image(self, index: int) -> Image.Image:
        path = self.root / self.paths[index]
        try:
            return read_rgb(path, self.alpha_background)
        except Exception as exc:  # noqa: BLE001 - read_problem says which failures are the image's
            problem = read_problem(exc)
            if problem is None:
                raise
            what, detail = problem
            raise UserError(f"image {path} {what}{self.where(index)}" + (f": {detail}" if detail else "")) from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])



class ImageFiles(ListDataset):
    """Image files that no list file names (a folder's photos, the images handed to a trained run), read as
    every image is: items (image tensor, position). A file that cannot be read is named in a UserError, or
    with ``skip_unreadable`` becomes a blank image at position -1, for the caller to leave out."""

    def __init__(self, root: str | Path, paths: Sequence[str], transform: Optional[Callable] = None,
                 alpha_background: Optional[tuple[int, int, int]] = None, skip_unreadable: bool = False):
        super().__init__(root, paths, np.arange(len(paths)), transform, list_file=str(root))
        self.alpha_background = alpha_background
        self.skip_unreadable = skip_unreadable

    def where(self, index: int) -> str:
        return ""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return super().__getitem__(index)
        except UserError:
            if not self.skip_unreadable:
                raise
            blank = Image.new("RGB", (8, 8))
            return (self.transform(blank) if self.transform else torch.zeros(3, 8, 8)), -1


class SeededAugmentation(Dataset):
    """A training dataset whose items are keyed ``(index, epoch)``: the random augmentation of image ``index`` in
    ``epoch`` draws from a generator of its own, seeded from (``seed``, epoch, index).

    So an image's draw does not depend on which loader worker, process or worker count loads it, nor on what that
    worker loaded before: workers may live across epochs (``persistent_workers``), a resumed run draws what the
    uninterrupted one drew with any ``--workers``, and any number of processes draws what one process draws.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def item_seed(self, index: int, epoch: int) -> int:
        digest = hashlib.blake2b(f"{self.seed}:{epoch}:{index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        generator = torch.Generator()
        generator.manual_seed(self.item_seed(index, epoch))
        with drawing_from(generator):
            return self.dataset[index]


def holdout_indices(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class hold-out: (train indices, held-out indices).

    Within each class (in list order) every ``round(1/fraction)``-th item, starting with the last, is held
    out, so the choice depends only on the list file; classes with a single item keep it for training.
    """
    if not 0 < fraction < 1:
        raise UserError(f"--val_fraction must be between 0 and 1, got {fraction}")
    step = max(2, int(round(1.0 / fraction)))
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        held[idx[::-1][::step]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
