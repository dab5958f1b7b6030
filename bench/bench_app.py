"""Sketch-search app speed at the real model's size (a benchmark, not a test).

``convnextv2_tiny`` at 224 px with random weights (timing does not depend on the weights) over a gallery of
17,101 random unit features (Sketchy zeroshot1's unseen-class photo count); the photos themselves are never
read by a search. Measured:
  - query latency as the API measures it (decode + embed + rank, top 20): median, p90, over ``--queries``
    hand-drawn-like PNGs, the three parts on their own, and the process's CPU time per query (which a
    busy machine does not inflate the way it inflates wall time);
  - 50 concurrent ``POST /api/search`` on the real server (uvicorn on 127.0.0.1): every answer compared
    with the one-at-a-time answer for the same image, and the wall time.

    .venv/bin/python bench/bench_app.py                 # needs requirements-app.txt
    .venv/bin/python bench/bench_app.py --queries 20 --gallery 17101 --concurrent 50
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if "--spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")      # as every entry point sets it (utils/runtime.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from app.gallery import Gallery  # noqa: E402
from app.images import decode_query  # noqa: E402
from app.searcher import SketchSearcher  # noqa: E402
from models import build_student  # noqa: E402
from utils.cli import ArgumentParser

SKETCHY_ZERO_PHOTOS = 17_101


def sketch_png(seed: int, size: int = 256) -> bytes:
    """A few pen strokes on white, as the page sends them."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        draw.line([tuple(p) for p in rng.integers(8, size - 8, (4, 2))], fill="black", width=3, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_searcher(model: str, img_size: int, n_gallery: int) -> SketchSearcher:
    torch.manual_seed(0)
    student = build_student(model, 100)
    dim = student.embed(torch.zeros(1, 3, 64, 64)).shape[1]
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n_gallery, dim), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    gallery = Gallery("folder", Path("."), [f"photo_{i:05d}.jpg" for i in range(n_gallery)], feats)
    config = {"setting": "sketchy/zeroshot1", "model": model, "img_size": img_size}
    return SketchSearcher(student, config, gallery, torch.device("cpu"))


def ms(seconds: list[float]) -> str:
    values = sorted(s * 1000 for s in seconds)
    return (f"median {statistics.median(values):7.1f} ms   p90 {values[int(0.9 * (len(values) - 1))]:7.1f} ms   "
            f"min {values[0]:7.1f} ms")


def latency(searcher: SketchSearcher, queries: list[bytes], k: int) -> dict[str, list[float]]:
    parts: dict[str, list[float]] = {"decode": [], "embed": [], "rank": [], "search (API)": [],
                                     "search CPU": []}
    for data in queries:
        t0 = time.perf_counter()
        img = decode_query(data)
        t1 = time.perf_counter()
        q = searcher.embed(img)
        t2 = time.perf_counter()
        searcher.rank(q, k)
        t3, c3 = time.perf_counter(), time.process_time()
        searcher.search(data, k)
        t4, c4 = time.perf_counter(), time.process_time()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, c4 - c3)):
            parts[name].append(dt)
    return parts


def post(port: int, data: bytes, k: int) -> tuple[int, list[int]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", f"/api/search?k={k}", body=data, headers={"Content-Type": "image/png"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, [r["index"] for r in body.get("results", [])]


def concurrent(searcher: SketchSearcher, n: int, k: int) -> None:
    from app.server import create_app, serve_in_thread

    server, thread, port = serve_in_thread(create_app(searcher))
    distinct = [sketch_png(1000 + i) for i in range(10)]
    expected = [post(port, d, k)[1] for d in distinct]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(lambda i: post(port, distinct[i % 10], k), range(n)))
    wall = time.perf_counter() - start
    correct = sum(status == 200 and got == expected[i % 10] for i, (status, got) in enumerate(answers))
    print(f"{n} concurrent requests: {correct}/{n} answered correctly (status 200, same top {k} as one at a time), "
          f"wall {wall:.2f} s ({wall / n * 1000:.0f} ms per request)")
    server.should_exit = True
    thread.join(10)
    if correct != n:
        sys.exit(1)


def main() -> None:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="convnextv2_tiny", help="timm model")
    p.add_argument("--img_size", type=int, default=224, help="input size")
    p.add_argument("--gallery", type=int, default=SKETCHY_ZERO_PHOTOS, help="gallery size")
    p.add_argument("--queries", type=int, default=30, help="timed queries (after 3 warm-up queries)")
    p.add_argument("--k", type=int, default=20, help="results per query")
    p.add_argument("--concurrent", type=int, default=50, help="concurrent requests on the real server (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--spin", action="store_true", help="leave OMP_WAIT_POLICY unset (OpenMP threads spin while idle)")
    p.add_argument("--no_compile", action="store_true", help="eager queries (search_app.py --no_compile)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.model} at {args.img_size} px (random weights), gallery {args.gallery} x random unit features, "
          f"top {args.k}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    searcher = make_searcher(args.model, args.img_size, args.gallery)
    if not args.no_compile:
        start = time.perf_counter()
        why_not = searcher.compile_queries()
        print(f"query path compiled in {time.perf_counter() - start:.1f} s" if not why_not
              else f"query path eager: {why_not}")
    queries = [sketch_png(i) for i in range(args.queries)]
    latency(searcher, [sketch_png(10_000 + i) for i in range(3)], args.k)       # warm-up
    for name, seconds in latency(searcher, queries, args.k).items():
        print(f"  {name:13s} {ms(seconds)}")
    print("  (search CPU: processor time of the whole process per query, all threads together; on a busy machine "
          "the wall times above include waiting for a core)")
    if args.concurrent:
        concurrent(searcher, args.concurrent, args.k)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
