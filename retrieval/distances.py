"""Query x gallery distance blocks on the chosen device.

Two primitives dominate evaluation time: the matrix product and the row sort. On CPU they go through
NumPy (its BLAS and SIMD sort measured about 2x and 4x faster than torch's CPU kernels here); on CUDA
through torch. The code around them is torch either way, so there is one code path.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch


def matmul_transposed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in float32 (the test scripts turn TF32 off, so rankings do not depend on the card)."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy().T))
    return a @ b.T


PARALLEL_SORT_MIN = 1 << 20     # elements


@lru_cache(maxsize=None)
def _sort_pool(n_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="row-sort")


def sort_rows_(x: torch.Tensor) -> torch.Tensor:
    """Ascending sort of every row, in place; returns ``x``.

    NumPy's sort is single-threaded but releases the GIL, so on CPU row bands are sorted in parallel
    on torch's intra-op thread count.
    """
    if x.device.type != "cpu":
        x.copy_(torch.sort(x, dim=1).values)
        return x
    rows = x.numpy()
    # Threads only pay off on large blocks (each band must outweigh the hand-off).
    n_threads = min(torch.get_num_threads(), rows.shape[0]) if rows.size >= PARALLEL_SORT_MIN else 1
    if n_threads <= 1:
        rows.sort(axis=1)
    else:
        bands = np.array_split(np.arange(rows.shape[0]), n_threads)
        list(_sort_pool(n_threads).map(lambda band: rows[band[0]:band[-1] + 1].sort(axis=1), bands))
    return x


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(dim=1)


def euclidean_distances(query: torch.Tensor, gallery: torch.Tensor,
                        gallery_sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances (float32, Nq x Ng), computed in place in one block.

    ``|q|^2 + |g|^2 - 2 q.g`` rather than assuming unit norms: released files are normalised only to
    float32 precision.
    """
    gsq = squared_norms(gallery) if gallery_sq_norms is None else gallery_sq_norms
    dist = matmul_transposed(query, gallery)
    dist.mul_(-2.0).add_(squared_norms(query)[:, None]).add_(gsq[None, :]).clamp_(min=0.0)
    if dist.device.type == "cpu":
        np.sqrt(dist.numpy(), out=dist.numpy())   # torch's CPU sqrt is not correctly rounded (1 ulp off)
        return dist
    return dist.sqrt_()


def euclidean_order_scores(query: torch.Tensor, gallery: torch.Tensor,
                           gallery_sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """``(|g|^2 - 1) / 2 - q.g``: per query, the Euclidean distance's order (it equals
    ``(d^2 - |q|^2 - 1) / 2``), for ranking only.

    For unit features these scores lie near 0, where float32 is about 30x finer than near d^2 = 2, so
    distinct gallery items tie far less often; and it takes two passes over the block instead of five.
    """
    gsq = squared_norms(gallery) if gallery_sq_norms is None else gallery_sq_norms
    scores = matmul_transposed(query, gallery)
    return scores.neg_().add_(((gsq - 1.0) * 0.5)[None, :])
