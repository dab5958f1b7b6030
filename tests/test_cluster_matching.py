"""One-to-many cluster matching: codes, asymmetric distances and the blend against brute force."""
import numpy as np
import pytest
import torch

from retrieval import reference
from retrieval.cluster_matching import (Codebook, blend_, check_pq_shape, cluster_distances, encode,
                                        fit_codebook)
from retrieval.metrics import METRIC_KEYS
from retrieval.search import RetrievalProblem
from tests.helpers_retrieval import clustered_features
from utils.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    features = clustered_features(n_query=30, n_gallery=120, n_classes=4, dim=12, seed=1)
    codewords = rng.standard_normal((3, 5, 4)).astype(np.float32) * 0.3    # M=3 subspaces of 4 dims, K=5
    return features, codewords


def brute_force_codes(x: np.ndarray, codewords: np.ndarray) -> np.ndarray:
    m, k, sub = codewords.shape
    codes = np.empty((len(x), m), dtype=np.int64)
    for i, row in enumerate(x):
        for s in range(m):
            codes[i, s] = int(np.argmin([np.sum((row[s * sub:(s + 1) * sub] - c) ** 2) for c in codewords[s]]))
    return codes


def decode(codes: np.ndarray, codewords: np.ndarray) -> np.ndarray:
    return np.concatenate([codewords[s][codes[:, s]] for s in range(codewords.shape[0])], axis=1)


def test_codes_are_the_nearest_codewords(data):
    features, codewords = data
    got = encode(torch.from_numpy(features.gallery), torch.from_numpy(codewords), chunk=17).numpy()
    np.testing.assert_array_equal(got, brute_force_codes(features.gallery, codewords))


