"""Evaluation speed at the real sizes of METHOD.md section 1 (a benchmark, not a test).

For each size, on class-structured random unit features, in one run:
  - the project's evaluation (all four metrics, both averagings), mode 1 (one-to-one);
  - the floor: one query x gallery matrix product plus one sort of every row, with NumPy;
  - a straightforward per-query loop (retrieval.reference) on a subsample, extrapolated;
  - mode 2 per (M, K): the codeword fit, timed on its own, and the matching + metrics with the codebook given;
  - the ratios, and the process's peak resident memory after mode 1.

    .venv/bin/python bench/bench_metrics.py                       # QuickDraw and TU-Berlin at full size
    .venv/bin/python bench/bench_metrics.py --scale 0.1 --sizes tuberlin
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import utils  # noqa: E402, F401 - sets OpenMP up before torch loads (utils/runtime.py)
import torch  # noqa: E402

from retrieval import reference  # noqa: E402
from retrieval.cluster_matching import fit_codebook  # noqa: E402
from retrieval.feature_io import FeatureSet  # noqa: E402
from retrieval.search import RetrievalProblem  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402

# name -> (queries, gallery, classes): METHOD.md section 1
SIZES = {"quickdraw": (92_291, 54_151, 30), "tuberlin": (2_400, 27_989, 30)}


def class_structured(n_query: int, n_gallery: int, n_classes: int, dim: int, seed: int = 0,
                     noise: float = 3.3) -> FeatureSet:
    """Unit features around per-class centres; at 768-d the default noise puts mAP@all near 0.6, like real
    features."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, n_classes, n)
        x = centres[labels]
        x += noise * rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, labels.astype(np.int64)

    g, gl = draw(n_gallery)
    q, ql = draw(n_query)
    return FeatureSet(g, gl, q, ql)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # ru_maxrss is in KiB on Linux


def time_project(problem: RetrievalProblem, codebook=None) -> tuple[float, dict]:
    start = time.perf_counter()
    averaged = problem.evaluate(codebook).averaged()
    return time.perf_counter() - start, averaged


def time_floor(features: FeatureSet, chunk: int) -> float:
    """One matrix product and one (values-only) sort per row, NumPy, same chunking."""
    start = time.perf_counter()
    for i in range(0, len(features.query), chunk):
        np.sort(features.query[i:i + chunk] @ features.gallery.T, axis=1)
    return time.perf_counter() - start


def time_loop(features: FeatureSet, n_sample: int, seed: int) -> float:
    """Per-query distances + the four metrics, one query at a time; extrapolated to all queries."""
    idx = np.random.default_rng(seed).choice(len(features.query), size=min(n_sample, len(features.query)),
                                             replace=False)
    start = time.perf_counter()
    for i in idx:
        row = np.linalg.norm(features.gallery - features.query[i], axis=1)
        reference.per_query_metrics(row[None], features.query_labels[i:i + 1], features.gallery_labels)
    return (time.perf_counter() - start) / len(idx) * len(features.query)


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="problem sizes to time")
    p.add_argument("--scale", type=float, default=1.0, help="multiply query and gallery counts")
    p.add_argument("--dim", type=int, default=768, help="feature dimension")
    p.add_argument("--chunk", type=int, default=1024, help="queries per distance block")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--loop_queries", type=int, default=20, help="queries timed in the per-query loop")
    p.add_argument("--pq", nargs="*", default=["2x30", "4x30"], help="mode-2 (M x K) pairs; none to skip")
    p.add_argument("--quantizer", default="gmm", choices=("gmm", "kmeans"), help="codeword fitting")
    p.add_argument("--gmm_covariance", default="full", help="GaussianMixture covariance type")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, chunk {args.chunk}, dim {args.dim}")
    for name in args.sizes:
        nq, ng = (max(SIZES[name][2], int(round(n * args.scale))) for n in SIZES[name][:2])
        nc = SIZES[name][2]
        features = class_structured(nq, ng, nc, args.dim)
        problem = RetrievalProblem(features, device, args.chunk)
        mode1, averaged = time_project(problem)
        rss = peak_rss_gb()
        floor = time_floor(features, args.chunk)
        loop = time_loop(features, args.loop_queries, seed=0)
        print(f"\n{name}: {nq} queries x {ng} gallery, {nc} classes "
              f"(mAP@all per class {averaged['per_class']['mAP@all']:.3f})")
        print(f"  mode 1 (4 metrics, both averagings) {mode1:9.1f} s   peak RSS so far {rss:.2f} GB")
        print(f"  floor (NumPy matmul + row sort)     {floor:9.1f} s   mode 1 / floor = {mode1 / floor:.2f}")
        print(f"  per-query loop, extrapolated        {loop:9.1f} s   loop / mode 1 = {loop / mode1:.0f}x "
              f"({args.loop_queries} queries timed)")
        for spec in args.pq:
            m, k = (int(v) for v in spec.lower().split("x"))
            start = time.perf_counter()
            codebook = fit_codebook(features.gallery, m, k, args.quantizer, args.gmm_covariance)
            fit = time.perf_counter() - start
            mode2, _ = time_project(problem, codebook)
            print(f"  mode 2 M={m} K={k}: fit ({args.quantizer}) {fit:7.1f} s, matching + metrics {mode2:7.1f} s"
                  f"   mode 2 / mode 1 = {mode2 / mode1:.2f}")
        print(f"  peak RSS of the run {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
