"""A straightforward per-query implementation of the metrics, in the released scripts' style.

One full sort per query and a Python loop for the precision envelope (the SAKE/DSN/SBKA ``VOCap``).
It is the oracle the vectorised code in ``retrieval.metrics`` is tested against and the baseline the
benchmark times; it is not used for results. The only departures from the released code are defined
ties (stable sort: equal distances ordered by gallery index) and an explicit NaN for a query whose class
has no gallery item (the released code reaches NaN through a 0/0 division).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the VOC precision envelope, with sentinels (0, ..., 1) and (0, ..., 0)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    changes = [i for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i]]
    return float(sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in changes))


def average_precision(distances: np.ndarray, query_label: int, gallery_labels: np.ndarray,
                      top: Optional[int] = None) -> float:
    """AP (``top=None``) or AP@top of one query."""
    relevant = gallery_labels == query_label
    n_pos = int(relevant.sum())
    if n_pos == 0:
        return float("nan")
    hits = relevant[np.argsort(distances, kind="stable")]
    if top is not None:
        top = min(top, len(distances))
        hits = hits[:top]
        n_pos = min(top, n_pos)
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    return voc_ap(tp / n_pos, tp / (tp + fp))


def precision_at(distances: np.ndarray, query_label: int, gallery_labels: np.ndarray, top: int) -> float:
    """Positives among the first ``min(top, gallery size)`` results, divided by that number."""
    top = min(top, len(distances))
    relevant = gallery_labels == query_label
    return float(relevant[np.argsort(distances, kind="stable")][:top].sum() / top)


def per_query_metrics(distances: np.ndarray, query_labels: np.ndarray,
                      gallery_labels: np.ndarray) -> dict[str, np.ndarray]:
    """The four metrics of every query, one query at a time."""
    out: dict[str, list[float]] = {"mAP@all": [], "mAP@200": [], "P@100": [], "P@200": []}
    for row, label in zip(distances, query_labels):
        out["mAP@all"].append(average_precision(row, label, gallery_labels))
        out["mAP@200"].append(average_precision(row, label, gallery_labels, top=200))
        out["P@100"].append(precision_at(row, label, gallery_labels, 100))
        out["P@200"].append(precision_at(row, label, gallery_labels, 200))
    return {k: np.asarray(v) for k, v in out.items()}


def per_class_mean(values: np.ndarray, query_labels: np.ndarray) -> float:
    """Mean over classes of the per-class mean (NaN queries skipped, all-NaN classes left out)."""
    class_means = []
    for label in sorted(set(query_labels.tolist())):
        members = values[query_labels == label]
        members = members[~np.isnan(members)]
        if len(members):
            class_means.append(members.mean())
    return float(np.mean(class_means)) if class_means else float("nan")
