"""The one ranking recipe (retrieval.search): top k, ties and shown distances, against plain NumPy and the
test scripts' distance function."""
import numpy as np
import torch

from retrieval.cluster_matching import fit_codebook
from retrieval.metrics import evaluate_ranking
from retrieval.search import MatchingCodes, RetrievalProblem, rank, top_k
from tests.helpers_retrieval import clustered_features

CPU = torch.device("cpu")


def test_top_k_orders_ties_by_gallery_index_like_the_metrics():
    values = torch.tensor([[0.5, -0.25, 0.5, -0.25, 0.0, 0.5, -0.0, 0.0],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    expected = np.argsort(values.numpy(), axis=1, kind="stable")
    for k in (1, 3, 5, 8, 20):
        np.testing.assert_array_equal(top_k(values, k).numpy(), expected[:, :k])
    # the metrics rank by the same rule: a query whose positive is the tied item 3 has it at rank 2
    metrics = evaluate_ranking(lambda idx: values[:1], np.array([0]), np.array([1, 1, 1, 0, 1, 1, 1, 1]), 4, CPU)
    assert metrics.values["mAP@all"][0] == 0.5


def test_rank_is_the_test_scripts_ranking_in_both_modes():
    features = clustered_features(n_query=23, n_gallery=60, n_classes=4, dim=16, seed=3)
    problem = RetrievalProblem(features, CPU, chunk=5)
    query, gallery = torch.from_numpy(features.query), torch.from_numpy(features.gallery)
    all_rows = np.arange(len(features.query))
    euclid = np.linalg.norm(features.query[:, None, :].astype(np.float64) - features.gallery[None], axis=-1)

    order, dist = rank(query, gallery, 7, chunk=4)
    want = np.argsort(problem.distance_fn()(all_rows).numpy(), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(order, want)
    np.testing.assert_allclose(dist, np.take_along_axis(euclid, order, axis=1), atol=1e-5)

    codebook = fit_codebook(features.gallery, 2, 3)
    codes = MatchingCodes.of(gallery, codebook)
    order, dist = rank(query, gallery, 60, codes, chunk=6)
    blended = problem.distance_fn(codebook)(all_rows).numpy()
    np.testing.assert_array_equal(order, np.argsort(blended, axis=1, kind="stable"))
    np.testing.assert_allclose(dist, np.take_along_axis(blended, order, axis=1), atol=1e-6)   # blocks of other sizes
