"""mAP@all, mAP@200, Prec@100, Prec@200 of METHOD.md section 6, vectorised over query chunks.

Ranking: ascending distance; equal distances are ordered by gallery index (what a stable sort of the
distance row gives). The released scripts use NumPy's default, unstable ``argsort``, so their order
among exactly tied items is arbitrary; ours is defined.

AP of one query is the VOC-style area under the precision envelope (SAKE/DSN/SBKA), not scikit-learn's
``average_precision_score``: ranking N,P,P gives 0.667 here. AP@k truncates the ranking at
``min(k, gallery size)`` and divides by ``min(k, number of positives)``. A query whose class has no
gallery item has AP = NaN (excluded from every mean) and precision 0, as in the released code.

Everything follows from the 1-based ranks of each query's positives, so the work per query block is one
distance block, one row sort of exact (distance, index) keys and a batched binary search of the positives.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from retrieval.distances import sort_rows_

METRIC_KEYS = ("mAP@all", "mAP@200", "P@100", "P@200")
AP_CUTOFFS = {"mAP@all": None, "mAP@200": 200}
PRECISION_CUTOFFS = {"P@100": 100, "P@200": 200}
PR_RECALL_LEVELS = np.linspace(0.0, 1.0, 21)

# query indices (one block, all of one class) -> distances to the whole gallery, float32 (block x Ng)
DistanceFn = Callable[[np.ndarray], torch.Tensor]


@dataclass
class QueryMetrics:
    """Per-query results, in the original query order."""

    values: dict[str, np.ndarray]   # metric -> (Nq,) float64; AP is NaN where the class has no gallery item
    pr_precision: np.ndarray        # (Nq, len(PR_RECALL_LEVELS)) interpolated precision; NaN rows likewise
    labels: np.ndarray              # query labels, for per-class averaging

    def averaged(self) -> dict[str, dict[str, float]]:
        """``{"per_query": {metric: mean}, "per_class": {metric: mean}}``."""
        return {"per_query": {k: nan_mean(v) for k, v in self.values.items()},
                "per_class": {k: class_mean(v, self.labels) for k, v in self.values.items()}}

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean over queries (with positives) of the interpolated precision at each recall level."""
        rows = self.pr_precision[~np.isnan(self.pr_precision).any(axis=1)]
        mean = rows.mean(axis=0) if len(rows) else np.full(len(PR_RECALL_LEVELS), np.nan)
        return PR_RECALL_LEVELS.copy(), mean


def nan_mean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN when there are none."""
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if len(valid) else float("nan")


def class_mean(values: np.ndarray, labels: np.ndarray) -> float:
    """SBKA's averaging: mean over classes of the mean over that class's queries (NaN entries skipped;
    a class with no valid query is left out rather than making the result NaN)."""
    valid = ~np.isnan(values)
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.bincount(inverse[valid], weights=values[valid], minlength=inverse.max() + 1)
    counts = np.bincount(inverse[valid], minlength=inverse.max() + 1)
    return float((sums[counts > 0] / counts[counts > 0]).mean()) if counts.any() else float("nan")


# Word order of an int64 in memory: the key's high word holds the distance, the low word the index.
_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)


def ranking_keys(dist: torch.Tensor, workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int64 keys whose ascending order is (distance, gallery index), one per element of ``dist``.

    High word = the float32 distance read as an int32 (the same order for non-negative floats), low word
    = the column index. Written as two int32 halves of each int64 (no shift/or passes over the block).
    ``workspace`` (rows >= len(dist), same columns, 2 int32 words) is reused across blocks: a fresh
    allocation of this size costs more in page faults than filling it.
    """
    n_rows, n_cols = dist.shape
    if workspace is None:
        workspace = torch.empty(n_rows, n_cols, 2, dtype=torch.int32, device=dist.device)
    words = workspace[:n_rows]
    words[..., _LOW] = torch.arange(n_cols, dtype=torch.int32, device=dist.device)
    high = words[..., _HIGH]
    high.view(torch.float32).copy_(dist).add_(0.0)          # + 0.0 turns -0.0 into +0.0: they compare equal
    if bool(dist.min() < 0):                                # negative floats order backwards as integers
        high.copy_(torch.where(high < 0, high ^ 0x7FFFFFFF, high))
    return words.view(torch.int64).view(n_rows, n_cols)


