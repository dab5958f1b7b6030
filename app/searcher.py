"""A sketch in, the closest gallery photos out: the trained student, the test pre-processing and the ranking.

The query goes through exactly what a test sketch goes through (RGB, resize to the checkpoint's input
size, ImageNet normalisation, the student's L2-normalised embedding); photos are ranked by Euclidean
distance as in evaluation, or by the one-to-many blend at the (M, K) the run's ``results.json`` selected.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from app.gallery import Gallery, folder_gallery, zero_gallery
from app.images import QueryError, decode_query, gallery_dataset
from data.demo import MARKER_FILE
from data.transforms import test_transform
from engine.extract import extract_features
from models import load_student_checkpoint
from retrieval.cluster_matching import DEFAULT_ALPHA, check_pq_shape
from retrieval.distances import squared_norms
from retrieval.search import MatchingCodes, rank
from utils.errors import UserError
from utils.provenance import state_dict_sha256

MAX_K = 200
DEFAULT_K = 20
# Suggested pen width on the 256 px canvas: the public datasets' sketches have thin strokes, the
# generated demo sketches are drawn with thick pens (data/demo.py).
STROKE_WIDTH = 3
DEMO_STROKE_WIDTH = 7


@dataclass
class OneToMany:
    """Cluster matching at one (M, K); the codewords are fitted on the gallery in a background thread."""

    m: int
    k: int
    alpha: float = DEFAULT_ALPHA
    status: str = "fitting"                     # "fitting", "ready" or "failed: <why>"
    matching: Optional[MatchingCodes] = None
    _thread: Optional[threading.Thread] = field(default=None, repr=False)

    @property
    def codewords(self) -> Optional[torch.Tensor]:
        return None if self.matching is None else self.matching.codewords

    def fit(self, gallery: torch.Tensor) -> None:
        try:
            self.matching = MatchingCodes.fit(gallery, self.m, self.k, self.alpha)
            self.status = "ready"
        except Exception as exc:  # noqa: BLE001 - reported through /api/info, the server keeps serving
            self.status = f"failed: {' '.join(str(exc).split())}"

    def start(self, gallery: torch.Tensor) -> None:
        self._thread = threading.Thread(target=self.fit, args=(gallery,), name="codebook-fit", daemon=True)
        self._thread.start()

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status == "ready"


def selected_one_to_many(resume_dir: Path, weights_sha256: str) -> tuple[Optional[tuple[int, int, float]], str]:
    """The (M, K, alpha) that the run's ``results.json`` selected, or None and why none is offered."""
    path = resume_dir / "results.json"
    if not path.is_file():
        return None, f"no {path}"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        otm = results.get("one_to_many") or {}
        selected = otm.get("selected")
    except (OSError, ValueError, AttributeError):
        return None, f"{path} is unreadable"
    provenance = results.get("provenance") if isinstance(results, dict) else None
    features = provenance.get("features") if isinstance(provenance, dict) else None
    recorded = features.get("student_sha256") if isinstance(features, dict) else None
    if recorded is not None and recorded != weights_sha256:
        return None, f"{path} was computed with other weights than the checkpoint"
    if not isinstance(selected, dict) or not {"M", "K"} <= set(selected):
        return None, f"{path} names no selected (M, K) (run the test script in mode 2 with the dataset)"
    return (int(selected["M"]), int(selected["K"]), float(otm.get("alpha", DEFAULT_ALPHA))), ""


