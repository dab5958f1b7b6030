"""The vectorised metrics against the straightforward per-query implementation (retrieval.reference)."""
import numpy as np
import pytest
import torch

from retrieval import metrics, reference
from retrieval.distances import euclidean_distances, euclidean_order_scores, sort_rows_
from retrieval.metrics import (METRIC_KEYS, PR_RECALL_LEVELS, class_mean, evaluate_ranking, nan_mean,
                               positive_ranks)

CPU = torch.device("cpu")


@pytest.fixture(params=["auto", "scan ties", "sort keys"], autouse=True)
def ranking_path(request, monkeypatch):
    """Every test runs with the automatic choice and with each of the two exact ranking paths forced."""
    if request.param == "scan ties":
        monkeypatch.setattr(metrics, "TIE_SCAN_LIMIT", 10**9)
    elif request.param == "sort keys":
        monkeypatch.setattr(metrics, "TIE_SCAN_LIMIT", -1)
    return request.param


def fast_metrics(dist: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, chunk: int = 7):
    """The project's metrics of a fixed distance matrix."""
    return evaluate_ranking(lambda idx: torch.from_numpy(dist[idx].copy()), query_labels, gallery_labels,
                            chunk, CPU)


def assert_agree(dist: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, chunk: int = 7) -> None:
    fast = fast_metrics(dist, query_labels, gallery_labels, chunk)
    slow = reference.per_query_metrics(dist, query_labels, gallery_labels)
    for name in METRIC_KEYS:
        np.testing.assert_array_equal(np.isnan(fast.values[name]), np.isnan(slow[name]), err_msg=name)
        np.testing.assert_allclose(fast.values[name], slow[name], rtol=0, atol=1e-9, equal_nan=True, err_msg=name)
        assert fast.averaged()["per_query"][name] == pytest.approx(np.nanmean(slow[name]), abs=1e-9)
        assert fast.averaged()["per_class"][name] == pytest.approx(
            reference.per_class_mean(slow[name], query_labels), abs=1e-9)


def test_voc_envelope_is_not_sklearn_average_precision():
    # Ranking N, P, P: precision at the hits is 1/2 and 2/3; the envelope makes both 2/3.
    dist = np.array([[0.0, 1.0, 2.0]], dtype=np.float32)
    gallery = np.array([0, 1, 1])
    assert reference.average_precision(dist[0], 1, gallery) == pytest.approx(2 / 3)
    assert fast_metrics(dist, np.array([1]), gallery).values["mAP@all"][0] == pytest.approx(2 / 3)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert sklearn_metrics.average_precision_score([0, 1, 1], [3, 2, 1]) == pytest.approx(7 / 12)


@pytest.mark.parametrize("seed", range(6))
def test_random_data_agrees_with_the_per_query_loop(seed):
    rng = np.random.default_rng(seed)
    n_query, n_gallery = int(rng.integers(20, 80)), int(rng.integers(30, 190))   # k = 200 exceeds the gallery
    query_labels = rng.integers(0, 6, n_query)
    gallery_labels = rng.integers(0, 5, n_gallery)          # class 5 has queries but no gallery item -> NaN AP
    assert (query_labels == 5).any() and not (gallery_labels == 5).any()
    dist = rng.random((n_query, n_gallery), dtype=np.float32)
    assert_agree(dist, query_labels, gallery_labels)


def test_truncation_below_the_gallery_size_agrees():
    rng = np.random.default_rng(7)
    query_labels, gallery_labels = rng.integers(0, 3, 30), rng.integers(0, 3, 700)   # npos > 200 here
    assert_agree(rng.random((30, 700), dtype=np.float32), query_labels, gallery_labels, chunk=4)


@pytest.mark.parametrize("levels", [2, 5])
def test_tied_distances_are_ranked_by_gallery_index(levels):
    rng = np.random.default_rng(levels)
    query_labels, gallery_labels = rng.integers(0, 4, 40), rng.integers(0, 4, 120)
    dist = rng.integers(0, levels, (40, 120)).astype(np.float32)      # almost every distance is tied
    assert_agree(dist, query_labels, gallery_labels)


