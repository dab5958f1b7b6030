"""Figures drawn with Pillow only (no matplotlib): line charts, training curves, PR curves, retrieval grids."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from data.images import read_rgb
from utils.errors import UserError

# Colour-blind-friendly palette (Tableau 10), cycled over the series of one chart.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
CORRECT_COLOUR = (30, 170, 60)
WRONG_COLOUR = (220, 40, 40)
QUERY_COLOUR = (60, 60, 60)
TEXT_COLOUR = (20, 20, 20)
GRID_COLOUR = (228, 228, 228)
MARKER_MAX_POINTS = 40          # below this many points, each point also gets a dot (a 1-epoch log shows one)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


@lru_cache(maxsize=None)
def _font(size: int) -> Font:
    """Pillow's bundled scalable font (Pillow >= 10.1 with FreeType), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):      # older Pillow, or built without FreeType
        return ImageFont.load_default()


def _spaced(text: str) -> str:
    """Pillow's bundled font has a space only 1/5 em wide, which reads as no gap at small sizes: double it."""
    return text.replace(" ", "  ")


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), _spaced(text), font=font)
    return right - left, bottom - top


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``max_width`` (a single long word stays whole)."""
    lines: list[str] = []
    for word in (text or "").split(" "):
        if lines and _text_size(draw, f"{lines[-1]} {word}", font)[0] <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Font,
          anchor: str = "mm", fill: tuple[int, ...] = TEXT_COLOUR) -> None:
    """Draw text aligned by ``anchor`` (h in l/m/r, v in t/m/b) on its ink box.

    Done by hand instead of Pillow's ``anchor=`` because the bitmap fallback font does not support it.
    """
    text = _spaced(text)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = {"l": xy[0], "m": xy[0] - (right - left) / 2, "r": xy[0] - (right - left)}[anchor[0]] - left
    y = {"t": xy[1], "m": xy[1] - (bottom - top) / 2, "b": xy[1] - (bottom - top)}[anchor[1]] - top
    draw.text((x, y), text, font=font, fill=fill)


def _vertical_text(img: Image.Image, centre: tuple[float, float], text: str, font: Font) -> None:
    """Text rotated 90 degrees counter-clockwise (the y-axis label), centred on ``centre``."""
    probe = ImageDraw.Draw(img)
    w, h = _text_size(probe, text, font)
    label = Image.new("L", (w + 4, h + 4), 0)
    _text(ImageDraw.Draw(label), ((w + 4) / 2, (h + 4) / 2), text, font, fill=255)
    label = label.rotate(90, expand=True)
    img.paste(TEXT_COLOUR, (int(centre[0] - label.width / 2), int(centre[1] - label.height / 2)), label)


def _dashed_line(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], fill: tuple[int, ...],
                 width: int, dash: float = 7.0, gap: float = 5.0) -> None:
    """A dashed polyline (ImageDraw has no dash style)."""
    drawing, left = True, dash
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        seg = math.hypot(x1 - x0, y1 - y0)
        pos = 0.0
        while pos < seg:
            step = min(left, seg - pos)
            if drawing:
                t0, t1 = pos / seg, (pos + step) / seg
                draw.line([(x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0), (x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1)],
                          fill=fill, width=width)
            pos += step
            left -= step
            if left <= 1e-9:
                drawing = not drawing
                left = dash if drawing else gap


# ---------------------------------------------------------------------------------------------- axes maths
def _nice_step(raw: float, integer: bool = False) -> float:
    """The smallest step of the form {1, 2, 2.5, 5} x 10^k that is >= ``raw``."""
    raw = max(raw, 1e-300)
    magnitude = 10 ** math.floor(math.log10(raw))
    for mantissa in (1, 2, 2.5, 5, 10):
        step = mantissa * magnitude
        if step >= raw * (1 - 1e-9) and not (integer and step != int(step)):
            return max(step, 1.0) if integer else step
    return 10 * magnitude


def _format_number(value: float, step: float) -> str:
    """A tick label with just enough decimals for ``step``; scientific for very small or large values."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or step < 1e-3:
        mantissa, exponent = f"{value:.1e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if step * 10 ** decimals % 1 > 1e-6:          # e.g. step 0.25 needs one more decimal than 0.2
        decimals += 1
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class _Axis:
    """A linear or log10 axis: range, ticks and their labels."""

    lo: float
    hi: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]
    log: bool = False

    def fraction(self, value: float) -> float:
        if self.log:
            value, lo, hi = math.log10(value), math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        return (value - lo) / (hi - lo)


