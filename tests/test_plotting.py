"""The figures (matplotlib): PNG and vector PDF side by side, what each shows, robust to short or odd logs."""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from data.images import read_rgb
from engine.training_curves import plot_training_curves, read_training_log, total_formula
from losses import LOSS_TERM_LABELS, SBKAObjective
from retrieval.figures import draw_examples, write_pr_figure
from retrieval.metrics import PR_RECALL_LEVELS, QueryMetrics
from utils.errors import UserError
from utils.figures import CORRECT_COLOUR, CORRECT_MARK, DPI, NEUTRAL_COLOUR, WRONG_COLOUR, WRONG_MARK, pdf_path

WEIGHTS = SBKAObjective().term_weights()


def _rgb255(colour: str) -> np.ndarray:
    return np.round(np.array(to_rgb(colour)) * 255)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB")).astype(int)


def _pdf_text(path: Path) -> tuple[str, bytes]:
    """The text drawn in a matplotlib PDF (Type 42 fonts: UTF-16BE strings in TJ arrays), and the raw file."""
    raw = path.read_bytes()
    assert raw.startswith(b"%PDF-")
    text = []
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", raw, re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            continue
        for array in re.findall(rb"\[(.*?)\] TJ", content, re.S):
            chunks = re.findall(rb"\(((?:\\.|[^\\)])*)\)", array, re.S)
            joined = b"".join(re.sub(rb"\\(\d{1,3}|.)", lambda m: bytes([int(m[1], 8)]) if m[1].isdigit()
                                     else {b"n": b"\n", b"r": b"\r", b"t": b"\t"}.get(m[1], m[1]), c)
                              for c in chunks)
            text.append(joined.decode("utf-16-be", "replace"))
    return "\n".join(text), raw


def _assert_vector_pdf(png: Path, *titles: str) -> str:
    """The PDF beside ``png`` draws the chart as vectors (no raster image) and holds ``titles`` as text."""
    text, raw = _pdf_text(pdf_path(png))
    assert b"/Subtype /Image" not in raw
    for title in titles:
        assert title in text, (title, text[:300])
    return text


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


def test_training_curves_png_and_vector_pdf(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "log.jsonl", [_record(e, warmup_epochs=4) for e in range(8)])
    out = tmp_path / "sub" / "training_curves.png"                  # folders are made
    plot_training_curves(log, out, WEIGHTS, LOSS_TERM_LABELS, n_seen=8)
    pixels = _png(out)
    assert pixels.shape[1] > 1500 and pixels.shape[0] > 400 and pixels.std() > 10
    text = _assert_vector_pdf(out, "(a) loss terms", "validation top-1", "learning rate", "warm-up ends")
    assert "total = ce + kd + 0.1\u00b7prior + reverse" in text               # how "total" adds up
    assert "chance (1/8 = 12.5 %)" in text                                   # the chance line's label
    assert all(label in text for label in LOSS_TERM_LABELS.values())


def test_total_formula_follows_the_run_s_weights() -> None:
    assert total_formula(WEIGHTS) == "total = ce + kd + 0.1\u00b7prior + reverse"
    assert total_formula({**WEIGHTS, "loss_prior": 0.0}) == "total = ce + kd + reverse (prior: weight 0)"
    assert total_formula({**WEIGHTS, "loss_prior": 0.25}).startswith("total = ce + kd + 0.25\u00b7prior")


def test_training_curves_with_another_prior_weight_and_chance(tmp_path: Path) -> None:
    """The legend and the chance line come from the arguments, not from constants; a log never validated."""
    log = _write_log(tmp_path / "log.jsonl", [_record(e, val_top1_pct=None) for e in range(3)])
    plot_training_curves(log, tmp_path / "c.png", {**WEIGHTS, "loss_prior": 0.0}, LOSS_TERM_LABELS, n_seen=100)
    text = _assert_vector_pdf(tmp_path / "c.png", "(prior: weight 0)", "chance (1/100 = 1 %)", "no validation")
    assert "warm-up ends" not in text                                  # the log never leaves warm-up


@pytest.mark.parametrize("records", [
    [_record(0)],                                                        # one epoch
    [{"epoch": 0, "loss_total": 1.0}],                                   # only one key
    [_record(0, loss_ce=float("nan"), lr=0.0), _record(1)],              # NaN loss, zero lr (log axis)
])
def test_training_curves_edge_cases(tmp_path: Path, records: list[dict]) -> None:
    log = _write_log(tmp_path / "log.jsonl", records)
    plot_training_curves(log, tmp_path / "curves.png", WEIGHTS, LOSS_TERM_LABELS, n_seen=8)
    assert _png(tmp_path / "curves.png").std() > 10 and pdf_path(tmp_path / "curves.png").is_file()


