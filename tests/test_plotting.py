"""Pillow-only figures: valid PNGs of the promised size, robust to short or incomplete logs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.errors import UserError
from utils.plotting import (CORRECT_COLOUR, QUERY_COLOUR, WRONG_COLOUR, _format_number, _linear_axis,
                            _nice_step, grid_layout, line_chart, plot_pr_curves, plot_training_curves,
                            read_training_log, retrieval_grid)

TRAINING_FIGURE_SIZE = (1680, 420)


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        img.load()
        return img.size


def _record(epoch: int, warmup_epochs: int = 10, **overrides) -> dict:
    lr = 1e-4 * 0.001 ** (epoch / 20)
    warm = epoch < warmup_epochs
    record = {"epoch": epoch, "phase": "warmup" if warm else "bidirectional", "lr": lr, "teacher_lr": lr,
              "loss_ce": 2.0 / (epoch + 1), "loss_kd": 1.0 / (epoch + 1), "loss_prior": 0.05,
              "loss_reverse": None if warm else 0.5 / (epoch + 1), "loss_total": 3.0 / (epoch + 1),
              "val_top1_pct": 50.0 + 2.0 * epoch}
    record.update(overrides)
    return record


def _write_log(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_line_chart_size_and_validity(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "chart.png"                  # parent folders are created
    line_chart({"a": ([0, 1, 2], [1.0, 0.5, 0.25]), "b": ([0, 2], [0.1, None])}, out, "t", "x", "y",
               size=(500, 300))
    assert _png_size(out) == (500, 300)


def test_training_curves_full_log(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "log.jsonl", [_record(e) for e in range(20)])
    plot_training_curves(log, tmp_path / "curves.png")
    assert _png_size(tmp_path / "curves.png") == TRAINING_FIGURE_SIZE


@pytest.mark.parametrize("records", [
    [_record(0)],                                                        # one epoch
    [_record(0, val_top1_pct=None)],                                         # one epoch, no validation
    [_record(e, val_top1_pct=None) for e in range(3)],                       # never validated
    [_record(e, warmup_epochs=0) for e in range(2)],                     # no warm-up at all
    [{"epoch": 0, "loss_total": 1.0}],                                   # only one key
    [_record(0, loss_ce=float("nan"), lr=0.0), _record(1)],              # NaN loss, zero lr (log axis)
    [_record(0), _record(1), _record(1, loss_total=9.0)],                # epoch re-logged after a resume
])
def test_training_curves_edge_cases(tmp_path: Path, records: list[dict]) -> None:
    log = _write_log(tmp_path / "log.jsonl", records)
    plot_training_curves(log, tmp_path / "curves.png")
    assert _png_size(tmp_path / "curves.png") == TRAINING_FIGURE_SIZE


def test_training_log_reading(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "log.jsonl", [_record(0), _record(1), _record(1, loss_total=9.0)])
    records = read_training_log(log)
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["loss_total"] == 9.0   # last line wins
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no epochs"):
        plot_training_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")
    (tmp_path / "bad.jsonl").write_text(json.dumps(_record(0)) + "\n{oops\n")
    with pytest.raises(UserError, match="line 2"):
        plot_training_curves(tmp_path / "bad.jsonl", tmp_path / "x.png")
    with pytest.raises(UserError, match="does not exist"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")


@pytest.mark.parametrize("curves", [
    {"one-to-one": (np.linspace(0, 1, 500), np.linspace(1, 0.2, 500)),
     "one-to-many": (np.linspace(0, 1, 500), np.linspace(1, 0.3, 500))},
    {"single point": (np.array([0.5]), np.array([0.5]))},
    {"empty": (np.zeros(0), np.zeros(0))},
])
def test_pr_curves(tmp_path: Path, curves: dict) -> None:
    plot_pr_curves(curves, tmp_path / "pr.png", "precision-recall")
    assert _png_size(tmp_path / "pr.png") == (560, 460)


def test_long_chart_title_is_wrapped_not_cut(tmp_path: Path) -> None:
    """A title wider than the chart breaks into lines: no ink touches the picture's left or right edge."""
    curves = {"one-to-one": (np.linspace(0, 1, 5), np.linspace(1, 0.2, 5))}
    title = "demo (generated shapes, run with the sketchy/zeroshot1 scripts): mean interpolated precision"
    plot_pr_curves(curves, tmp_path / "long.png", title)
    plot_pr_curves(curves, tmp_path / "short.png", "short")
    with Image.open(tmp_path / "long.png") as img:
        band = np.asarray(img.convert("L"))[:60]
    assert band[:, :4].min() > 200 and band[:, -4:].min() > 200
    inked_rows = np.flatnonzero(band[:, 20:-20].min(axis=1) < 128)
    assert inked_rows.max() - inked_rows.min() > 25          # two lines of title text


