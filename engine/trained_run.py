"""A trained run as one Python object: embed sketches and photos, rank photos for sketches.

    import torch
    run = torch.hub.load(".", "sbka", source="local", run="checkpoint/sketchy/zeroshot1")
    # or: from engine.trained_run import TrainedRun; run = TrainedRun.load("checkpoint/sketchy/zeroshot1")
    q = run.embed_sketches(["my_sketch.png"])        # N x D float32, L2-normalised, as evaluation computes them
    g = run.embed_photos(photo_paths)
    order, dist = run.rank(q, g, k=10)               # one_to_many=True: at the (M, K) the run's results.json selected

This is the one implementation of the trained student at test time: the test scripts' extraction, the
sketch-search app (its query and its gallery) and the batch search go through it, so every feature is
computed with the same pre-processing (RGB, resize to the checkpoint's input size, ImageNet normalisation),
the same batching and the same exact-float32 numerics, and ranked by the one recipe (retrieval.search).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.dataset import ImageFiles
from data.images import to_rgb
from data.transforms import test_transform
from data.registry import Setting
from engine.extract import extract_features, load_student_for
from retrieval.cluster_matching import check_pq_shape
from retrieval.defaults import DEFAULT_ALPHA
from retrieval.search import DEFAULT_CHUNK, MatchingCodes, rank
from utils.errors import UserError
from utils.precision import exact_float32
from utils.provenance import state_dict_sha256
from utils.run_files import BEST_CHECKPOINT_FILE, RESULTS_FILE

WHITE = (255, 255, 255)
ImageLike = Union[str, Path, Image.Image]


def selected_one_to_many(run_dir: Path, weights_sha256: str) -> tuple[Optional[tuple[int, int, float]], str]:
    """The (M, K, alpha) that the run's ``results.json`` selected, or None and why none is offered."""
    path = run_dir / RESULTS_FILE
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


