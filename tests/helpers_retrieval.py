"""Shared builders for the retrieval tests: feature files, NumPy-1-style pickles, a tiny trained-model run."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from retrieval.feature_io import FeatureSet, save_features

TINY_MODEL = "convnextv2_atto"
TINY_IMG = 32


def clustered_features(n_query: int, n_gallery: int, n_classes: int, dim: int = 32, seed: int = 0,
                       noise: float = 0.8) -> FeatureSet:
    """Class-structured, L2-normalised random features (labels 0..n_classes-1)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % n_classes
        x = centres[labels] + noise * rng.standard_normal((n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels.astype(np.int64)

    g, gl = draw(n_gallery)
    q, ql = draw(n_query)
    return FeatureSet(g, gl, q, ql)


def write_features(resume_dir: Path, features: FeatureSet | None = None, **kw) -> Path:
    features = features or clustered_features(**({"n_query": 60, "n_gallery": 150, "n_classes": 5} | kw))
    path = resume_dir / "features_zero.pickle"
    save_features(features, path)
    return path


# ---------------------------------------------------------------------------------- Python 2 / NumPy 1 pickles
def _py2_string(data: bytes) -> bytes:
    """A Python 2 ``str`` (SHORT_BINSTRING / BINSTRING): it loads as text under encoding='latin1'."""
    return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))) + data


def _py2_array(a: np.ndarray) -> bytes:
    """An ndarray as NumPy 1.x under Python 2 pickles it at protocol 2 (numpy.core.multiarray)."""
    a = np.ascontiguousarray(a)
    shape = b"(" + b"".join(b"J" + struct.pack("<i", n) for n in a.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_string(a.dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_string(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + _py2_string(b"b")
            + b"\x87R" + b"(K\x01" + shape + dtype + b"\x89" + _py2_string(a.tobytes()) + b"tb")


def numpy1_protocol2_pickle(items: list) -> bytes:
    """A protocol-2 pickle of a list of arrays / None in the NumPy-1, Python-2 style of released files."""
    body = b"".join(b"N" if x is None else _py2_array(x) for x in items)
    return b"\x80\x02](" + body + b"e."


# ---------------------------------------------------------------------------------- dataset + checkpoint
def make_checkpoint(resume_dir: Path, setting: str, n_seen: int, seed: int = 0, name: str = "model_best.pth.tar",
                    run_id: str | None = None, args: dict | None = None) -> Path:
    """A checkpoint as training writes it, for a tiny random-weight student (``seed`` picks the weights).

    With ``run_id``, it carries the ``provenance`` record of the newer training code; without, it is a
    checkpoint of the older code (no provenance), which the test scripts must accept too.
    """
    import torch

    from models import build_student
    from utils.checkpoint import atomic_save
    from utils.provenance import state_dict_sha256

    torch.manual_seed(seed)
    student = build_student(TINY_MODEL, n_seen)
    path = resume_dir / name
    ckpt = {"config": {"setting": setting, "model": TINY_MODEL, "n_seen": n_seen, "img_size": TINY_IMG},
            "state_dict": student.state_dict(), "epoch": 1, "best_acc1": 0.0}
    if args is not None:
        ckpt["args"] = args
    if run_id is not None:
        ckpt["provenance"] = {"run_id": run_id, "setting": setting, "model": TINY_MODEL, "img_size": TINY_IMG,
                              "n_seen": n_seen, "seed": seed, "epoch": 1,
                              "student_sha256": state_dict_sha256(student.state_dict()), "lists": {},
                              "version": "unknown"}
    atomic_save(ckpt, path)
    return path


def numpy1_protocol4_pickle(items: list) -> bytes:
    """Protocol 4 as Python 3 with NumPy 1.x writes it (module ``numpy.core.multiarray``).

    Made from NumPy 2's output by renaming the module; the single frame's length is fixed up.
    """
    import pickle

    data = pickle.dumps(items, protocol=4)
    assert data[2] == 0x95 and struct.unpack("<Q", data[3:11])[0] == len(data) - 11, "expected one frame"
    old, new = b"numpy._core.multiarray", b"numpy.core.multiarray"
    body = data[11:].replace(bytes([0x8C, len(old)]) + old, bytes([0x8C, len(new)]) + new)
    return data[:3] + struct.pack("<Q", len(body)) + body