def test_training_log_reading(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "log.jsonl", [_record(0), _record(1), _record(1, loss_total=9.0)])
    records = read_training_log(log)
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["loss_total"] == 9.0   # last line wins
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no epochs"):
        read_training_log(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps(_record(0)) + "\n{oops\n")
    with pytest.raises(UserError, match="line 2"):
        read_training_log(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="does not exist"):
        read_training_log(tmp_path / "missing.jsonl")


def _metrics(precision_rows: list[list[float]]) -> QueryMetrics:
    pr = np.array([np.interp(PR_RECALL_LEVELS, [0, 1], row) for row in precision_rows])
    return QueryMetrics(values={}, pr_precision=pr, labels=np.zeros(len(pr), dtype=int))


def test_pr_figure_says_what_the_mean_is_over(tmp_path: Path) -> None:
    rows = [[1.0, 0.2], [0.9, 0.4], [0.8, 0.3]]
    no_positive = rows + [[np.nan, np.nan]]                  # a query whose class has no gallery item
    curves = {"one-to-one": _metrics(no_positive), "one-to-many M=2 K=5": _metrics(rows)}
    out = tmp_path / "pr_curve.png"
    write_pr_figure(curves, out, "sketchy/zeroshot1")
    text = _assert_vector_pdf(out, "sketchy/zeroshot1", "one-to-one", "one-to-many M=2 K=5", "recall")
    assert "mean over the 3 query sketches" in text
    assert _png(out).std() > 10


def _solid(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (40, 40), colour).save(path)
    return path


def test_retrieval_examples_frames_marks_and_names(tmp_path: Path) -> None:
    sketch = _solid(tmp_path / "q.png", (255, 255, 255))
    photo = _solid(tmp_path / "p.png", (0, 0, 255))
    verdicts = [[True, False, True], [False, False, True, True, False]]    # rows of different lengths
    rows = [{"query_path": sketch, "query_class": "crescent moon", "label": label,
             "results": [(photo, "a class name far too long for a tile", ok) for ok in row]}
            for label, row in zip(("one-to-one (Euclidean)", "one-to-many M=2 K=5"), verdicts)]
    rows[0]["results"][1] = (tmp_path / "missing.jpg", "star", False)      # unreadable image: still drawn
    out = tmp_path / "retrieval_examples.png"
    layout = draw_examples(rows, read_rgb, out)
    pixels = _png(out)
    assert np.abs(np.subtract(pixels.shape[:2], (layout.size[1] * DPI, layout.size[0] * DPI))).max() < 1.01
    for r, row in enumerate(verdicts):
        for c, ok in enumerate([None] + row):
            x0, y0, x1, y1 = layout.pixel_box(r, c, DPI)
            # the middle of the left frame edge, and of the bottom one: the frame's colour, several pixels thick
            expected = NEUTRAL_COLOUR if ok is None else CORRECT_COLOUR if ok else WRONG_COLOUR
            for x, y in ((x0, (y0 + y1) / 2), ((x0 + x1) / 2, y1)):
                for dx in (-2, 0, 2):
                    got = pixels[round(y), round(x) + dx] if x == x0 else pixels[round(y) + dx, round(x)]
                    assert np.abs(got - _rgb255(expected)).max() <= 3, (r, c, got)
            if ok is not None and not (r == 0 and c == 2):
                inside = pixels[round((y0 + y1) / 2), round((x0 + x1) / 2)]
                assert np.abs(inside - [0, 0, 255]).max() <= 3                  # the photo, not covered
                # the tile's bottom row of photo pixels (just above the frame) is the photo: no caption on it
                assert np.abs(pixels[round(y1) - 8, round((x0 + x1) / 2)] - [0, 0, 255]).max() <= 3
        band = pixels[round(layout.pixel_box(r, 0, DPI)[1]) - 25:round(layout.pixel_box(r, 0, DPI)[1]) - 4]
        assert band.min() < 100                                              # the row's label above it
    text, raw = _pdf_text(pdf_path(out))
    assert b"/Subtype /Image" in raw                                         # the photos, embedded
    assert text.count(CORRECT_MARK) == 4 and text.count(WRONG_MARK) == 4   # a mark per result
    assert "one-to-many M=2 K=5" in text and "crescent moon" in text and "star" in text
    assert "a class name" in text and "\u2026" in text                       # long names shortened, not dropped


def test_retrieval_examples_need_rows(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        draw_examples([], read_rgb, tmp_path / "grid.png")