def _linear_axis(values: np.ndarray, fixed: tuple[float, float] | None, integer: bool, pad: bool,
                 max_ticks: int = 7) -> _Axis:
    if fixed is not None:
        lo, hi = fixed
    elif values.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):        # one value (e.g. a 1-epoch log): open a window around it
        half = 0.5 if integer else (1.0 if lo == 0 else abs(lo) * 0.1)
        lo, hi = lo - half, hi + half
    step = _nice_step((hi - lo) / (max_ticks - 1), integer)
    if fixed is None and pad:                       # y axes end on a tick ...
        lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    elif fixed is None:                             # ... x axes get a small margin so end points clear the axes
        lo, hi = lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = tuple(float(t) for t in np.arange(first, hi + step * 1e-6, step))
    return _Axis(lo, hi, ticks, tuple(_format_number(t, step) for t in ticks))


def _log_axis(values: np.ndarray) -> _Axis:
    positive = values[values > 0]
    if positive.size == 0:
        return _linear_axis(values, None, integer=False, pad=True)
    lo_exp, hi_exp = math.log10(float(positive.min())), math.log10(float(positive.max()))
    if hi_exp - lo_exp < 1e-9:
        lo_exp, hi_exp = lo_exp - 0.5, hi_exp + 0.5
    lo_exp, hi_exp = lo_exp - 0.03 * (hi_exp - lo_exp), hi_exp + 0.03 * (hi_exp - lo_exp)
    decades = range(math.floor(lo_exp), math.ceil(hi_exp) + 1)
    mantissas = (1,) if hi_exp - lo_exp >= 2 else (1, 2, 5)
    ticks = tuple(m * 10.0 ** k for k in decades for m in mantissas if lo_exp <= math.log10(m * 10.0 ** k) <= hi_exp)
    labels = tuple(_format_number(t, t / 100) for t in ticks)
    return _Axis(10 ** lo_exp, 10 ** hi_exp, ticks, labels, log=True)


