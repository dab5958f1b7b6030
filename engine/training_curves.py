"""``training_curves.png`` / ``.pdf``: every loss term, validation top-1 and the learning rates per epoch, drawn
from a run's ``log.jsonl``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from utils.errors import UserError
from utils.figures import NEUTRAL_COLOUR, figure_files

TOTAL = "loss_total"
MARKER_MAX_POINTS = 40          # up to this many epochs each point also gets a dot (a 1-epoch log shows one)


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
        record.setdefault("epoch", len(by_epoch))
        by_epoch[record["epoch"]] = record
    if not by_epoch:
        raise UserError(f"training log {log_path} has no epochs yet")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _values(records: Sequence[dict], key: str) -> np.ndarray:
    """One log key over the epochs as floats; missing, None and non-finite values become NaN (gaps)."""
    out = np.full(len(records), np.nan)
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[i] = v
    return out


def warmup_end(records: Sequence[dict]) -> Optional[float]:
    """Halfway between the last warm-up epoch and the next epoch, if the log reaches past warm-up."""
    warm = [r["epoch"] for r in records if r.get("phase") == "warmup"]
    later = [r["epoch"] for r in records if r.get("phase") not in (None, "warmup") and warm and r["epoch"] > max(warm)]
    return (max(warm) + min(later)) / 2 if later else None


def total_formula(term_weights: Mapping[str, float]) -> str:
    """``total = ce + kd + 0.1·prior + reverse``: how the logged terms add up to the logged total."""
    parts = [name.removeprefix("loss_") if w == 1 else f"{w:g}\u00b7{name.removeprefix('loss_')}"
             for name, w in term_weights.items() if w != 0]
    dropped = [name.removeprefix("loss_") for name, w in term_weights.items() if w == 0]
    return "total = " + " + ".join(parts) + (f" ({', '.join(dropped)}: weight 0)" if dropped else "")


def plot_training_curves(log_path: str | Path, out_png: str | Path, term_weights: Mapping[str, float],
                         term_labels: Mapping[str, str], n_seen: int) -> None:
    """Three panels: (a) the loss terms, whose legend says how ``loss_total`` adds them up (``term_weights``,
    log key -> weight in the total; ``term_labels``, log key -> what the term is); (b) validation top-1 on
    seen-class sketches with the chance line at 1/``n_seen``; (c) the learning rates (log scale).
    Also writes the PDF beside ``out_png``.
    """
    records = read_training_log(log_path)
    epochs = np.array([float(r["epoch"]) for r in records])
    present = {k for k in {k for r in records for k in r} if not np.isnan(_values(records, k)).all()}
    losses = [k for k in [TOTAL, *term_weights] if k in present]
    losses += sorted(k for k in present if k.startswith("loss_") and k not in losses)
    marker = "o" if len(records) <= MARKER_MAX_POINTS else None
    split = warmup_end(records)
    with figure_files(out_png, 13.5, 5.2) as fig:
        fig.set_layout_engine("constrained")
        ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
        for key in losses:
            if key == TOTAL:
                label, style = total_formula({k: w for k, w in term_weights.items() if k in present}), \
                    {"color": "black", "linewidth": 2.2}
            else:
                label, style = term_labels.get(key, key.removeprefix("loss_")), {"linewidth": 1.4}
            ax_loss.plot(epochs, _values(records, key), marker=marker, markersize=3, label=label, **style)
        ax_loss.set(title="(a) loss terms (training-set means)", xlabel="epoch", ylabel="loss")

        top1 = _values(records, "val_top1_pct")
        if not np.isnan(top1).all():
            ax_val.plot(epochs, top1, marker=marker, markersize=3, label="validation top-1")
        else:
            ax_val.text(0.5, 0.5, "no validation values", transform=ax_val.transAxes, ha="center", color="0.45")
        chance = 100.0 / n_seen
        ax_val.axhline(chance, color=NEUTRAL_COLOUR, linestyle=":", linewidth=1.2,
                       label=f"chance (1/{n_seen} = {chance:.3g} %)")
        ax_val.set(title="(b) validation top-1 on seen-class sketches", xlabel="epoch", ylabel="top-1 (%)",
                   ylim=(0, 100))

        for key, label, style in (("lr", "student lr", "-"), ("teacher_lr", "teacher head lr", "--")):
            lr = _values(records, key)
            lr[lr <= 0] = np.nan                          # log axis
            if not np.isnan(lr).all():
                ax_lr.plot(epochs, lr, linestyle=style, marker=marker, markersize=3, label=label)
        ax_lr.set_yscale("log")
        ax_lr.set(title="(c) learning rate (log scale)", xlabel="epoch", ylabel="learning rate")

        lo, hi = epochs.min(), epochs.max()
        for ax in (ax_loss, ax_val, ax_lr):
            ax.set_xlim(lo - 0.5, hi + 0.5)
            if len(epochs) <= 15:
                ax.set_xticks(epochs)                     # every epoch, and no fractional ticks on short logs
            else:
                ax.xaxis.get_major_locator().set_params(integer=True)
            if split is not None:
                ax.axvline(split, color="0.55", linestyle="--", linewidth=1)
                ax.text(split, 1.0, " warm-up ends", transform=ax.get_xaxis_transform(), va="top", ha="left",
                        fontsize=7, color="0.35")
            if ax.get_legend_handles_labels()[0]:       # under the panel: a legend never hides a curve
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
                          frameon=False)
