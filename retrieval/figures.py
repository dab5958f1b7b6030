"""``pr_curve`` and ``retrieval_examples`` figures of a test run, each as PNG and PDF (utils.figures).

The examples figure reads its images through a loader the caller passes in (the project's image reader), so
scoring code neither decodes images nor builds a dataset.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from data.lists import parse_list_file, read_class_file
from data.registry import SettingPaths
from retrieval.metrics import DistanceFn, QueryMetrics
from retrieval.search import RetrievalProblem, top_k
from utils.errors import UserError
from utils.figures import (CORRECT_COLOUR, CORRECT_MARK, NEUTRAL_COLOUR, WRONG_COLOUR, WRONG_MARK,
                           figure_files)

EXAMPLE_ROWS = 8
EXAMPLE_RESULTS = 10
TILE_PX = 160                   # pixels kept per tile: sharp at the PNG's 150 dpi, and a PDF of a few MB
FRAME_PT = 4.5                  # frame line width (points); the mark beside the class name says it again
CAPTION_LINES = 2
CAPTION_CHARS = 15              # characters per caption line that fit under a tile at the caption's size

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
# path -> RGB image; raises FileNotFoundError / OSError (PIL.UnidentifiedImageError is one) when unreadable
ImageLoader = Callable[[Path], Image.Image]


def pr_title(label: str, curves: Mapping[str, QueryMetrics]) -> str:
    """The PR figure's title: what was scored and what the mean is over."""
    counts = sorted({metrics.n_pr_queries for metrics in curves.values()})
    n = " / ".join(f"{c:,}" for c in counts)
    return (f"{label}\ninterpolated precision at each recall level, mean over the {n} query sketches\n"
            f"(unseen classes) that have a positive in the gallery")


