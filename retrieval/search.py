"""The ranking recipe, written once: one-to-one and one-to-many values of queries against a gallery, the top k
of a ranking, and (for the test scripts) the metrics of a whole feature set and the (M, K) sweep.

Every ranking of the project goes through :func:`ranking_values` (the values whose ascending order is the
ranking) and :func:`top_k` (the order, ties by gallery index, which is the metrics' rule): the test scripts,
the app, the batch search and the Python entry point.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from retrieval.cluster_matching import Codebook, blend_, cluster_distances, encode, fit_codebook
from retrieval.defaults import DEFAULT_ALPHA, DEFAULT_SEED
from retrieval.distances import euclidean_distances, euclidean_order_scores, squared_norms
from retrieval.feature_io import FeatureSet
from retrieval.metrics import DistanceFn, QueryMetrics, evaluate_ranking, new_workspace, ranking_keys
from utils.progress import progress

DEFAULT_CHUNK = 1024       # queries per distance block: bounds memory at chunk x gallery values


@dataclass
class MatchingCodes:
    """What one-to-many matching needs of a gallery: the codewords (M x K x D/M, on the gallery's device),
    each item's code (N x M) and the blend weight."""

    codewords: torch.Tensor
    codes: torch.Tensor
    alpha: float = DEFAULT_ALPHA

    @classmethod
    def of(cls, gallery: torch.Tensor, codebook: Codebook, alpha: float = DEFAULT_ALPHA) -> "MatchingCodes":
        codewords = torch.from_numpy(codebook.codewords).to(gallery.device)
        return cls(codewords, encode(gallery, codewords), alpha)

    @classmethod
    def fit(cls, gallery: torch.Tensor, m: int, k: int, alpha: float = DEFAULT_ALPHA) -> "MatchingCodes":
        """Codewords fitted on ``gallery`` at (M, K) with the released quantiser (GaussianMixture, seeded)."""
        return cls.of(gallery, fit_codebook(gallery.cpu().numpy(), m, k), alpha)


def ranking_values(query: torch.Tensor, gallery: torch.Tensor, gallery_sq_norms: Optional[torch.Tensor] = None,
                   codes: Optional[MatchingCodes] = None) -> torch.Tensor:
    """Query x gallery values, ascending = closer (float32, one block): scores in the Euclidean distance's
    order (one-to-one), or the one-to-many blend of the Euclidean and the cluster distance (``codes``)."""
    if codes is None:
        return euclidean_order_scores(query, gallery, gallery_sq_norms)
    dist = euclidean_distances(query, gallery, gallery_sq_norms)
    return blend_(dist, cluster_distances(query, codes.codes, codes.codewords), codes.alpha)


def shown_distances(query: torch.Tensor, values: np.ndarray, one_to_many: bool) -> np.ndarray:
    """The distances to show for some of a block's ranking values (float64, one row per query): the blend
    itself, or the Euclidean distance recovered from the order scores (``d^2 = 2 s + |q|^2 + 1``)."""
    values = values.astype(np.float64)
    if one_to_many:
        return values
    q_sq = squared_norms(query).double().cpu().numpy()[:, None]
    return np.sqrt(np.maximum(2.0 * values + q_sq + 1.0, 0.0))


def top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Gallery indices of the ``k`` smallest values of every row, ascending, ties by gallery index (the
    metrics' order): the smallest exact (value, index) keys. int64, rows x min(k, gallery)."""
    keys = ranking_keys(values, new_workspace(*values.shape, values.device))
    smallest = torch.topk(keys, min(k, values.shape[1]), dim=1, largest=False, sorted=True).values
    return smallest & 0xFFFFFFFF          # the low word of a key is its gallery index


def rank_blocks(query: torch.Tensor, gallery: torch.Tensor, k: int, codes: Optional[MatchingCodes] = None,
                gallery_sq_norms: Optional[torch.Tensor] = None, chunk: int = DEFAULT_CHUNK
                ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """The top ``k`` of every query, ``chunk`` queries at a time (one distance block in memory):
    (query rows, gallery indices int64, shown distances float64) per block."""
    gsq = squared_norms(gallery) if gallery_sq_norms is None else gallery_sq_norms
    with torch.inference_mode():
        for start in range(0, query.shape[0], chunk):
            rows = slice(start, min(start + chunk, query.shape[0]))
            q = query[rows]
            values = ranking_values(q, gallery, gsq, codes)
            order = top_k(values, k)
            chosen = values.gather(1, order).cpu().numpy()
            yield rows, order.cpu().numpy(), shown_distances(q, chosen, codes is not None)


def rank(query: torch.Tensor, gallery: torch.Tensor, k: int, codes: Optional[MatchingCodes] = None,
         gallery_sq_norms: Optional[torch.Tensor] = None, chunk: int = DEFAULT_CHUNK
         ) -> tuple[np.ndarray, np.ndarray]:
    """(gallery indices, shown distances) of the top ``k`` of every query: two Nq x min(k, gallery) arrays."""
    blocks = list(rank_blocks(query, gallery, k, codes, gallery_sq_norms, chunk))
    if not blocks:
        width = min(k, gallery.shape[0])
        return np.empty((0, width), np.int64), np.empty((0, width), np.float64)
    return np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks])


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

    def __init__(self, features: FeatureSet, device: torch.device, chunk: int = DEFAULT_CHUNK):
        self.features = features
        self.device = device
        self.chunk = chunk
        self.query = torch.from_numpy(features.query).to(device)
        self.gallery = torch.from_numpy(features.gallery).to(device)
        self.gallery_sq_norms = squared_norms(self.gallery)

    def distance_fn(self, codebook: Optional[Codebook] = None, alpha: float = DEFAULT_ALPHA) -> DistanceFn:
        """Query indices -> ranking values against the gallery (ascending = closer): scores in the
        Euclidean distance's order (one-to-one), or the one-to-many blend."""
        codes = None if codebook is None else MatchingCodes.of(self.gallery, codebook, alpha)

        def distances(idx: np.ndarray) -> torch.Tensor:
            q = self.query[torch.from_numpy(idx).to(self.device)]
            return ranking_values(q, self.gallery, self.gallery_sq_norms, codes)

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
