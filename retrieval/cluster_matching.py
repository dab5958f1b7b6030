"""One-to-many cluster matching (METHOD.md section 6): product quantisation of the gallery.

The D-dim feature is cut into M contiguous sub-vectors; in each subspace K codewords are fitted on the
gallery (scikit-learn ``GaussianMixture`` means, as the released code does, or k-means as a faster
option); every gallery item is coded by its nearest codeword per subspace. The cluster distance of a
query to an item is the sum over subspaces of the squared distance from the query's sub-vector to the
item's codeword, read from a per-query table (query x subspace x codeword). Items that share codes are
matched as a group. The final distance blends it with the (non-squared) Euclidean distance:
``alpha * cluster + (1 - alpha) * euclidean``, alpha = 0.8 in the released code.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from utils.errors import UserError

from retrieval.defaults import DEFAULT_SEED


@dataclass
class Codebook:
    """Codewords (M x K x D/M, float32) and whether every subspace's fit converged."""

    codewords: np.ndarray
    converged: bool = True

    @property
    def n_subspaces(self) -> int:
        return int(self.codewords.shape[0])

    @property
    def n_codewords(self) -> int:
        return int(self.codewords.shape[1])


def check_pq_shape(dim: int, n_items: int, m: int, k: int) -> None:
    """M must divide the feature width and K must be below the number of fitted items."""
    if m < 1:
        raise UserError(f"--pq_m must be at least 1, got {m}")
    if dim % m:
        raise UserError(f"--pq_m {m} does not divide the feature width {dim}")
    if not 1 < k < n_items:
        raise UserError(f"--pq_k {k} must be between 2 and the number of gallery items minus 1 ({n_items - 1})")


def fit_codebook(gallery: np.ndarray, m: int, k: int, quantizer: str = "gmm", covariance: str = "full",
                 max_samples: Optional[int] = None, seed: int = DEFAULT_SEED) -> Codebook:
    """Fit K codewords in each of M subspaces of the gallery features (seeded).

    One ``RandomState(seed)`` is shared by the M fits in subspace order, so subspace s continues the random
    stream that subspace s - 1 left: what the released ``PQ.fit`` does by seeding NumPy's global generator
    once and fitting with ``random_state=None`` (which draws from that generator). The optional sample
    (``max_samples``) is drawn from a separate generator and leaves this stream untouched.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    n, dim = gallery.shape
    if max_samples is not None and max_samples < n:
        gallery = gallery[np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))]
    check_pq_shape(dim, len(gallery), m, k)
    sub_dim = dim // m
    codewords = np.empty((m, k, sub_dim), dtype=np.float32)
    converged = True
    stream = np.random.RandomState(seed)
    for s in range(m):
        sub = np.ascontiguousarray(gallery[:, s * sub_dim:(s + 1) * sub_dim])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)   # reported once through `converged`
            try:
                if quantizer == "gmm":
                    model = GaussianMixture(n_components=k, covariance_type=covariance, random_state=stream).fit(sub)
                    codewords[s] = model.means_
                else:
                    model = KMeans(n_clusters=k, n_init=1, random_state=stream).fit(sub)
                    codewords[s] = model.cluster_centers_
            except ValueError as exc:
                raise UserError(f"fitting {k} codewords in subspace {s} of {m} failed "
                                f"({str(exc).splitlines()[0]}); try --gmm_covariance diag or other --pq_k") from None
        converged &= bool(getattr(model, "converged_", True))
    return Codebook(codewords, converged)


def subspace_tables(x: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """Squared distance of each row's sub-vectors to every codeword: (n, M, K).

    Expanded as ``|x_s|^2 - 2 x_s.c + |c|^2`` (one batched matrix product per block) rather than by
    differences, which would materialise n x M x K x D/M floats.
    """
    m, k, sub_dim = codewords.shape
    parts = x.reshape(x.shape[0], m, sub_dim).transpose(0, 1)                 # (M, n, D/M)
    cross = torch.bmm(parts, codewords.transpose(1, 2))                       # (M, n, K)
    tables = (parts * parts).sum(-1, keepdim=True) - 2.0 * cross + (codewords * codewords).sum(-1)[:, None, :]
    return tables.clamp_(min=0.0).transpose(0, 1)


def encode(x: torch.Tensor, codewords: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Nearest codeword per subspace (first on ties): int64 codes (n, M)."""
    return torch.cat([subspace_tables(x[i:i + chunk], codewords).argmin(dim=2)
                      for i in range(0, x.shape[0], chunk)])


def cluster_distances(query: torch.Tensor, codes: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """Asymmetric distance ``sum_s |q_s - c_{s, code(i, s)}|^2`` of every query to every item (nq x Ng)."""
    tables = subspace_tables(query, codewords)
    out = tables[:, 0].index_select(1, codes[:, 0])
    for s in range(1, codes.shape[1]):
        out += tables[:, s].index_select(1, codes[:, s])
    return out


def blend_(euclidean: torch.Tensor, cluster: torch.Tensor, alpha: float) -> torch.Tensor:
    """In place: ``alpha * cluster + (1 - alpha) * euclidean`` (the released code's mix)."""
    return euclidean.mul_(1.0 - alpha).add_(cluster, alpha=alpha)