def positive_ranks(dist: torch.Tensor, pos_cols: torch.Tensor,
                   workspace: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1-based rank of every positive in each row's ranking, ascending along the row (block x npos).

    ``pos_cols`` = the positives' gallery indices (the same for the whole block). Float32 distances of
    54k items tie often (tens of positives per QuickDraw query), so the ranking sorts exact keys rather
    than distances: with unique keys, a positive's rank is 1 + the number of keys below its own.
    """
    if pos_cols.numel() == 0:
        return torch.empty(dist.shape[0], 0, dtype=torch.int64, device=dist.device)
    keys = ranking_keys(dist, workspace)
    pos_keys = torch.sort(keys.index_select(1, pos_cols), dim=1).values
    return torch.searchsorted(sort_rows_(keys), pos_keys) + 1


def _reverse_cummax(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(torch.cummax(torch.flip(x, [1]), dim=1).values, [1])


def metrics_from_ranks(ranks: torch.Tensor, n_gallery: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All four metrics and the interpolated PR points of a block, from its positives' ranks."""
    n_rows, n_pos = ranks.shape
    out: dict[str, torch.Tensor] = {}
    if n_pos == 0:
        nan = torch.full((n_rows,), math.nan, dtype=torch.float64, device=ranks.device)
        out.update({name: nan for name in AP_CUTOFFS})
        out.update({name: torch.zeros_like(nan) for name in PRECISION_CUTOFFS})
        return out, torch.full((n_rows, len(PR_RECALL_LEVELS)), math.nan, dtype=torch.float64, device=ranks.device)
    hits = torch.arange(1, n_pos + 1, dtype=torch.float64, device=ranks.device)
    precision_at_hits = hits / ranks.double()
    envelope_all = None
    for name, k in AP_CUTOFFS.items():
        depth = n_gallery if k is None else min(k, n_gallery)
        first = min(depth, n_pos)                  # at most this many hits fit in the top `depth`
        # Hits below the cut-off get precision 0, which is also the envelope's right-hand sentinel.
        truncated = precision_at_hits[:, :first] * (ranks[:, :first] <= depth)
        envelope = _reverse_cummax(truncated)
        out[name] = envelope.sum(dim=1) / first
        if k is None:
            envelope_all = envelope
    for name, k in PRECISION_CUTOFFS.items():
        depth = min(k, n_gallery)
        out[name] = (ranks[:, :min(depth, n_pos)] <= depth).sum(dim=1).double() / depth
    # Interpolated precision at recall r = the envelope at the first hit whose recall reaches r.
    first_hit = np.maximum(np.ceil(PR_RECALL_LEVELS * n_pos - 1e-9).astype(np.int64), 1) - 1
    pr = envelope_all[:, torch.from_numpy(first_hit).to(ranks.device)]
    return out, pr


def query_blocks(query_labels: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(class label, query indices) blocks of at most ``chunk`` queries, one class per block."""
    order = np.argsort(query_labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(query_labels[order])) + 1
    for members in np.split(order, boundaries):
        for start in range(0, len(members), chunk):
            yield int(query_labels[members[0]]), members[start:start + chunk]


def evaluate_ranking(distance_fn: DistanceFn, query_labels: np.ndarray, gallery_labels: np.ndarray,
                     chunk: int, device: torch.device, progress: Optional[Callable[[int], None]] = None
                     ) -> QueryMetrics:
    """Per-query metrics of the ranking that ``distance_fn`` defines, one block of queries at a time.

    Memory stays at a few blocks of ``chunk x gallery`` floats whatever the number of queries.
    """
    n_query, n_gallery = len(query_labels), len(gallery_labels)
    values = {name: np.empty(n_query) for name in METRIC_KEYS}
    pr = np.empty((n_query, len(PR_RECALL_LEVELS)))
    gallery_labels_t = torch.as_tensor(gallery_labels, device=device)
    largest_block = min(chunk, int(np.bincount(np.unique(query_labels, return_inverse=True)[1]).max()))
    workspace = torch.empty(largest_block, n_gallery, 2, dtype=torch.int32, device=device)
    positives: dict[int, torch.Tensor] = {}
    for label, idx in query_blocks(query_labels, chunk):
        if label not in positives:
            positives[label] = torch.nonzero(gallery_labels_t == label).flatten()
        dist = distance_fn(idx)
        block, block_pr = metrics_from_ranks(positive_ranks(dist, positives[label], workspace), n_gallery)
        for name in METRIC_KEYS:
            values[name][idx] = block[name].cpu().numpy()
        pr[idx] = block_pr.cpu().numpy()
        if progress is not None:
            progress(len(idx))
    return QueryMetrics(values, pr, np.asarray(query_labels))
