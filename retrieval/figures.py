"""``pr_curve.png`` and ``retrieval_examples.png`` (drawn by utils.plotting, with Pillow only)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from data.lists import parse_list_file, read_class_file
from data.registry import SettingPaths
from retrieval.metrics import DistanceFn, QueryMetrics
from retrieval.search import RetrievalProblem

EXAMPLE_ROWS = 8
EXAMPLE_RESULTS = 10


def write_pr_figure(curves: dict[str, QueryMetrics], out_png: Path, title: str) -> None:
    """Mean-over-queries interpolated precision against recall, one line per ranking."""
    from utils.plotting import plot_pr_curves

    plot_pr_curves({name: metrics.pr_curve() for name, metrics in curves.items()}, out_png, title)


def example_queries(query_labels: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
    """A fixed seeded choice of queries, one per class for as many classes as there are rows."""
    rng = np.random.default_rng(seed)
    classes = np.unique(query_labels)
    chosen = rng.choice(classes, size=min(n_rows, len(classes)), replace=False)
    return np.array([rng.choice(np.flatnonzero(query_labels == c)) for c in np.sort(chosen)])


def example_rows(problem: RetrievalProblem, paths: SettingPaths, seed: int,
                 rankings: Sequence[tuple[str, DistanceFn]], n_rows: int = EXAMPLE_ROWS
                 ) -> tuple[Optional[list[dict]], str]:
    """Rows for ``retrieval_grid``, or None and why they cannot be drawn.

    ``rankings``: (label, distance function) pairs; each example query gets one row per ranking (top 10),
    labelled with it when there is more than one. The features file holds no image paths: they come from
    the zero lists, whose order must be the features' order (true for files extracted from those lists).
    """
    features = problem.features
    sketch_paths, sketch_labels = parse_list_file(paths.list_file("sketch_zero"))
    photo_paths, photo_labels = parse_list_file(paths.list_file("photo_zero"))
    if not (np.array_equal(sketch_labels, features.query_labels)
            and np.array_equal(photo_labels, features.gallery_labels)):
        return None, (f"the features do not follow the order of {paths.list_file('sketch_zero').name} and "
                      f"{paths.list_file('photo_zero').name}")
    names = read_class_file(paths.zero_class_file)
    queries = example_queries(features.query_labels, n_rows, seed)
    dists = [distance_fn(queries).cpu().numpy() for _, distance_fn in rankings]
    rows = []
    for i, q in enumerate(queries):
        qlabel = int(features.query_labels[q])
        for (label, _), dist in zip(rankings, dists):
            top = np.argsort(dist[i], kind="stable")[:EXAMPLE_RESULTS]   # ties by gallery index, as in the metrics
            row = {"query_path": paths.root / sketch_paths[q], "query_class": names[qlabel],
                   "results": [(paths.root / photo_paths[j], names[int(photo_labels[j])],
                                bool(photo_labels[j] == qlabel)) for j in top]}
            if len(rankings) > 1:
                row["label"] = label
            rows.append(row)
    return rows, ""


def write_examples_figure(problem: RetrievalProblem, paths: SettingPaths, out_png: Path, seed: int,
                          rankings: Sequence[tuple[str, DistanceFn]], n_rows: int = EXAMPLE_ROWS) -> str:
    """Draw the grid; returns an empty string, or why it was skipped."""
    from utils.plotting import retrieval_grid

    rows, why_not = example_rows(problem, paths, seed, rankings, n_rows)
    if rows is None:
        return why_not
    retrieval_grid(rows, out_png)
    return ""

