"""Checkpoint I/O: atomic writes and safe (weights-only) reads."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from utils.errors import UserError


def file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in the same folder, then rename it over ``path``.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX file systems) and no
    temporary file behind. The file gets the umask's permissions, like any file the user writes
    (``mkstemp`` alone would make it private, 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through :func:`atomic_write`."""
    import torch     # here, not at the top: atomic_write serves scripts that never load torch (their --help too)

    atomic_write(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True; errors become one sentence naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a weights-only checkpoint ({first})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} does not hold a dict")
    return ckpt
