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

    @property
    def _pr_rows(self) -> np.ndarray:
        """Rows of the queries with positives in the gallery (the others are NaN)."""
        return self.pr_precision[~np.isnan(self.pr_precision).any(axis=1)]

    @property
    def n_pr_queries(self) -> int:
        """How many queries ``pr_curve`` averages over."""
        return len(self._pr_rows)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean over queries (with positives) of the interpolated precision at each recall level."""
        rows = self._pr_rows
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
# Tied positives per query above which one sort of exact keys beats scanning each tied positive's row.
TIE_SCAN_LIMIT = 4
TIE_SCAN_BATCH = 256            # tied positives whose rows are scanned at once (bounds memory)


def new_workspace(n_rows: int, n_cols: int, device: torch.device) -> torch.Tensor:
    """Scratch space for ``positive_ranks`` on blocks up to ``n_rows`` rows; reused across blocks, since a
    fresh allocation of this size costs more in page faults than filling it."""
    return torch.empty(n_rows, n_cols, 2, dtype=torch.int32, device=device)


def ranking_keys(dist: torch.Tensor, workspace: torch.Tensor) -> torch.Tensor:
    """int64 keys whose ascending order is (distance, gallery index), one per element of ``dist``.

    High word = the float32 distance read as an int32 (the same order for non-negative floats), low word
    = the column index. Written as two int32 halves of each int64 (no shift/or passes over the block).
    """
    n_rows, n_cols = dist.shape
    words = workspace[:n_rows]
    words[..., _LOW] = torch.arange(n_cols, dtype=torch.int32, device=dist.device)
    high = words[..., _HIGH]
    high.view(torch.float32).copy_(dist).add_(0.0)          # + 0.0 turns -0.0 into +0.0: they compare equal
    if bool(dist.min() < 0):                                # negative floats order backwards as integers
        high.copy_(torch.where(high < 0, high ^ 0x7FFFFFFF, high))
    return words.view(torch.int64).view(n_rows, n_cols)


def _ranks_by_keys(dist: torch.Tensor, groups: list[tuple[slice, torch.Tensor]],
                   workspace: torch.Tensor) -> list[torch.Tensor]:
    """Exact whatever the ties: with unique keys, a positive's rank is 1 + the number of keys below it."""
    keys = ranking_keys(dist, workspace)
    pos_keys = [sort_rows_(keys[rows].index_select(1, cols)) for rows, cols in groups]
    sort_rows_(keys)
    return [torch.searchsorted(keys[rows], pk) + 1 for (rows, _), pk in zip(groups, pos_keys)]


def _ranks_by_values(dist: torch.Tensor, groups: list[tuple[slice, torch.Tensor]],
                     workspace: torch.Tensor) -> Optional[list[torch.Tensor]]:
    """Sort the distances themselves (half the bytes of keys); a positive that ties with another item is
    then placed by counting, in its row, the equal items of smaller gallery index. None when ties are
    too many for that to pay."""
    n_rows, n_cols = dist.shape
    sorted_dist = workspace.view(-1)[:n_rows * n_cols].view(torch.float32).view(n_rows, n_cols)
    sort_rows_(sorted_dist.copy_(dist))
    placed = []
    for rows, cols in groups:
        values, order = torch.sort(dist[rows].index_select(1, cols), dim=1, stable=True)
        below = torch.searchsorted(sorted_dist[rows], values)             # items strictly closer
        after = sorted_dist[rows].gather(1, (below + 1).clamp(max=n_cols - 1))
        tied = (after == values) & (below + 1 < n_cols)                   # another item at the same distance
        placed.append((rows, cols, values, order, below + 1, tied))
    if sum(int(tied.sum()) for *_, tied in placed) > TIE_SCAN_LIMIT * n_rows:
        return None
    column = torch.arange(n_cols, device=dist.device)
    for rows, cols, values, order, ranks, tied in placed:
        tied_rows, tied_pos = torch.nonzero(tied, as_tuple=True)
        for start in range(0, len(tied_rows), TIE_SCAN_BATCH):
            r, j = tied_rows[start:start + TIE_SCAN_BATCH], tied_pos[start:start + TIE_SCAN_BATCH]
            row_dist = dist.index_select(0, r + rows.start)
            earlier = (row_dist == values[r, j, None]) & (column < cols[order[r, j]][:, None])
            ranks[r, j] += earlier.sum(dim=1)
    return [ranks for *_, ranks, _ in placed]