def _solid(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (40, 40), colour).save(path)
    return path


def test_retrieval_grid_frames(tmp_path: Path) -> None:
    sketch = _solid(tmp_path / "q.png", (255, 255, 255))
    photo = _solid(tmp_path / "p.jpg", (0, 0, 255))
    verdicts = [[True, False, True], [False, False, True, True, False]]    # rows of different lengths
    rows = [{"query_path": sketch, "query_class": "crescent moon",
             "results": [(photo, "a class name far too long for a tile", ok) for ok in row]}
            for row in verdicts]
    rows[0]["results"][1] = (tmp_path / "missing.jpg", "star", False)      # unreadable image: placeholder
    tile = 96
    out = tmp_path / "grid.png"
    retrieval_grid(rows, out, tile=tile)
    layout = grid_layout(tile)
    assert _png_size(out) == layout.image_size(len(rows), 5)
    img = Image.open(out).convert("RGB")
    for r, row in enumerate(verdicts):
        for c, ok in enumerate([None] + row):
            x0, y0, _, _ = layout.cell(r, c)
            # the middle of the left frame edge, above the label strip
            colour = img.getpixel((x0 + layout.frame // 2, y0 + tile // 3))
            expected = QUERY_COLOUR if ok is None else CORRECT_COLOUR if ok else WRONG_COLOUR
            assert colour == expected, (r, c)
        inside = img.getpixel((layout.cell(r, 1)[0] + tile // 2, layout.cell(r, 1)[1] + tile // 3))
        assert inside != CORRECT_COLOUR and inside != WRONG_COLOUR            # the photo, not the frame


def test_retrieval_grid_labels_rows(tmp_path: Path) -> None:
    """Rows with a label (mode 2: one-to-one and one-to-many rankings) get a band above them naming it."""
    sketch = _solid(tmp_path / "q.png", (255, 255, 255))
    photo = _solid(tmp_path / "p.jpg", (0, 0, 255))
    rows = [{"query_path": sketch, "query_class": "moon", "label": label, "results": [(photo, "moon", ok)] * 3}
            for label, ok in (("one-to-one", False), ("one-to-many M=2 K=24 (chosen on seen-class validation)", True))]
    tile, out = 64, tmp_path / "grid.png"
    retrieval_grid(rows, out, tile=tile)
    layout = grid_layout(tile, labelled=True)
    assert layout.label > 0 and _png_size(out) == layout.image_size(2, 3) != grid_layout(tile).image_size(2, 3)
    img = Image.open(out).convert("RGB")
    for r, ok in enumerate((False, True)):
        x0, y0, _, _ = layout.cell(r, 1)
        assert img.getpixel((x0 + layout.frame // 2, y0 + tile // 3)) == (CORRECT_COLOUR if ok else WRONG_COLOUR)
        band = img.crop((layout.gap, y0 - layout.label, layout.cell(r, 3)[2], y0)).convert("L")
        assert np.asarray(band).min() < 100               # the label's ink is in the band above the row


def test_retrieval_grid_needs_rows(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        retrieval_grid([], tmp_path / "grid.png")


def test_axis_ticks() -> None:
    assert _nice_step(0.7) == 1 and _nice_step(0.13) == 0.2 and _nice_step(3.2, integer=True) == 5
    assert _nice_step(0.3, integer=True) == 1
    axis = _linear_axis(np.array([0.03, 0.87]), None, integer=False, pad=True)
    assert axis.lo <= 0.03 and axis.hi >= 0.87 and len(axis.ticks) >= 3
    assert all(axis.lo - 1e-9 <= t <= axis.hi + 1e-9 for t in axis.ticks)
    assert _format_number(0.25, 0.05) == "0.25" and _format_number(1e-4, 1e-5) == "1e-4"
    single = _linear_axis(np.array([3.0]), None, integer=True, pad=False)   # a 1-epoch log
    assert single.lo < 3 < single.hi and 3.0 in single.ticks
    assert not any(math.isnan(t) for t in single.ticks)
