"""Batch search: every query sketch under a folder ranked against a gallery; results kept as files.

    python search_app.py --resume_dir RUN --queries DIR --gallery zero|DIR --k 20 --out OUT

The app's gallery (and its cache), the run's student (engine.trained_run) and the one ranking recipe
(retrieval.search): one-to-one, plus one-to-many at the run's selected (M, K) when ``results.json`` has
one that fits the gallery. Writes ``OUT/results.csv`` (a row per query, ranking and rank),
``OUT/results.json`` and ``OUT/index.html``, a static page with the top-k thumbnails of every query (copied
into ``OUT/thumbs``, so the page works offline and can be moved with its folder). Queries and gallery
photos lying in class folders (``DIR/<class>/...``) are labelled by them; with both labelled, the batch's
mAP@all and P@k are printed and recorded (the test scripts' metric code).
"""
from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from app.gallery import Gallery
from app.images import class_folder_labels, find_photos, read_photo
from app.searcher import app_gallery, one_to_many_offer
from data.images import read_rgb
from engine.trained_run import WHITE, TrainedRun
from retrieval.distances import squared_norms
from retrieval.metrics import class_mean, evaluate_ranking, nan_mean
from retrieval.search import DEFAULT_CHUNK, MatchingCodes, rank_blocks, ranking_values
from utils.checkpoint import atomic_write
from utils.run_files import BATCH_CSV_FILE, BATCH_JSON_FILE, BATCH_PAGE_FILE
from utils.errors import UserError

THUMB_SIDE = 128
THUMBS_DIR = "thumbs"
ONE_TO_ONE = "one-to-one"


@dataclass
class Ranking:
    name: str                                   # "one-to-one" or "one-to-many M=.. K=.."
    codes: Optional[MatchingCodes]
    order: np.ndarray                           # Nq x k gallery indices
    distances: np.ndarray                       # Nq x k
    metrics: Optional[dict[str, Any]] = None


def find_queries(folder: Path) -> tuple[list[str], Optional[list[str]]]:
    """The query images under ``folder`` (relative paths) and their class names when they lie in class folders."""
    if not folder.is_dir():
        raise UserError(f"--queries {folder} is not a folder")
    rel_paths = find_photos(folder)
    if not rel_paths:
        raise UserError(f"--queries {folder} holds no JPEG, PNG or WebP sketches (searched recursively)")
    labelled = class_folder_labels(rel_paths)
    return rel_paths, None if labelled is None else [labelled[1][i] for i in labelled[0]]


def evaluate_batch(q: torch.Tensor, g: torch.Tensor, gsq: torch.Tensor, query_classes: list[str], gallery: Gallery,
                   ranking: Ranking, k: int, chunk: int) -> dict[str, Any]:
    """mAP@all (the test scripts' metric code, on this ranking) and P@k of the batch; a query whose class has
    no gallery photo has no AP (left out of the mean) and precision 0, as in the test scripts."""
    index = {name: i for i, name in enumerate(gallery.class_names)}
    query_labels = np.array([index.get(name, -1) for name in query_classes], dtype=np.int64)
    metrics = evaluate_ranking(lambda idx: ranking_values(q[torch.from_numpy(idx).to(q.device)], g, gsq, ranking.codes),
                               query_labels, gallery.labels, chunk, q.device)
    hits = gallery.labels[ranking.order] == query_labels[:, None]
    precision = hits.sum(axis=1) / ranking.order.shape[1]
    ap = metrics.values["mAP@all"]
    return {"mAP@all": {"per_class": class_mean(ap, query_labels), "per_query": nan_mean(ap)},
            f"P@{k}": {"per_class": class_mean(precision, query_labels), "per_query": float(precision.mean())},
            "queries_without_gallery_class": int((query_labels < 0).sum())}


def thumbnail(img: Image.Image, path: Path) -> None:
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path, format="JPEG", quality=85)


def write_thumbnails(out: Path, queries_dir: Path, query_paths: list[str], gallery: Gallery,
                     shown: np.ndarray) -> tuple[dict[int, str], dict[int, str]]:
    """Thumbnails of the queries and of every gallery photo shown: index -> path relative to ``out``
    (a photo that cannot be read any more gets none)."""
    query_thumbs, photo_thumbs = {}, {}
    for i, rel in enumerate(query_paths):
        name = f"{THUMBS_DIR}/query_{i:05d}.jpg"
        try:
            thumbnail(read_rgb(queries_dir / rel, WHITE), out / name)
            query_thumbs[i] = name
        except (OSError, ValueError, SyntaxError):
            pass
    for j in np.unique(shown):
        name = f"{THUMBS_DIR}/photo_{int(j):06d}.jpg"
        try:
            thumbnail(read_photo(gallery.root, gallery.paths[int(j)]), out / name)
            photo_thumbs[int(j)] = name
        except (UserError, OSError, ValueError, SyntaxError):
            pass
    return query_thumbs, photo_thumbs