def test_asymmetric_distance_is_the_distance_to_the_reconstruction(data):
    features, codewords = data
    codes = brute_force_codes(features.gallery, codewords)
    got = cluster_distances(torch.from_numpy(features.query), torch.from_numpy(codes), torch.from_numpy(codewords))
    expected = ((features.query[:, None, :] - decode(codes, codewords)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_items_sharing_codes_are_matched_as_a_group(data):
    features, codewords = data
    codes = torch.zeros(4, 3, dtype=torch.int64)           # four items, all with the same codes
    got = cluster_distances(torch.from_numpy(features.query), codes, torch.from_numpy(codewords))
    assert torch.equal(got, got[:, :1].expand_as(got))


def test_blend_is_alpha_cluster_plus_rest_euclidean(data):
    features, codewords = data
    problem = RetrievalProblem(features, CPU, chunk=8)
    codebook = Codebook(codewords)
    idx = np.arange(10)
    euclid = np.sqrt(((features.query[idx, None, :] - features.gallery[None]) ** 2).sum(-1))
    codes = brute_force_codes(features.gallery, codewords)
    cluster = ((features.query[idx, None, :] - decode(codes, codewords)[None]) ** 2).sum(-1)
    got = problem.distance_fn(codebook, alpha=0.8)(idx).numpy()
    np.testing.assert_allclose(got, 0.8 * cluster + 0.2 * euclid, rtol=1e-5, atol=1e-5)
    a, b = torch.ones(2, 3), torch.full((2, 3), 3.0)
    assert torch.allclose(blend_(a, b, 0.25), torch.full((2, 3), 1.5))


def test_one_to_many_metrics_agree_with_the_per_query_loop(data):
    features, codewords = data
    problem = RetrievalProblem(features, CPU, chunk=8)
    codebook = Codebook(codewords)
    dist = problem.distance_fn(codebook)(np.arange(len(features.query))).numpy()
    slow = reference.per_query_metrics(dist, features.query_labels, features.gallery_labels)
    fast = problem.evaluate(codebook)
    for name in METRIC_KEYS:
        np.testing.assert_allclose(fast.values[name], slow[name], atol=1e-9)


@pytest.mark.parametrize("quantizer,covariance", [("gmm", "full"), ("gmm", "diag"), ("kmeans", "full")])
def test_fit_is_seeded(data, quantizer, covariance):
    features, _ = data
    one = fit_codebook(features.gallery, 2, 4, quantizer, covariance, seed=5)
    two = fit_codebook(features.gallery, 2, 4, quantizer, covariance, seed=5)
    assert one.codewords.shape == (2, 4, 6) and one.codewords.dtype == np.float32
    np.testing.assert_array_equal(one.codewords, two.codewords)


def test_fit_on_a_capped_sample(data):
    features, _ = data
    assert fit_codebook(features.gallery, 2, 3, "kmeans", max_samples=40).codewords.shape == (2, 3, 6)


def test_pq_shape_errors_name_the_flag():
    with pytest.raises(UserError, match="--pq_m 5 does not divide the feature width 12"):
        check_pq_shape(12, 100, 5, 3)
    with pytest.raises(UserError, match="--pq_k 100"):
        check_pq_shape(12, 100, 2, 100)


# ---------------------------------------------------------------------------------- released seeding order
# An independent re-implementation of the released one-to-many sweep (utils/pq.py PQ.fit/encode/dtable/adist,
# the 0.8/0.2 blend with the Euclidean distance, utils/eval_tools.py): NumPy's global generator is seeded
# with 123 once per (M, K), and each subspace's fit (no random_state) continues the stream the previous
# subspace left.
def _released_codewords(gallery: np.ndarray, m: int, k: int, quantizer: str) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    saved = np.random.get_state()
    np.random.seed(123)
    try:
        sub_dim = gallery.shape[1] // m
        words = np.zeros((m, k, sub_dim), dtype=np.float32)
        for s in range(m):
            sub = gallery[:, s * sub_dim:(s + 1) * sub_dim]
            if quantizer == "gmm":
                words[s] = GaussianMixture(n_components=k).fit(sub).means_
            else:
                words[s] = KMeans(n_clusters=k, n_init=1).fit(sub).cluster_centers_
    finally:
        np.random.set_state(saved)
    return words


def _released_distances(query: np.ndarray, gallery: np.ndarray, words: np.ndarray) -> np.ndarray:
    from scipy.cluster.vq import vq
    from scipy.spatial.distance import cdist

    m, _, sub_dim = words.shape
    codes = np.stack([vq(gallery[:, s * sub_dim:(s + 1) * sub_dim], words[s])[0] for s in range(m)], axis=1)
    rows = []
    for q in query:
        table = np.stack([np.linalg.norm(words[s] - q[s * sub_dim:(s + 1) * sub_dim], axis=1) ** 2
                          for s in range(m)]).astype(np.float32)
        rows.append(table[np.arange(m), codes].sum(axis=1))
    return 0.8 * np.array(rows) + 0.2 * cdist(query, gallery)


def _voc_ap(label, row, gallery_labels, top=None):
    pos = gallery_labels == label
    order = np.argsort(row)
    tp, n_pos = pos[order], pos.sum()
    if top is not None:
        tp, n_pos = tp[:min(top, len(row))], min(top, n_pos)
    tp_c, fp_c = np.cumsum(tp), np.cumsum(~tp)
    rec, prec = tp_c / n_pos, tp_c / (tp_c + fp_c)
    mrec, mpre = np.concatenate([[0], rec, [1]]), np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    step = mrec[1:] != mrec[:-1]
    return float(np.sum((mrec[1:][step] - mrec[:-1][step]) * mpre[1:][step]))


def _precision(label, row, gallery_labels, top):
    top = min(top, len(row))
    return float(np.sum((gallery_labels == label)[np.argsort(row)][:top]) / top)


def _released_row(features, m: int, k: int, quantizer: str) -> dict:
    words = _released_codewords(features.gallery, m, k, quantizer)
    dist = _released_distances(features.query, features.gallery, words)
    ql, gl = features.query_labels, features.gallery_labels
    per_query = {"mAP@all": [_voc_ap(ql[i], dist[i], gl) for i in range(len(ql))],
                 "mAP@200": [_voc_ap(ql[i], dist[i], gl, 200) for i in range(len(ql))],
                 "P@100": [_precision(ql[i], dist[i], gl, 100) for i in range(len(ql))],
                 "P@200": [_precision(ql[i], dist[i], gl, 200) for i in range(len(ql))]}
    row = {"per_query": {}, "per_class": {}}
    for name, values in per_query.items():
        values = np.array(values)
        row["per_query"][name] = float(np.nanmean(values))
        row["per_class"][name] = float(np.mean([np.nanmean(values[ql == c]) for c in np.unique(ql)]))
    return row


@pytest.mark.parametrize("quantizer", ["gmm", "kmeans"])
def test_sweep_rows_equal_the_released_seeding_order(quantizer):
    from retrieval.search import QuantizerOptions

    # noisy class structure, K far from the class count: the subspace fits depend on where they start
    features = clustered_features(n_query=60, n_gallery=240, n_classes=6, dim=16, seed=7, noise=1.6)
    grid = [(2, 7), (4, 5)]
    entries = RetrievalProblem(features, CPU).sweep(grid, QuantizerOptions(quantizer=quantizer), "test")
    for entry, (m, k) in zip(entries, grid):
        expected = _released_row(features, m, k, quantizer)
        got = entry.metrics.averaged()
        for averaging in ("per_class", "per_query"):
            for name in METRIC_KEYS:
                assert got[averaging][name] == pytest.approx(expected[averaging][name], abs=1e-5), \
                    (quantizer, m, k, averaging, name)


def test_codewords_continue_one_stream_across_subspaces(data):
    features, _ = data
    got = fit_codebook(features.gallery, 3, 4, "gmm").codewords
    np.testing.assert_allclose(got, _released_codewords(features.gallery, 3, 4, "gmm"), rtol=1e-5, atol=1e-6)
