"""A sketch in, the closest gallery photos out: the trained student, the test pre-processing and the ranking.

The query goes through exactly what a test sketch goes through (RGB, resize to the checkpoint's input
size, ImageNet normalisation, the student's L2-normalised embedding); photos are ranked by Euclidean
distance as in evaluation, or by the one-to-many blend at the (M, K) the run's ``results.json`` selected.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from app.gallery import Gallery, folder_gallery, zero_gallery
from app.images import QueryError, decode_query
from engine.trained_run import TrainedRun, selected_one_to_many  # noqa: F401  (selected_one_to_many: the app's rule)
from retrieval.cluster_matching import check_pq_shape
from retrieval.defaults import DEFAULT_ALPHA
from retrieval.distances import squared_norms
from retrieval.search import MatchingCodes, rank
from utils.errors import UserError
from utils.run_files import BEST_CHECKPOINT_FILE

MAX_K = 200
DEFAULT_K = 20
# Suggested pen width on the 256 px canvas: thin, like the public datasets' sketches, but thick enough to stay
# MIN_INPUT_STROKE px wide after the resize to the checkpoint's input size (at 64 px a 3 px stroke fades to a
# faint grey line: 7 px there, 3 px at 224 px).
CANVAS_SIZE = 256
STROKE_WIDTH = 3
MIN_INPUT_STROKE = 1.75


def suggested_stroke_width(img_size: int) -> int:
    return max(STROKE_WIDTH, math.ceil(MIN_INPUT_STROKE * CANVAS_SIZE / img_size))


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


class SketchSearcher:
    """Embeds query sketches with the student and ranks the gallery; safe to call from many threads."""

    def __init__(self, run: TrainedRun, gallery: Gallery, one_to_many: Optional[OneToMany] = None,
                 no_one_to_many_reason: str = "", stroke_width: Optional[int] = None):
        self.run = run
        self.gallery = gallery
        self.device = run.device
        self.features = torch.from_numpy(np.ascontiguousarray(gallery.features, dtype=np.float32)).to(self.device)
        self.sq_norms = squared_norms(self.features)
        self.one_to_many = one_to_many
        self.no_one_to_many_reason = no_one_to_many_reason
        self.stroke_width = suggested_stroke_width(run.img_size) if stroke_width is None else stroke_width
        self._lock = threading.Lock()     # one query at a time on the model: predictable latency, no oversubscription
        if one_to_many is not None:
            one_to_many.start(self.features)

    def compile_queries(self) -> str:
        """Compile the query forward pass (see TrainedRun.compile_queries); "" when compiled, else why not."""
        return self.run.compile_queries()

    @property
    def compiled(self) -> bool:
        return self.run.compiled

    # ------------------------------------------------------------------------------------------ queries
    def embed(self, img: Image.Image) -> torch.Tensor:
        """The student's L2-normalised feature of one RGB image: (1, D) float32 on the device."""
        return self.run.embed_query(img)

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
        run = self.run
        return {
            "setting": run.setting, "model": run.config.get("model"), "img_size": run.img_size,
            "checkpoint": str(run.checkpoint), "device": str(self.device),
            "gallery": {"kind": self.gallery.kind, "size": len(self.gallery), "labelled": self.gallery.labelled,
                        "classes": self.gallery.class_names or [], "source": self.gallery.source},
            "one_to_many": None if otm is None else {"M": otm.m, "K": otm.k, "alpha": otm.alpha, "status": otm.status},
            "one_to_many_reason": self.no_one_to_many_reason if otm is None else "",
            "stroke_width": self.stroke_width, "default_k": DEFAULT_K, "max_k": MAX_K,
        }


def load_trained_student(checkpoint: Path, device: torch.device = torch.device("cpu"), batch_size: int = 32,
                         workers: int = 0, run_dir: Optional[Path] = None) -> TrainedRun:
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist: train a model first (or `make demo`), or pass "
                        "--resume_dir / --checkpoint")
    return TrainedRun.load(run_dir or checkpoint.parent, checkpoint, device, batch_size, workers)


def app_gallery(run: TrainedRun, resume_dir: Path, gallery: str = "zero", data_root: Path = Path("datasets")
                ) -> Gallery:
    """The chosen gallery, its features read from files or the cache or embedded with the run."""
    def embed(root: Path, rel_paths: list[str], desc: str) -> tuple[np.ndarray, np.ndarray]:
        return run.embed_files(root, rel_paths, desc, skip_unreadable=True)

    if gallery == "zero":
        if not run.setting:
            raise UserError(f"checkpoint {run.checkpoint} names no dataset setting; pass --gallery FOLDER")
        return zero_gallery(run.setting, data_root, resume_dir, run.weights_sha256, embed)
    return folder_gallery(Path(gallery), resume_dir, run.weights_sha256, embed)


def one_to_many_offer(run: TrainedRun, resume_dir: Path, gallery: Gallery) -> tuple[Optional[tuple[int, int, float]], str]:
    """The run's selected (M, K, alpha) when it fits this gallery, or None and why one-to-many is not offered."""
    selected, reason = selected_one_to_many(resume_dir, run.weights_sha256)
    if selected is None:
        return None, reason
    m, k, _ = selected
    try:
        check_pq_shape(gallery.features.shape[1], len(gallery), m, k)
    except UserError as exc:
        return None, f"M={m}, K={k} do not fit this gallery ({exc})"
    return selected, ""


def build_searcher(trained: TrainedRun, resume_dir: Path, gallery: str = "zero",
                   data_root: Path = Path("datasets")) -> SketchSearcher:
    """The chosen gallery behind a searcher, with one-to-many at the run's selected (M, K) when it fits."""
    chosen = app_gallery(trained, resume_dir, gallery, data_root)
    selected, reason = one_to_many_offer(trained, resume_dir, chosen)
    otm = None if selected is None else OneToMany(*selected)
    return SketchSearcher(trained, chosen, otm, reason)


def load_searcher(resume_dir: Path, gallery: str = "zero", data_root: Path = Path("datasets"),
                  checkpoint: Optional[Path] = None, device: torch.device = torch.device("cpu"),
                  batch_size: int = 32, workers: int = 0) -> SketchSearcher:
    """The run's student (``<resume_dir>/model_best.pth.tar`` unless ``checkpoint``) over the chosen gallery."""
    trained = load_trained_student(checkpoint or resume_dir / BEST_CHECKPOINT_FILE, device, batch_size, workers,
                                   resume_dir)
    return build_searcher(trained, resume_dir, gallery, data_root)