def result_rows(queries_dir: Path, query_paths: list[str], query_classes: Optional[list[str]], gallery: Gallery,
                rankings: list[Ranking]) -> list[dict[str, Any]]:
    """One entry per query: its path, label and, per ranking, the ranked photos."""
    entries = []
    for i, rel in enumerate(query_paths):
        label = query_classes[i] if query_classes is not None else None
        results = {}
        for ranking in rankings:
            shown = []
            for r, (j, d) in enumerate(zip(ranking.order[i], ranking.distances[i])):
                photo_label = gallery.label_of(int(j))
                shown.append({"rank": r + 1, "index": int(j), "photo": str(gallery.root / gallery.paths[int(j)]),
                              "distance": float(d), "label": photo_label,
                              "correct": None if label is None or photo_label is None else photo_label == label})
            results[ranking.name] = shown
        entries.append({"query": str(queries_dir / rel), "label": label, "results": results})
    return entries


def write_csv(path: Path, entries: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["query", "query_label", "ranking", "rank", "photo", "photo_label", "distance", "correct"])
    for entry in entries:
        for ranking, shown in entry["results"].items():
            for r in shown:
                writer.writerow([entry["query"], entry["label"] or "", ranking, r["rank"], r["photo"], r["label"] or "",
                                 f"{r['distance']:.6f}", "" if r["correct"] is None else int(r["correct"])])
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode("utf-8")))


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td { vertical-align: top; padding: 6px; border-top: 1px solid #ddd; }
figure { display: inline-block; margin: 0 4px 4px 0; text-align: center; font-size: 11px; }
figure img { display: block; width: 96px; height: 96px; object-fit: contain; border: 3px solid #ccc; background: #fff; }
figure.hit img { border-color: #2a2; }
figure.miss img { border-color: #d22; }
.query img { border-color: #333; }
.ranking { font-size: 12px; color: #555; margin: 2px 0; }
.metrics { margin: 0.5em 0 1em; }
"""


def figure(thumb: Optional[str], caption: str, title: str, css: str = "") -> str:
    image = (f'<img src="{html.escape(thumb)}" alt="{html.escape(title)}" loading="lazy">' if thumb
             else f'<div class="missing">{html.escape(title)}</div>')
    return (f'<figure class="{css}" title="{html.escape(title)}">{image}'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def write_html(path: Path, summary: dict[str, Any], entries: list[dict[str, Any]], query_thumbs: dict[int, str],
               photo_thumbs: dict[int, str]) -> None:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Batch search: {html.escape(summary['run'])}</title><style>{PAGE_STYLE}</style></head><body>",
             f"<h1>Batch search</h1><p>Run <code>{html.escape(summary['run'])}</code>, gallery: "
             f"{html.escape(summary['gallery']['source'])}; top {summary['k']} per query.</p>"]
    for name, metrics in (summary.get("metrics") or {}).items():
        shown = ", ".join(f"{m} {v['per_class']:.4f} (per query {v['per_query']:.4f})"
                          for m, v in metrics.items() if isinstance(v, dict))
        parts.append(f'<p class="metrics">{html.escape(name)}: {html.escape(shown)}</p>')
    parts.append("<table>")
    for i, entry in enumerate(entries):
        label = entry["label"]
        caption = Path(entry["query"]).name + (f" ({label})" if label else "")
        row = [f'<tr class="query-row"><td class="query">{figure(query_thumbs.get(i), caption, entry["query"])}</td><td>']
        for ranking, shown in entry["results"].items():
            row.append(f'<div class="ranking">{html.escape(ranking)}</div><div class="results" '
                       f'data-ranking="{html.escape(ranking)}">')
            for r in shown:
                css = "" if r["correct"] is None else ("hit" if r["correct"] else "miss")
                title = f"{r['photo']}" + (f" ({r['label']})" if r["label"] else "") + f", distance {r['distance']:.4f}"
                row.append(figure(photo_thumbs.get(r["index"]), f"{r['rank']}. {r['distance']:.3f}", title, css))
            row.append("</div>")
        row.append("</td></tr>")
        parts.append("".join(row))
    parts.append("</table></body></html>")
    atomic_write(path, lambda fh: fh.write("\n".join(parts).encode("utf-8")))


def batch_search(run: TrainedRun, resume_dir: Path, queries_dir: Path, gallery_arg: str, data_root: Path, k: int,
                 out: Path, chunk: int = DEFAULT_CHUNK) -> dict[str, Any]:
    """Rank every query under ``queries_dir``, write the three result files into ``out``; returns the summary
    (what results.json holds besides the per-query entries)."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if chunk < 1:
        raise UserError(f"--chunk must be at least 1, got {chunk}")
    query_paths, query_classes = find_queries(queries_dir)      # before the (slow) gallery
    gallery = app_gallery(run, resume_dir, gallery_arg, data_root)
    print(f"gallery: {gallery.source}", flush=True)
    features, readable = run.embed_files(queries_dir, query_paths, "embedding query sketches", sketches=True,
                                         skip_unreadable=True)
    skipped = [p for p, ok in zip(query_paths, readable) if not ok]
    if skipped:
        print(f"note: {len(skipped)} query image(s) cannot be read and are left out, first {queries_dir / skipped[0]}")
    if not readable.any():
        raise UserError(f"none of the {len(query_paths)} images under --queries {queries_dir} could be read")
    query_paths = [p for p, ok in zip(query_paths, readable) if ok]
    if query_classes is not None:
        query_classes = [c for c, ok in zip(query_classes, readable) if ok]
    q = torch.from_numpy(features[readable]).to(run.device)
    g = torch.from_numpy(np.ascontiguousarray(gallery.features, dtype=np.float32)).to(run.device)
    gsq = squared_norms(g)

    plans: list[tuple[str, Optional[MatchingCodes]]] = [(ONE_TO_ONE, None)]
    selected, why_not = one_to_many_offer(run, resume_dir, gallery)
    if selected is not None:
        m, kk, alpha = selected
        print(f"one-to-many: fitting {kk} codewords in each of {m} subspaces of the gallery", flush=True)
        plans.append((f"one-to-many M={m} K={kk}", MatchingCodes.fit(g, m, kk, alpha)))
    else:
        print(f"one-to-many: not computed ({why_not})")
    width = min(k, len(gallery))
    rankings = []
    for name, codes in plans:
        order = np.empty((len(q), width), np.int64)
        distances = np.empty((len(q), width), np.float64)
        for rows, block_order, block_distances in rank_blocks(q, g, k, codes, gsq, chunk):
            order[rows], distances[rows] = block_order, block_distances
        rankings.append(Ranking(name, codes, order, distances))

    labelled = query_classes is not None and gallery.labelled
    if labelled:
        for ranking in rankings:
            ranking.metrics = evaluate_batch(q, g, gsq, query_classes, gallery, ranking, width, chunk)
    summary: dict[str, Any] = {
        "run": str(resume_dir), "checkpoint": str(run.checkpoint), "queries": str(queries_dir),
        "n_queries": len(query_paths), "skipped_queries": [str(queries_dir / p) for p in skipped],
        "gallery": {"kind": gallery.kind, "root": str(gallery.root), "size": len(gallery),
                    "labelled": gallery.labelled, "source": gallery.source},
        "k": width, "rankings": [r.name for r in rankings],
        "metrics": {r.name: r.metrics for r in rankings} if labelled else None,
        "metrics_note": "" if labelled else ("queries and gallery need class labels (class folders, or the zero "
                                             "gallery) for mAP and P@k"),
    }
    out.mkdir(parents=True, exist_ok=True)
    entries = result_rows(queries_dir, query_paths, query_classes, gallery, rankings)
    query_thumbs, photo_thumbs = write_thumbnails(out, queries_dir, query_paths, gallery,
                                                  np.concatenate([r.order.ravel() for r in rankings]))
    write_csv(out / BATCH_CSV_FILE, entries)
    atomic_write(out / BATCH_JSON_FILE,
                 lambda fh: fh.write(json.dumps({**summary, "results": entries}, indent=1).encode("utf-8")))
    write_html(out / BATCH_PAGE_FILE, summary, entries, query_thumbs, photo_thumbs)
    if labelled:
        for ranking in rankings:
            m = ranking.metrics
            print(f"{ranking.name}: mAP@all {m['mAP@all']['per_class']:.4f}, P@{width} "
                  f"{m[f'P@{width}']['per_class']:.4f} "
                  f"(per-class means over {len(query_paths)} queries)")
    print(f"results of {len(query_paths)} queries written to {out / BATCH_CSV_FILE}, {out / BATCH_JSON_FILE} and "
          f"{out / BATCH_PAGE_FILE}")
    return summary