def positive_ranks(dist: torch.Tensor, groups: list[tuple[slice, torch.Tensor]],
                   workspace: Optional[torch.Tensor] = None, try_values: bool = True
                   ) -> tuple[list[torch.Tensor], bool]:
    """1-based ranks of the positives in each row's ranking (distance, then gallery index), ascending.

    ``groups`` = (rows of the block, the positives' gallery indices) per query class in the block; one
    (rows x npos) tensor comes back per group, with whether the block was tie-heavy. Float32 distances over
    54k items can tie often (the one-to-many blend: tens of positives per query), so a tie-heavy block
    sorts exact (distance, index) keys; otherwise the cheaper sort of the distances plus a scan per tie is
    used. ``try_values=False`` goes to the keys at once (a caller that saw a tie-heavy block).
    """
    workspace = new_workspace(*dist.shape, dist.device) if workspace is None else workspace
    by_values = _ranks_by_values(dist, groups, workspace) if try_values else None
    if by_values is not None:
        return by_values, False
    return _ranks_by_keys(dist, groups, workspace), True


def _reverse_cummax(x: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(x[:, ::-1], axis=1)[:, ::-1]


def metrics_from_ranks(ranks: np.ndarray, n_gallery: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All four metrics and the interpolated PR points of a group, from its positives' ranks.

    NumPy even when ranking ran on CUDA: these arrays are small, and torch's thread pool costs more than
    the work at this size on a CPU.
    """
    n_rows, n_pos = ranks.shape
    out: dict[str, np.ndarray] = {}
    if n_pos == 0:
        out.update({name: np.full(n_rows, np.nan) for name in AP_CUTOFFS})
        out.update({name: np.zeros(n_rows) for name in PRECISION_CUTOFFS})
        return out, np.full((n_rows, len(PR_RECALL_LEVELS)), np.nan)
    precision_at_hits = np.arange(1, n_pos + 1) / ranks
    envelope_all = None
    for name, k in AP_CUTOFFS.items():
        depth = n_gallery if k is None else min(k, n_gallery)
        first = min(depth, n_pos)                  # at most this many hits fit in the top `depth`
        # Hits below the cut-off get precision 0, which is also the envelope's right-hand sentinel.
        envelope = _reverse_cummax(precision_at_hits[:, :first] * (ranks[:, :first] <= depth))
        out[name] = envelope.sum(axis=1) / first
        if k is None:
            envelope_all = envelope
    for name, k in PRECISION_CUTOFFS.items():
        depth = min(k, n_gallery)
        out[name] = (ranks[:, :min(depth, n_pos)] <= depth).sum(axis=1) / depth
    # Interpolated precision at recall r = the envelope at the first hit whose recall reaches r.
    first_hit = np.maximum(np.ceil(PR_RECALL_LEVELS * n_pos - 1e-9).astype(np.int64), 1) - 1
    return out, envelope_all[:, first_hit]


def query_blocks(query_labels: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, list[tuple[slice, int]]]]:
    """Blocks of at most ``chunk`` queries, sorted by class: (query indices, [(rows, class label), ...])."""
    order = np.argsort(query_labels, kind="stable")
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        labels = query_labels[idx]
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(labels)) + 1, [len(idx)]))
        yield idx, [(slice(int(a), int(b)), int(labels[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def evaluate_ranking(distance_fn: DistanceFn, query_labels: np.ndarray, gallery_labels: np.ndarray,
                     chunk: int, device: torch.device, progress: Optional[Callable[[int], None]] = None
                     ) -> QueryMetrics:
    """Per-query metrics of the ranking that ``distance_fn`` defines, one block of queries at a time.

    Memory stays at a few blocks of ``chunk x gallery`` values whatever the number of queries.
    """
    n_query, n_gallery = len(query_labels), len(gallery_labels)
    values = {name: np.empty(n_query) for name in METRIC_KEYS}
    pr = np.empty((n_query, len(PR_RECALL_LEVELS)))
    gallery_labels_t = torch.as_tensor(gallery_labels, device=device)
    positives = {int(c): torch.nonzero(gallery_labels_t == int(c)).flatten() for c in np.unique(query_labels)}
    workspace = new_workspace(min(chunk, n_query), n_gallery, device)
    tie_heavy = False         # a property of the distance function: once seen, later blocks skip the cheap try
    for idx, groups in query_blocks(query_labels, chunk):
        ranks, tie_heavy = positive_ranks(distance_fn(idx), [(rows, positives[c]) for rows, c in groups],
                                          workspace, try_values=not tie_heavy)
        for (rows, _), group_ranks in zip(groups, ranks):
            group, group_pr = metrics_from_ranks(group_ranks.cpu().numpy(), n_gallery)
            for name in METRIC_KEYS:
                values[name][idx[rows]] = group[name]
            pr[idx[rows]] = group_pr
        if progress is not None:
            progress(len(idx))
    return QueryMetrics(values, pr, np.asarray(query_labels))