class TrainedRun:
    """The student of a run's checkpoint with its test pre-processing, and the run's selected (M, K).

    ``embed_*`` return float32 CPU tensors, one L2-normalised row per image; ``rank`` returns NumPy arrays.
    Images are file paths (relative to the working directory) or PIL images; a sketch's transparent
    background is read as white paper, as the app reads an upload.
    """

    def __init__(self, student: torch.nn.Module, config: dict[str, Any], checkpoint: Path,
                 device: torch.device, run_dir: Optional[Path] = None, batch_size: int = 32, workers: int = 0):
        exact_float32()
        self.student = student.eval()
        self.config = config
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.run_dir = Path(run_dir) if run_dir is not None else self.checkpoint.parent
        self.batch_size = batch_size
        self.workers = workers
        self.img_size = int(config.get("img_size", 224))
        self._weights: Optional[str] = None
        self._forward = self.student.embed
        self.compiled = False
        self._codes: Optional[tuple[str, MatchingCodes]] = None     # (gallery digest, its codes)

    @classmethod
    def load(cls, run: Union[str, Path], checkpoint: Union[str, Path, None] = None,
             device: Union[str, torch.device, None] = None, batch_size: int = 32, workers: int = 0,
             ckpt: Optional[dict[str, Any]] = None, setting: Optional[Setting] = None) -> "TrainedRun":
        """The run in folder ``run`` (its ``model_best.pth.tar`` unless ``checkpoint``) on ``device`` (default:
        CUDA when present). ``ckpt``: the checkpoint's content, when the caller has read it already;
        ``setting``: refuse a checkpoint trained for another one."""
        from utils.distributed import select_device

        run_dir = Path(run)
        if checkpoint is None:
            if not run_dir.is_dir():
                raise UserError(f"run folder {run_dir} does not exist: train a model first (or `make demo`)")
            path = run_dir / BEST_CHECKPOINT_FILE
            if not path.is_file():
                raise UserError(f"run folder {run_dir} holds no {BEST_CHECKPOINT_FILE}: train a model there first, or "
                                "name the checkpoint (--checkpoint)")
        else:
            path = Path(checkpoint)
            if not path.is_file():
                raise UserError(f"checkpoint {path} does not exist")
        dev = device if isinstance(device, torch.device) else select_device(device)
        student, config = load_student_for(setting, path, dev, ckpt)
        return cls(student, config, path, dev, run_dir, batch_size, workers)

    # ------------------------------------------------------------------------------------------ about the run
    @property
    def setting(self) -> Optional[str]:
        return self.config.get("setting")

    @property
    def weights_sha256(self) -> str:
        """Hash of the student's weights (what feature caches and results.json record)."""
        if self._weights is None:
            self._weights = state_dict_sha256(self.student.state_dict())
        return self._weights

    def selected_one_to_many(self) -> tuple[Optional[tuple[int, int, float]], str]:
        """(M, K, alpha) selected by the run's test (``results.json``), or None and why none is offered."""
        return selected_one_to_many(self.run_dir, self.weights_sha256)

    def transform(self, normalize: bool = True):
        """The test pre-processing at the checkpoint's input size (up to uint8 without ``normalize``)."""
        return test_transform(self.img_size, normalize=normalize)

    # ------------------------------------------------------------------------------------------ embedding
    def embed_dataset(self, dataset: Dataset, desc: str = "features", **options: Any) -> tuple[np.ndarray, np.ndarray]:
        """Every item of ``dataset`` (items: image tensor, label) in order: (float32 N x D, int64 labels N).
        ``options``: batch_size, workers (default: the run's), amp, memory_format, on_device_normalize."""
        options.setdefault("batch_size", self.batch_size)
        options.setdefault("workers", self.workers)
        return extract_features(self.student, dataset, self.device, desc=desc, **options)

    def embed_files(self, root: Path, rel_paths: Sequence[str], desc: str, sketches: bool = False,
                    skip_unreadable: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Image files under ``root``: (features N x D, mask of the files that could be read). A file that
        cannot be read is named in a UserError, or left out (its mask False) with ``skip_unreadable``."""
        if not rel_paths:
            return np.zeros((0, 0), np.float32), np.zeros(0, bool)
        files = ImageFiles(root, rel_paths, self.transform(), WHITE if sketches else None, skip_unreadable)
        features, index = self.embed_dataset(files, desc)
        return features, index >= 0

    def _embed(self, images: Sequence[ImageLike], sketches: bool, desc: str) -> torch.Tensor:
        if isinstance(images, (str, Path, Image.Image)):
            raise UserError("embed_sketches / embed_photos take a list of images (paths or PIL images), not one")
        images = list(images)
        if all(isinstance(img, (str, Path)) for img in images):
            features, _ = self.embed_files(Path(""), [str(p) for p in images], desc, sketches)
            return torch.from_numpy(features)
        rows = []
        for i, img in enumerate(images):
            if isinstance(img, (str, Path)):
                rows.append(self._embed([img], sketches, desc))
            elif isinstance(img, Image.Image):
                rows.append(self.embed_query(to_rgb(img, WHITE if sketches else None)).cpu())
            else:
                raise UserError(f"image {i} is a {type(img).__name__}: pass file paths or PIL images")
        return torch.cat(rows) if rows else torch.zeros(0, 0)

    def embed_sketches(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Query sketches -> N x D float32 (CPU), L2-normalised."""
        return self._embed(images, True, "sketches")

    def embed_photos(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Gallery photos -> N x D float32 (CPU), L2-normalised."""
        return self._embed(images, False, "photos")

    def embed_query(self, img: Image.Image) -> torch.Tensor:
        """One RGB image, as :func:`data.images.to_rgb` gives it (the app's query path: no loader, compiled
        when :meth:`compile_queries` succeeded): its feature, 1 x D float32 on the device."""
        x = self.transform()(img).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            return self._forward(x).float()

    def compile_queries(self) -> str:
        """Compile the single-image forward pass (torch.compile with frozen weights: the elementwise work fused,
        the weights pre-packed; about a quarter less time per query on a 2-core CPU, the same features to float
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

    # ------------------------------------------------------------------------------------------ ranking
    def one_to_many_codes(self, photos: torch.Tensor) -> MatchingCodes:
        """Codewords at the run's selected (M, K), fitted on ``photos`` (kept for the last gallery seen)."""
        selected, reason = self.selected_one_to_many()
        if selected is None:
            raise UserError(f"one-to-many matching needs the (M, K) that the run's test selected: {reason}")
        m, k, alpha = selected
        check_pq_shape(photos.shape[1], photos.shape[0], m, k)
        digest = hashlib.sha256(photos.detach().cpu().numpy().tobytes()).hexdigest()
        if self._codes is None or self._codes[0] != digest:
            self._codes = (digest, MatchingCodes.fit(photos.to(self.device), m, k, alpha))
        return self._codes[1]

    def rank(self, sketches: Union[torch.Tensor, np.ndarray], photos: Union[torch.Tensor, np.ndarray], k: int = 10,
             one_to_many: bool = False, chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` closest photos of every sketch: (indices, distances), two N x min(k, photos) arrays,
        closest first, ties by photo index (the evaluation's order). One-to-one by default (the Euclidean
        distance); ``one_to_many``: the blend at the run's selected (M, K), codewords fitted on ``photos``."""
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        q = torch.as_tensor(sketches, dtype=torch.float32).to(self.device)
        g = torch.as_tensor(photos, dtype=torch.float32).to(self.device)
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
            raise UserError(f"rank needs two feature matrices of the same width, got {tuple(q.shape)} and "
                            f"{tuple(g.shape)}")
        return rank(q, g, k, self.one_to_many_codes(g) if one_to_many else None, chunk=chunk)