def write_pr_figure(curves: Mapping[str, QueryMetrics], out_png: Path, label: str) -> None:
    """Mean-over-queries interpolated precision against recall, one line per ranking (PNG + PDF)."""
    with figure_files(out_png, 6.4, 5.0) as fig:
        ax = fig.subplots()
        for i, (name, metrics) in enumerate(curves.items()):
            recall, precision = metrics.pr_curve()
            # line styles and markers differ too, so that a curve on top of another leaves it visible
            ax.plot(recall, precision, linestyle=LINE_STYLES[i % len(LINE_STYLES)], label=name,
                    marker=MARKERS[i % len(MARKERS)] if len(recall) <= 40 else None, markersize=4 - i % 2,
                    linewidth=1.6)
        ax.set(xlim=(-0.02, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(pr_title(label, curves), fontsize=8.5)
        if curves:
            ax.legend(loc="upper right")
        fig.tight_layout()


def example_queries(query_labels: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
    """A fixed seeded choice of queries, one per class for as many classes as there are rows."""
    rng = np.random.default_rng(seed)
    classes = np.unique(query_labels)
    chosen = rng.choice(classes, size=min(n_rows, len(classes)), replace=False)
    return np.array([rng.choice(np.flatnonzero(query_labels == c)) for c in np.sort(chosen)])


def example_rows(problem: RetrievalProblem, paths: SettingPaths, seed: int,
                 rankings: Sequence[tuple[str, DistanceFn]], n_rows: int = EXAMPLE_ROWS
                 ) -> tuple[Optional[list[dict]], str]:
    """Rows for ``draw_examples``, or None and why they cannot be drawn.

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
    tops = [top_k(distance_fn(queries), EXAMPLE_RESULTS).cpu().numpy() for _, distance_fn in rankings]
    rows = []
    for i, q in enumerate(queries):
        qlabel = int(features.query_labels[q])
        for (label, _), top_of in zip(rankings, tops):
            top = top_of[i]
            row = {"query_path": paths.root / sketch_paths[q], "query_class": names[qlabel],
                   "results": [(paths.root / photo_paths[j], names[int(photo_labels[j])],
                                bool(photo_labels[j] == qlabel)) for j in top]}
            if len(rankings) > 1:
                row["label"] = label
            rows.append(row)
    return rows, ""


@dataclass(frozen=True)
class ExamplesLayout:
    """Geometry of the examples figure in inches (origin bottom left, as matplotlib's); shared by the drawing
    code and the tests that read the picture back."""

    n_rows: int
    n_results: int
    labelled: bool          # a band above each row names its ranking
    tile: float = 0.9
    gap: float = 0.12       # between tiles (frames of neighbours stay apart)
    query_gap: float = 0.2  # extra space between the query and its results
    caption: float = 0.32   # class name (and mark) under each tile: never on the picture
    header: float = 0.26    # column headings
    band: float = 0.22

    @property
    def row_height(self) -> float:
        return (self.band if self.labelled else 0.0) + self.tile + self.caption + self.gap

    @property
    def size(self) -> tuple[float, float]:
        right = self.tile_box(0, self.n_results)[0] + self.tile + self.gap
        return right, self.header + self.n_rows * self.row_height + self.gap

    def tile_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(left, bottom, width, height) of tile ``col`` of ``row``: col 0 is the query, 1.. the ranked results."""
        left = self.gap + col * (self.tile + self.gap) + (self.query_gap if col > 0 else 0.0)
        top = self.header + row * self.row_height + (self.band if self.labelled else 0.0)
        height = self.header + self.n_rows * self.row_height + self.gap
        return left, height - top - self.tile, self.tile, self.tile

    def pixel_box(self, row: int, col: int, dpi: float) -> tuple[float, float, float, float]:
        """The tile's (x0, y0, x1, y1) in the PNG's pixels (origin top left)."""
        left, bottom, w, h = self.tile_box(row, col)
        height = self.size[1]
        return left * dpi, (height - bottom - h) * dpi, (left + w) * dpi, (height - bottom) * dpi


def tile_pixels(load_image: ImageLoader, path: Path, size: int = TILE_PX) -> Optional[np.ndarray]:
    """The image squeezed to ``size`` x ``size`` RGB, or None when it cannot be read (the figure is still made)."""
    try:
        return np.asarray(load_image(Path(path)).convert("RGB").resize((size, size), Image.BILINEAR))
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        return None


def _caption(name: str) -> str:
    return "\n".join(textwrap.wrap(str(name), CAPTION_CHARS, max_lines=CAPTION_LINES, placeholder="\u2026")
                     or [""])


def draw_examples(rows: Sequence[dict], load_image: ImageLoader, out_png: Path) -> ExamplesLayout:
    """One row per query and ranking: the sketch, then its ranked results with thick frames, green with a
    check mark (right class) or red with a cross (wrong class), class names under the tiles. A row with a
    ``"label"`` gets it in a band above. Writes PNG + PDF; returns the layout drawn."""
    if not rows:
        raise UserError("draw_examples: no queries to draw")
    layout = ExamplesLayout(len(rows), max(len(r["results"]) for r in rows), any(r.get("label") for r in rows))
    width, height = layout.size
    with figure_files(out_png, width, height) as fig:
        def frac(x: float, y: float) -> tuple[float, float]:
            return x / width, y / height

        for col, heading in enumerate(["query"] + [str(i) for i in range(1, layout.n_results + 1)]):
            left = layout.tile_box(0, col)[0]
            fig.text(*frac(left + layout.tile / 2, height - layout.header / 2), heading, ha="center",
                     va="center", fontsize=9, fontweight="bold" if col == 0 else "normal")
        for r, row in enumerate(rows):
            if row.get("label"):
                left, bottom, _, _ = layout.tile_box(r, 0)
                fig.text(*frac(left, bottom + layout.tile + layout.band * 0.45), row["label"], ha="left",
                         va="center", fontsize=8.5, fontstyle="italic")
            cells = [(row["query_path"], row["query_class"], None)] + list(row["results"])
            for col, (path, name, correct) in enumerate(cells):
                left, bottom, w, h = layout.tile_box(r, col)
                ax = fig.add_axes((*frac(left, bottom), w / width, h / height))
                pixels = tile_pixels(load_image, path)
                if pixels is None:
                    ax.set_facecolor("0.8")
                    ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                else:
                    ax.imshow(pixels, extent=(0, 1, 0, 1), aspect="auto", interpolation="antialiased")
                ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[], yticks=[])
                ax.grid(False)
                colour = NEUTRAL_COLOUR if correct is None else CORRECT_COLOUR if correct else WRONG_COLOUR
                for spine in ax.spines.values():
                    spine.set(color=colour, linewidth=FRAME_PT)
                caption_y = bottom - 0.05
                if correct is None:
                    fig.text(*frac(left + w / 2, caption_y), _caption(name), ha="center", va="top", fontsize=7)
                else:
                    fig.text(*frac(left, caption_y + 0.01), CORRECT_MARK if correct else WRONG_MARK, ha="left",
                             va="top", fontsize=10, fontweight="bold", color=colour)
                    fig.text(*frac(left + 0.14, caption_y), _caption(name), ha="left", va="top", fontsize=7)
    return layout


def write_examples_figure(problem: RetrievalProblem, paths: SettingPaths, out_png: Path, seed: int,
                          rankings: Sequence[tuple[str, DistanceFn]], load_image: ImageLoader,
                          n_rows: int = EXAMPLE_ROWS) -> str:
    """Draw the examples (PNG + PDF); returns an empty string, or why they were not drawn."""
    rows, why_not = example_rows(problem, paths, seed, rankings, n_rows)
    if rows is None:
        return why_not
    draw_examples(rows, load_image, out_png)
    return ""
