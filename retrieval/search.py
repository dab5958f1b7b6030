"""The two rankings of a feature set (one-to-one, one-to-many) and the (M, K) sweep."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from retrieval.cluster_matching import DEFAULT_ALPHA, DEFAULT_SEED, Codebook, blend_, cluster_distances, encode, fit_codebook
from retrieval.distances import euclidean_distances, euclidean_order_scores, squared_norms
from retrieval.feature_io import FeatureSet
from retrieval.metrics import DistanceFn, QueryMetrics, evaluate_ranking
from utils.progress import progress


@dataclass(frozen=True)
class QuantizerOptions:
    """How the one-to-many codewords are fitted (defaults = the released code)."""

    quantizer: str = "gmm"
    covariance: str = "full"
    max_samples: Optional[int] = None
    seed: int = DEFAULT_SEED
    alpha: float = DEFAULT_ALPHA


@dataclass
class SweepEntry:
    m: int
    k: int
    metrics: QueryMetrics
    converged: bool = True
    seconds: dict = field(default_factory=dict)   # "fit", "match"
    codebook: Optional[Codebook] = None           # kept to draw this entry's rankings


class RetrievalProblem:
    """Queries against a gallery, held on ``device``; ranks by one-to-one or one-to-many distance."""

    def __init__(self, features: FeatureSet, device: torch.device, chunk: int = 1024):
        self.features = features
        self.device = device
        self.chunk = chunk
        self.query = torch.from_numpy(features.query).to(device)
        self.gallery = torch.from_numpy(features.gallery).to(device)
        self.gallery_sq_norms = squared_norms(self.gallery)

    def distance_fn(self, codebook: Optional[Codebook] = None, alpha: float = DEFAULT_ALPHA) -> DistanceFn:
        """Query indices -> ranking values against the gallery (ascending = closer): scores in the
        Euclidean distance's order (one-to-one), or the one-to-many blend."""
        codes = codewords = None
        if codebook is not None:
            codewords = torch.from_numpy(codebook.codewords).to(self.device)
            codes = encode(self.gallery, codewords)

        def distances(idx: np.ndarray) -> torch.Tensor:
            q = self.query[torch.from_numpy(idx).to(self.device)]
            if codebook is None:
                return euclidean_order_scores(q, self.gallery, self.gallery_sq_norms)
            dist = euclidean_distances(q, self.gallery, self.gallery_sq_norms)
            return blend_(dist, cluster_distances(q, codes, codewords), alpha)

        return distances

    def evaluate(self, codebook: Optional[Codebook] = None, alpha: float = DEFAULT_ALPHA,
                 desc: Optional[str] = None) -> QueryMetrics:
        bar = progress(total=len(self.features.query_labels), desc=desc, unit="query", leave=False,
                       disable=desc is None)
        with bar:
            return evaluate_ranking(self.distance_fn(codebook, alpha), self.features.query_labels,
                                    self.features.gallery_labels, self.chunk, self.device, bar.update)

    def sweep(self, grid: Sequence[tuple[int, int]], options: QuantizerOptions, desc: str) -> list[SweepEntry]:
        """Fit a codebook on the gallery and evaluate the blended ranking for every (M, K)."""
        entries = []
        for m, k in progress(grid, desc=desc, unit="(M,K)", leave=False):
            start = time.perf_counter()
            codebook = fit_codebook(self.features.gallery, m, k, options.quantizer, options.covariance,
                                    options.max_samples, options.seed)
            fitted = time.perf_counter()
            metrics = self.evaluate(codebook, options.alpha, desc=f"M={m} K={k}")
            entries.append(SweepEntry(m, k, metrics, codebook.converged,
                                      {"fit": fitted - start, "match": time.perf_counter() - fitted}, codebook))
        return entries
