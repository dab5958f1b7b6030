"""Write a synthetic, class-structured ``features_zero.pickle`` (a fixture for the test scripts, not a test).

Unit features around per-class centres (bench_metrics.class_structured), so that any test script scores it
without a dataset or a model, e.g. the one-to-many sweep rows (K around the class count, as in the released grids):

    .venv/bin/python bench/synthetic_features.py /tmp/synthetic
    .venv/bin/python test_tuberlin_ext_zeroshot.py --resume_dir /tmp/synthetic --data_root /nonexistent \
        --no_figures --pq_m 2 4 --pq_k 9 10 11
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_metrics import class_structured  # noqa: E402
from retrieval.feature_io import save_features  # noqa: E402
from utils.cli import ArgumentParser
from utils.run_files import FEATURES_FILE  # noqa: E402


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help=f"receives {FEATURES_FILE}")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--gallery", type=int, default=1500)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--noise", type=float, default=2.0, help="per-coordinate noise around unit-normal centres")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    features = class_structured(args.queries, args.gallery, args.classes, args.dim, args.seed, args.noise)
    save_features(features, args.out_dir / FEATURES_FILE)
    print(f"wrote {args.out_dir / FEATURES_FILE}: {args.queries} queries, {args.gallery} gallery items, "
          f"{args.classes} classes, {args.dim}-d")


if __name__ == "__main__":
    main()