class SketchSearcher:
    """Embeds query sketches with the student and ranks the gallery; safe to call from many threads."""

    def __init__(self, student: torch.nn.Module, config: dict[str, Any], gallery: Gallery, device: torch.device,
                 one_to_many: Optional[OneToMany] = None, no_one_to_many_reason: str = "",
                 checkpoint: str = "", stroke_width: int = STROKE_WIDTH):
        self.student = student.eval()
        self.config = config
        self.img_size = int(config.get("img_size", 224))
        self.transform = test_transform(self.img_size)
        self.gallery = gallery
        self.device = device
        self.features = torch.from_numpy(np.ascontiguousarray(gallery.features, dtype=np.float32)).to(device)
        self.sq_norms = squared_norms(self.features)
        self.one_to_many = one_to_many
        self.no_one_to_many_reason = no_one_to_many_reason
        self.checkpoint = checkpoint
        self.stroke_width = stroke_width
        self._lock = threading.Lock()     # one query at a time on the model: predictable latency, no oversubscription
        self._forward = self.student.embed
        self.compiled = False
        if one_to_many is not None:
            one_to_many.start(self.features)

    def compile_queries(self) -> str:
        """Compile the query forward pass (torch.compile with frozen weights: the elementwise work fused, the
        weights pre-packed; about a quarter less time per query on a 2-core CPU, the same features to float
        rounding). Takes tens of seconds once. Returns "" when compiled, else why it stays eager."""
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True           # weights are constants of the compiled graph
            if self.device.type == "cpu":
                # Inductor's C++ build loads torch.utils.cpp_extension, which warns "No CUDA runtime is found"
                # wherever a CUDA toolkit is installed without a GPU: true, and irrelevant to a CPU compile.
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            compiled = torch.compile(self.student.embed, dynamic=False)
            probe = torch.zeros(1, 3, self.img_size, self.img_size, device=self.device)
            with torch.inference_mode():
                reference, got = self.student.embed(probe), compiled(probe)
            if not torch.allclose(reference, got, atol=1e-4, rtol=1e-4):
                return "the compiled forward pass disagreed with the eager one"
        except Exception as exc:  # noqa: BLE001 - no compiler, unsupported platform: eager still works
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self._forward, self.compiled = compiled, True
        return ""

    # ------------------------------------------------------------------------------------------ queries
    def embed(self, img: Image.Image) -> torch.Tensor:
        """The student's L2-normalised feature of one RGB image: (1, D) float32 on the device."""
        x = self.transform(img).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            return self._forward(x).float()

    def rank(self, query: torch.Tensor, k: int, one_to_many: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(gallery indices, distances) of the ``k`` closest photos to one query feature."""
        codes = self.one_to_many.matching if one_to_many else None
        order, distances = rank(query, self.features, k, codes, self.sq_norms)
        return order[0], distances[0]

    def check_request(self, k: int, one_to_many: bool, class_name: Optional[str]) -> None:
        if not 1 <= k <= MAX_K:
            raise QueryError(400, f"k must be between 1 and {MAX_K}, got {k}")
        if one_to_many:
            if self.one_to_many is None:
                raise QueryError(400, f"one-to-many matching is not offered for this run: {self.no_one_to_many_reason}")
            if self.one_to_many.status == "fitting":
                raise QueryError(503, "one-to-many codewords are still being fitted; try again in a moment")
            if self.one_to_many.status != "ready":
                raise QueryError(400, f"one-to-many matching is unavailable ({self.one_to_many.status})")
        if class_name is not None:
            if not self.gallery.labelled:
                raise QueryError(400, "this gallery has no class labels, so precision@k cannot be computed")
            if class_name not in self.gallery.class_names:
                raise QueryError(400, f"unknown class {class_name!r}: see /api/info for the gallery's classes")

    def search(self, data: bytes, k: int = DEFAULT_K, one_to_many: bool = False,
               class_name: Optional[str] = None) -> dict[str, Any]:
        """Decode, embed and rank one query; the JSON answer of ``POST /api/search``."""
        self.check_request(k, one_to_many, class_name)
        start = time.perf_counter()
        img = decode_query(data)
        with self._lock:
            order, distances = self.rank(self.embed(img), k, one_to_many)
        ms = (time.perf_counter() - start) * 1000.0
        results = [{"rank": r + 1, "index": int(i), "path": self.gallery.paths[i], "url": f"/photo/{int(i)}",
                    "thumb": f"/thumb/{int(i)}", "distance": float(d), "label": self.gallery.label_of(int(i))}
                   for r, (i, d) in enumerate(zip(order, distances))]
        answer: dict[str, Any] = {"results": results, "ms": round(ms, 2), "k": k, "one_to_many": one_to_many}
        if class_name is not None:
            hits = sum(r["label"] == class_name for r in results)
            answer["class"] = class_name
            answer["precision_at_k"] = hits / k
        return answer

    def info(self) -> dict[str, Any]:
        otm = self.one_to_many
        return {
            "setting": self.config.get("setting"), "model": self.config.get("model"), "img_size": self.img_size,
            "checkpoint": self.checkpoint, "device": str(self.device),
            "gallery": {"kind": self.gallery.kind, "size": len(self.gallery), "labelled": self.gallery.labelled,
                        "classes": self.gallery.class_names or [], "source": self.gallery.source},
            "one_to_many": None if otm is None else {"M": otm.m, "K": otm.k, "alpha": otm.alpha, "status": otm.status},
            "one_to_many_reason": self.no_one_to_many_reason if otm is None else "",
            "stroke_width": self.stroke_width, "default_k": DEFAULT_K, "max_k": MAX_K,
        }


@dataclass
class TrainedStudent:
    """A run's student with its checkpoint config and weights hash."""

    student: torch.nn.Module
    config: dict[str, Any]
    weights_sha256: str
    checkpoint: Path
    device: torch.device


def load_trained_student(checkpoint: Path, device: torch.device = torch.device("cpu")) -> TrainedStudent:
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist: train a model first (or `make demo`), or pass "
                        "--resume_dir / --checkpoint")
    student, config = load_student_checkpoint(checkpoint, device)
    return TrainedStudent(student, config, state_dict_sha256(student.state_dict()), checkpoint, device)