def _finite_points(xs: Iterable, ys: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Drop points whose x or y is missing (None), NaN or infinite."""
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    arr = np.asarray(pairs, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


# ---------------------------------------------------------------------------------------------- charts
@dataclass(frozen=True)
class VerticalMarker:
    """A dashed vertical line with a label, e.g. where warm-up ends."""

    x: float
    label: str


def _draw_chart(img: Image.Image, box: tuple[int, int, int, int], series: Series, title: str, xlabel: str,
                ylabel: str, *, xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
                log_y: bool = False, integer_x: bool = False, dashed: Iterable[str] = (),
                markers: Sequence[VerticalMarker] = (), x_extent: Sequence[float] = (),
                empty_message: str = "no data") -> None:
    """Draw one chart (title, axes, ticks, grid, labels, legend) inside ``box`` of ``img``.

    ``x_extent``: x values the axis must span even where no series has a y value (all epochs of a log).
    """
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    width = x1 - x0
    f_title, f_label, f_tick = _font(max(12, width // 36)), _font(max(11, width // 44)), _font(max(10, width // 52))
    points = {name: _finite_points(*xy) for name, xy in series.items()}
    all_x = np.concatenate([p[0] for p in points.values()] + [np.zeros(0)])
    all_y = np.concatenate([p[1] for p in points.values()] + [np.zeros(0)])
    if log_y:
        keep = all_y > 0
        all_x, all_y = all_x[keep], all_y[keep]
    x_axis = _linear_axis(np.concatenate([all_x, np.asarray(x_extent, dtype=np.float64)]), xlim, integer_x, pad=False)
    y_axis = _log_axis(all_y) if log_y and ylim is None else _linear_axis(all_y, ylim, False, pad=True)

    title_lines = _wrap(draw, title, f_title, width - 16)
    line_h = _text_size(draw, "Ag", f_title)[1]
    for i, line in enumerate(title_lines):
        _text(draw, ((x0 + x1) / 2, y0 + 8 + i * (line_h + 4)), line, f_title, anchor="mt")
    title_h = len(title_lines) * (line_h + 4) - 4 + 18
    tick_w = max((_text_size(draw, s, f_tick)[0] for s in y_axis.labels), default=0)
    tick_h = _text_size(draw, "0123456789", f_tick)[1]
    label_h = _text_size(draw, "Ag", f_label)[1]
    left = x0 + 10 + label_h + 8 + tick_w + 8
    right = x1 - 16
    top = y0 + title_h
    bottom = y1 - (10 + label_h + 8 + tick_h + 8)
    if right - left < 20 or bottom - top < 20:
        raise ValueError(f"chart box {box} is too small to draw in")

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + x_axis.fraction(x) * (right - left), bottom - y_axis.fraction(y) * (bottom - top))

    for t, s in zip(y_axis.ticks, y_axis.labels):
        py = to_px(x_axis.lo, t)[1]
        draw.line([(left, py), (right, py)], fill=GRID_COLOUR)
        draw.line([(left - 5, py), (left, py)], fill=TEXT_COLOUR)
        _text(draw, (left - 8, py), s, f_tick, anchor="rm")
    for t, s in zip(x_axis.ticks, x_axis.labels):
        px = to_px(t, y_axis.lo)[0]
        draw.line([(px, top), (px, bottom)], fill=GRID_COLOUR)
        draw.line([(px, bottom), (px, bottom + 5)], fill=TEXT_COLOUR)
        _text(draw, (px, bottom + 8), s, f_tick, anchor="mt")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=TEXT_COLOUR, width=1)
    _text(draw, ((left + right) / 2, y1 - 10), xlabel, f_label, anchor="mb")
    _vertical_text(img, (x0 + 10 + label_h / 2, (top + bottom) / 2), ylabel, f_label)

    for marker in markers:
        if x_axis.lo <= marker.x <= x_axis.hi:
            px = to_px(marker.x, y_axis.lo)[0]
            _dashed_line(draw, [(px, top), (px, bottom)], fill=(110, 110, 110), width=1, dash=5, gap=4)
            _text(draw, (px + 4, top + 4), marker.label, f_tick, anchor="lt", fill=(90, 90, 90))

    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    dashed = set(dashed)
    drawn_px: list[tuple[float, float]] = []
    for name, (xs, ys) in points.items():
        if log_y:
            xs, ys = xs[ys > 0], ys[ys > 0]
        pts = [to_px(x, y) for x, y in zip(xs, ys)]
        drawn_px.extend(_densified(pts))
        if len(pts) > 1:
            if name in dashed:
                _dashed_line(draw, pts, colours[name], width=2)
            else:
                draw.line(pts, fill=colours[name], width=2, joint="curve")
        if len(pts) <= MARKER_MAX_POINTS:
            for px, py in pts:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colours[name])
    if not drawn_px:
        _text(draw, ((left + right) / 2, (top + bottom) / 2), empty_message, f_label, fill=(120, 120, 120))
    shown = {name: colours[name] for name, (xs, _) in points.items() if xs.size}   # empty series: no entry
    if shown:
        _draw_legend(draw, (left, top, right, bottom), shown, dashed, drawn_px, f_tick)


def _densified(pts: Sequence[tuple[float, float]], spacing: float = 4.0) -> list[tuple[float, float]]:
    """Points every few pixels along a polyline, so a legend box can tell whether it would hide a line."""
    out = list(pts[:1])
    for (xa, ya), (xb, yb) in zip(pts[:-1], pts[1:]):
        n = max(1, int(math.hypot(xb - xa, yb - ya) / spacing))
        out.extend((xa + (xb - xa) * k / n, ya + (yb - ya) * k / n) for k in range(1, n + 1))
    return out


def _draw_legend(draw: ImageDraw.ImageDraw, plot: tuple[float, float, float, float],
                 colours: Mapping[str, tuple[int, int, int]], dashed: set[str],
                 drawn_px: Sequence[tuple[float, float]], font: Font) -> None:
    """A boxed legend in the plot corner that covers the fewest drawn points."""
    left, top, right, bottom = plot
    row_h = _text_size(draw, "Ag", font)[1] + 8
    sample_w = 24
    width = sample_w + 16 + max(_text_size(draw, name, font)[0] for name in colours)
    height = row_h * len(colours) + 8
    corners = [(right - 8 - width, top + 8), (left + 8, top + 8),
               (right - 8 - width, bottom - 8 - height), (left + 8, bottom - 8 - height)]
    pts = np.asarray(drawn_px).reshape(-1, 2)

    def covered(corner: tuple[float, float]) -> int:
        cx, cy = corner
        inside = (pts[:, 0] >= cx) & (pts[:, 0] <= cx + width) & (pts[:, 1] >= cy) & (pts[:, 1] <= cy + height)
        return int(inside.sum())

    lx, ly = min(corners, key=covered)              # min() keeps the first (top-right) on ties
    draw.rectangle([lx, ly, lx + width, ly + height], fill=(255, 255, 255), outline=(190, 190, 190))
    for i, (name, colour) in enumerate(colours.items()):
        cy = ly + 4 + row_h * i + row_h / 2
        sample = [(lx + 6, cy), (lx + 6 + sample_w, cy)]
        if name in dashed:
            _dashed_line(draw, sample, colour, width=2, dash=5, gap=3)
        else:
            draw.line(sample, fill=colour, width=2)
        _text(draw, (lx + 6 + sample_w + 8, cy), name, font, anchor="lm")


def _save(img: Image.Image, out_png: str | Path) -> None:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")


def line_chart(series: Series, out_png: str | Path, title: str, xlabel: str, ylabel: str,
               size: tuple[int, int] = (640, 420), *, xlim: tuple[float, float] | None = None,
               ylim: tuple[float, float] | None = None, log_y: bool = False) -> None:
    """One line chart with a legend; ``series`` maps a name to (x values, y values); None/NaN are skipped."""
    img = Image.new("RGB", size, "white")
    _draw_chart(img, (0, 0, *size), series, title, xlabel, ylabel, xlim=xlim, ylim=ylim, log_y=log_y)
    _save(img, out_png)


# ---------------------------------------------------------------------------------------------- training
_LOSS_ORDER = ("loss_total", "loss_ce", "loss_kd", "loss_prior", "loss_reverse")


def read_training_log(log_path: str | Path) -> list[dict]:
    """Read a JSON-lines log (one object per epoch); a re-logged epoch (after --resume) keeps its last line."""
    log_path = Path(log_path)
    try:
        text = log_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"training log {log_path} does not exist") from None
    by_epoch: dict[float, dict] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{log_path}, line {lineno}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{log_path}, line {lineno}: expected a JSON object, got {type(record).__name__}")
        by_epoch[record.get("epoch", len(by_epoch))] = record
    if not by_epoch:
        raise UserError(f"training log {log_path} has no epochs yet")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _warmup_end(records: Sequence[dict]) -> VerticalMarker | None:
    """Halfway between the last warm-up epoch and the next epoch, if the log reaches past warm-up."""
    warm = [r["epoch"] for r in records if r.get("phase") == "warmup"]
    later = [r["epoch"] for r in records if r.get("phase") not in (None, "warmup") and warm and r["epoch"] > max(warm)]
    if not later:
        return None
    return VerticalMarker((max(warm) + min(later)) / 2, "warm-up ends")


def plot_training_curves(log_path: str | Path, out_png: str | Path) -> None:
    """Three panels side by side: loss terms, validation top-1 and learning rates per epoch."""
    records = read_training_log(log_path)
    for i, r in enumerate(records):
        r.setdefault("epoch", i)
    epochs = [r["epoch"] for r in records]
    present = {k for r in records for k in r}
    loss_keys = [k for k in _LOSS_ORDER if k in present] + sorted(
        k for k in present if k.startswith("loss_") and k not in _LOSS_ORDER)
    losses = {k.removeprefix("loss_"): (epochs, [r.get(k) for r in records]) for k in loss_keys}
    # logs written before the key carried its unit say "val_top1" (also in %)
    val = {"val top-1 (%)": (epochs, [r.get("val_top1_pct", r.get("val_top1")) for r in records])}
    lrs = {name: (epochs, [r.get(key) for r in records])
           for key, name in (("lr", "student lr"), ("teacher_lr", "teacher lr")) if key in present}
    marker = _warmup_end(records)
    markers = [marker] if marker else []

    panel_w, panel_h = 560, 420
    img = Image.new("RGB", (3 * panel_w, panel_h), "white")
    common = dict(integer_x=True, markers=markers, x_extent=epochs)
    _draw_chart(img, (0, 0, panel_w, panel_h), losses, "(a) loss terms", "epoch", "loss", **common)
    _draw_chart(img, (panel_w, 0, 2 * panel_w, panel_h), val, "(b) validation top-1 (seen classes)",
                "epoch", "top-1 (%)", empty_message="no validation values", **common)
    _draw_chart(img, (2 * panel_w, 0, 3 * panel_w, panel_h), lrs, "(c) learning rate (log scale)", "epoch",
                "learning rate", log_y=True, dashed={"teacher lr"}, **common)
    _save(img, out_png)


# ---------------------------------------------------------------------------------------------- retrieval
def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], out_png: str | Path, title: str) -> None:
    """Precision-recall curves (e.g. one-to-one vs one-to-many) on fixed 0..1 axes."""
    series = {name: (np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64))
              for name, (recall, precision) in curves.items()}
    line_chart(series, out_png, title, "recall", "precision", size=(560, 460), xlim=(0.0, 1.0), ylim=(0.0, 1.0))


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a retrieval grid; shared by the drawing code and the tests that read it back."""

    tile: int
    header: int
    gap: int            # between tiles
    query_gap: int      # extra space between the query and its results
    label: int = 0      # height of the band above each row that names its ranking (0: no band)

    @property
    def frame(self) -> int:
        return max(3, self.tile // 24)

    def cell(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Box of tile ``col`` in ``row``: col 0 is the query, 1.. the ranked results."""
        x = self.gap + col * (self.tile + self.gap) + (self.query_gap if col > 0 else 0)
        y = self.header + row * (self.tile + self.gap + self.label) + self.label
        return x, y, x + self.tile, y + self.tile

    def image_size(self, n_rows: int, n_results: int) -> tuple[int, int]:
        right = self.cell(0, n_results)[2] + self.gap
        return right, self.header + n_rows * (self.tile + self.gap + self.label)


def grid_layout(tile: int = 96, labelled: bool = False) -> GridLayout:
    return GridLayout(tile=tile, header=max(18, tile // 4), gap=max(3, tile // 24), query_gap=max(8, tile // 6),
                      label=max(16, tile // 5) if labelled else 0)


def _fitted_label(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``max_width`` pixels."""
    if _text_size(draw, text, font)[0] <= max_width:
        return text
    while text and _text_size(draw, text + "…", font)[0] > max_width:
        text = text[:-1]
    return text + "…"


def _tile(path: Path, size: int) -> Image.Image:
    """The image squeezed to ``size``; a grey placeholder if it cannot be read (the figure still gets made)."""
    try:
        return read_rgb(path).resize((size, size), Image.BILINEAR)
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        placeholder = Image.new("RGB", (size, size), (200, 200, 200))
        _text(ImageDraw.Draw(placeholder), (size / 2, size / 2), "missing", _font(max(9, size // 8)))
        return placeholder


def retrieval_grid(rows: Sequence[dict], out_png: str | Path, tile: int = 96) -> None:
    """One row per query: the sketch, then its ranked results framed green (correct) or red (wrong).

    A row with a ``"label"`` (e.g. the ranking that produced it) gets that text in a band above it.
    """
    if not rows:
        raise UserError("retrieval_grid: no queries to draw")
    layout = grid_layout(tile, labelled=any(r.get("label") for r in rows))
    n_results = max(len(r["results"]) for r in rows)
    img = Image.new("RGB", layout.image_size(len(rows), n_results), "white")
    draw = ImageDraw.Draw(img, "RGBA")
    f_head, f_name = _font(max(10, tile // 7)), _font(max(9, tile // 9))
    for col, heading in enumerate(["query"] + [str(i) for i in range(1, n_results + 1)]):
        cx = (layout.cell(0, col)[0] + layout.cell(0, col)[2]) / 2
        _text(draw, (cx, layout.header / 2), heading, f_head)
    for r, row in enumerate(rows):
        if row.get("label"):
            y0 = layout.cell(r, 0)[1]
            _text(draw, (layout.gap, y0 - layout.label / 2), row["label"], f_head, anchor="lm")
        cells = [(row["query_path"], row["query_class"], QUERY_COLOUR)]
        cells += [(path, name, CORRECT_COLOUR if correct else WRONG_COLOUR) for path, name, correct in row["results"]]
        for col, (path, name, colour) in enumerate(cells):
            x0, y0, x1, y1 = layout.cell(r, col)
            inner = tile - 2 * layout.frame
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
            img.paste(_tile(Path(path), inner), (x0 + layout.frame, y0 + layout.frame))
            label = _fitted_label(draw, str(name), f_name, inner - 4)
            strip_h = _text_size(draw, "Ag", f_name)[1] + 6
            strip_top = y1 - layout.frame - strip_h
            draw.rectangle([x0 + layout.frame, strip_top, x1 - layout.frame - 1, y1 - layout.frame - 1],
                           fill=(0, 0, 0, 150))    # translucent strip keeps the label readable on any image
            _text(draw, ((x0 + x1) / 2, strip_top + strip_h / 2), label, f_name, fill=(255, 255, 255))
    _save(img, out_png)