def test_negative_and_signed_zero_distances_keep_the_order():
    rng = np.random.default_rng(5)
    dist = rng.integers(-3, 3, (30, 80)).astype(np.float32)
    dist[dist == 0] = np.where(rng.random((dist == 0).sum()) < 0.5, -0.0, 0.0)   # -0.0 ties with +0.0
    assert_agree(dist, rng.integers(0, 3, 30), rng.integers(0, 3, 80))


def test_tie_rule_on_a_hand_example():
    # Both items at the same distance: the negative (index 0) comes first, so AP = 1/2.
    dist = np.zeros((1, 2), dtype=np.float32)
    assert fast_metrics(dist, np.array([1]), np.array([0, 1])).values["mAP@all"][0] == pytest.approx(0.5)
    assert fast_metrics(dist, np.array([1]), np.array([1, 0])).values["mAP@all"][0] == pytest.approx(1.0)


def test_euclidean_distances_and_ranking_from_features():
    # Small-integer coordinates make every dot product exact, so ties are real and reproducible.
    rng = np.random.default_rng(3)
    gallery = rng.integers(-1, 2, (150, 8)).astype(np.float32)
    queries = rng.integers(-1, 2, (25, 8)).astype(np.float32)
    dist = euclidean_distances(torch.from_numpy(queries), torch.from_numpy(gallery)).numpy()
    exact = np.sqrt(((queries[:, None, :] - gallery[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(dist, exact.astype(np.float32))
    query_labels, gallery_labels = rng.integers(0, 3, 25), rng.integers(0, 3, 150)
    assert_agree(dist, query_labels, gallery_labels)
    # The one-to-one scores rank exactly as the distances do, ties included.
    scores = euclidean_order_scores(torch.from_numpy(queries), torch.from_numpy(gallery)).numpy()
    for name in METRIC_KEYS:
        np.testing.assert_array_equal(fast_metrics(scores, query_labels, gallery_labels).values[name],
                                      fast_metrics(dist, query_labels, gallery_labels).values[name])


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(11)
    query_labels, gallery_labels = rng.integers(0, 4, 50), rng.integers(0, 4, 90)
    dist = rng.random((50, 90), dtype=np.float32)
    one, many = fast_metrics(dist, query_labels, gallery_labels, 1), fast_metrics(dist, query_labels, gallery_labels, 1000)
    for name in METRIC_KEYS:
        np.testing.assert_array_equal(one.values[name], many.values[name])


def test_positive_ranks_on_a_hand_example():
    dist = torch.tensor([[0.4, 0.1, 0.3, 0.2, 0.5]])
    # ranking: 1, 3, 2, 0, 4 -> positives {0, 2} sit at ranks 4 and 3
    ranks, _ = positive_ranks(dist, [(slice(0, 1), torch.tensor([0, 2]))])
    assert [r.tolist() for r in ranks] == [[[3, 4]]]


def test_averaging_skips_nan_and_weights_classes_equally():
    values = np.array([1.0, 0.0, 0.0, 0.0, np.nan])
    labels = np.array([0, 1, 1, 1, 2])
    assert nan_mean(values) == pytest.approx(0.25)
    assert class_mean(values, labels) == pytest.approx(0.5)     # class 2 (NaN only) is left out
    assert np.isnan(class_mean(np.array([np.nan]), np.array([0])))


def test_precision_of_a_class_without_gallery_items_is_zero():
    got = fast_metrics(np.zeros((1, 3), dtype=np.float32), np.array([9]), np.array([0, 1, 2]))
    assert np.isnan(got.values["mAP@all"][0]) and got.values["P@100"][0] == 0.0


def test_pr_curve_is_the_interpolated_envelope():
    # Ranking P, N, P, N: precision 1 at recall 1/2, 2/3 at recall 1.
    dist = np.array([[0.0, 1.0, 2.0, 3.0]], dtype=np.float32)
    got = fast_metrics(dist, np.array([1]), np.array([1, 0, 1, 0]))
    recall, precision = got.pr_curve()
    np.testing.assert_allclose(recall, PR_RECALL_LEVELS)
    np.testing.assert_allclose(precision, np.where(PR_RECALL_LEVELS <= 0.5, 1.0, 2 / 3))


def test_row_sort_matches_numpy():
    x = torch.from_numpy(np.random.default_rng(0).random((9, 31), dtype=np.float32))
    expected = np.sort(x.numpy(), axis=1)
    assert sort_rows_(x) is x
    np.testing.assert_array_equal(x.numpy(), expected)