def build_searcher(trained: TrainedStudent, resume_dir: Path, gallery: str = "zero",
                   data_root: Path = Path("datasets"), batch_size: int = 32, workers: int = 0) -> SketchSearcher:
    """The chosen gallery, its features read from files or the cache or embedded, behind a searcher."""
    student, config, weights, device = trained.student, trained.config, trained.weights_sha256, trained.device
    transform = test_transform(int(config.get("img_size", 224)))

    def embed(root: Path, rel_paths: list[str], desc: str) -> tuple[np.ndarray, np.ndarray]:
        feats, index = extract_features(student, gallery_dataset(root, rel_paths, transform), device,
                                        batch_size=batch_size, workers=workers, desc=desc)
        return feats, index >= 0

    if gallery == "zero":
        setting = config.get("setting")
        if not setting:
            raise UserError(f"checkpoint {trained.checkpoint} names no dataset setting; pass --gallery FOLDER")
        chosen = zero_gallery(setting, data_root, resume_dir, weights, embed)
    else:
        chosen = folder_gallery(Path(gallery), resume_dir, weights, embed)
    selected, reason = selected_one_to_many(resume_dir, weights)
    otm = None
    if selected is not None:
        m, k, alpha = selected
        try:
            check_pq_shape(chosen.features.shape[1], len(chosen), m, k)
            otm = OneToMany(m, k, alpha)
        except UserError as exc:
            reason = f"M={m}, K={k} do not fit this gallery ({exc})"
    demo = gallery == "zero" and (chosen.root / MARKER_FILE).is_file()
    return SketchSearcher(student, config, chosen, device, otm, reason, str(trained.checkpoint),
                          DEMO_STROKE_WIDTH if demo else STROKE_WIDTH)


def load_searcher(resume_dir: Path, gallery: str = "zero", data_root: Path = Path("datasets"),
                  checkpoint: Optional[Path] = None, device: torch.device = torch.device("cpu"),
                  batch_size: int = 32, workers: int = 0) -> SketchSearcher:
    """The run's student (``<resume_dir>/model_best.pth.tar`` unless ``checkpoint``) over the chosen gallery."""
    trained = load_trained_student(checkpoint or resume_dir / "model_best.pth.tar", device)
    return build_searcher(trained, resume_dir, gallery, data_root, batch_size, workers)
