"""Provenance: what made an artifact, recorded next to it, so that no output can be stale or foreign.

One vocabulary serves checkpoints, features files (in a JSON sidecar: the pickle itself stays the authors'
five-item list) and ``results.json``:

- ``run_id``: a random id drawn when a training run starts afresh and kept by every resume of it;
- ``student_sha256``: :func:`state_dict_sha256` of the student weights (the same weights give the same hash
  whatever the device, the file they were read from, or the order of the keys);
- ``lists``: :func:`list_fingerprint` of each list file the artifact was computed from (line count + hash);
- ``version``: :func:`project_version`, the git commit of this project when it can be found.

The helpers here only compute and store; the scripts decide what a mismatch means.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from utils.checkpoint import atomic_write
from utils.errors import UserError

if TYPE_CHECKING:
    import torch

PROVENANCE_FORMAT = 1
_ROOT = Path(__file__).resolve().parent.parent
_VERSION: Optional[str] = None


def new_run_id() -> str:
    """A fresh id for a training run (kept by every ``--resume`` of that run)."""
    return uuid.uuid4().hex


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, keys sorted; a ``module.`` prefix is ignored.

    Two state dicts hash alike exactly when they hold the same tensors under the same names.
    """
    import torch     # here: the rest of this module serves scripts that never load torch

    h = hashlib.sha256()
    items = sorted((k.removeprefix("module."), v) for k, v in state_dict.items())
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def list_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"file": name, "lines": non-empty lines, "sha256": of the bytes}`` of a list file."""
    path = Path(path)
    data = path.read_bytes()
    lines = sum(1 for line in data.splitlines() if line.strip())
    return {"file": path.name, "lines": lines, "sha256": hashlib.sha256(data).hexdigest()}


def project_version() -> str:
    """``git:<commit>`` (``+dirty`` when tracked files changed) of this project, else ``unknown``."""
    global _VERSION
    if _VERSION is None:
        try:
            commit = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            _VERSION = f"git:{commit}{'+dirty' if dirty else ''}" if commit else "unknown"
        except (OSError, subprocess.SubprocessError):
            _VERSION = "unknown"
    return _VERSION


def sidecar_path(artifact: str | Path) -> Path:
    """``features_zero.pickle`` -> ``features_zero.json`` (same folder, same stem)."""
    artifact = Path(artifact)
    return artifact.with_suffix(".json")


def write_sidecar(artifact: str | Path, provenance: Mapping[str, Any]) -> Path:
    """Write the provenance of ``artifact`` to its sidecar, atomically."""
    path = sidecar_path(artifact)
    record = {"format": PROVENANCE_FORMAT, "artifact": Path(artifact).name, **provenance}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return path


def read_sidecar(artifact: str | Path) -> Optional[dict[str, Any]]:
    """The provenance recorded for ``artifact``, or None when it has no sidecar (e.g. the authors' files)."""
    path = sidecar_path(artifact)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"provenance file {path} is unreadable ({exc}): delete it and the file it describes "
                        f"({Path(artifact).name}) to have them written again") from None
    if not isinstance(record, dict):
        raise UserError(f"provenance file {path} does not hold a JSON object: delete it and "
                        f"{Path(artifact).name} to have them written again")
    return record
