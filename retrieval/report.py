"""Result tables (stdout, ``results.md``) and ``results.json``."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from retrieval.metrics import METRIC_KEYS
from utils.checkpoint import atomic_write
from utils.run_files import RESULTS_FILE, RESULTS_MARKDOWN_FILE

AVERAGINGS = ("per_class", "per_query")
AVERAGING_NOTE = ("per class = mean over classes of the mean over each class's queries (SBKA's test script); "
                  "per query = mean over all queries (SAKE/DSN-style tables)")
TIE_NOTE = "equal distances are ranked by gallery index (stable sort)"
PAPER_MARKED = "the pair the paper's table reports"

@dataclass
class ReportContext:
    """What the tables need besides ``results.json``."""

    paper_metrics: tuple
    features_source: str
    title: str = ""                            # the name shown (the setting, or --label, e.g. the demo)
    quantizer: str = ""
    selection_metric: str = ""
    seen_description: Optional[str] = None
    seen_sweep: Optional[list] = None          # [{"M", "K", "per_query", "per_class"}] on seen-class data
    notes: list = field(default_factory=list)
    marked: str = PAPER_MARKED                 # what the ``*`` metric pair is


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _label(metric: str, paper_metrics: tuple) -> str:
    return metric + ("*" if metric in paper_metrics else "")


def _num(value: Optional[float]) -> str:
    return "     nan" if value is None or math.isnan(value) else f"{value:8.4f}"


def _row(averaged: dict[str, dict[str, float]], averagings: tuple = AVERAGINGS) -> str:
    return "  ".join(" ".join(_num(averaged[a][m]) for m in METRIC_KEYS) for a in averagings)


def _header(paper_metrics: tuple, averagings: tuple = AVERAGINGS) -> str:
    return "  ".join(" ".join(f"{_label(m, paper_metrics):>8}" for m in METRIC_KEYS) for _ in averagings)


def _averaging_title(width: int = 35) -> str:
    return "  ".join(f"{a.replace('_', ' '):<{width}}" for a in AVERAGINGS).rstrip()


def console_report(results: dict[str, Any], ctx: ReportContext) -> str:
    """The readable stdout table; ``*`` marks the metric pair of the paper's table."""
    pm = ctx.paper_metrics
    lines = [f"{ctx.title or results['setting']}: {results['n_queries']} sketch queries against {results['n_gallery']} "
             f"photos, {results['feature_dim']}-d features ({ctx.features_source})",
             f"* = {ctx.marked} ({', '.join(pm)}); {AVERAGING_NOTE}; {TIE_NOTE}", "",
             f"one-to-one (Euclidean)  {' '.join(f'{_label(m, pm):>8}' for m in METRIC_KEYS)}"]
    for a in AVERAGINGS:
        lines.append(f"  {a.replace('_', ' '):<21} {_row(results['one_to_one'], (a,))}")
    otm = results["one_to_many"]
    if otm is not None:
        lines += ["", f"one-to-many sweep (alpha {otm['alpha']}, {ctx.quantizer}): M and K tuned on the TEST set, "
                      "as the released scripts print it",
                  f"            {_averaging_title()}",
                  f"  M    K    {_header(pm)}"]
        lines += [f"  {e['M']:<4} {e['K']:<4} {_row(e)}" for e in otm["sweep"]]
        if ctx.seen_sweep:
            lines += ["", f"seen-class validation ({ctx.seen_description}); selection metric: "
                          f"{ctx.selection_metric} per class",
                      "  " + "  ".join(f"M={e['M']} K={e['K']}: {e['per_class'][ctx.selection_metric]:.4f}"
                                       for e in ctx.seen_sweep)]
        sel = otm["selected"]
        lines.append("")
        if sel is None:
            lines.append("honest one-to-many: not computed (see the note below)")
        else:
            parts = [f"{a.replace('_', ' ')} " + ", ".join(f"{_label(m, pm)} {sel[a][m]:.4f}" for m in METRIC_KEYS)
                     for a in AVERAGINGS]
            lines.append(f"honest one-to-many (M={sel['M']}, K={sel['K']} chosen on {sel['selected_on']}): "
                         + " | ".join(parts))
    if ctx.notes:
        lines += [""] + [f"note: {n}" for n in ctx.notes]
    return "\n".join(lines)


def _md_table(rows: list[tuple[str, dict]], paper_metrics: tuple, first: str) -> list[str]:
    head = [first] + [f"{_label(m, paper_metrics)} ({a.replace('_', ' ')})" for a in AVERAGINGS for m in METRIC_KEYS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, averaged in rows:
        out.append("| " + " | ".join([name] + [_num(averaged[a][m]).strip() for a in AVERAGINGS
                                               for m in METRIC_KEYS]) + " |")
    return out


def markdown_report(results: dict[str, Any], ctx: ReportContext) -> str:
    """``results.md``: the same numbers as stdout, as Markdown tables."""
    pm = ctx.paper_metrics
    lines = [f"# Zero-shot retrieval: {ctx.title or results['setting']}", "",
             f"{results['n_queries']} sketch queries, {results['n_gallery']} gallery photos, "
             f"{results['feature_dim']}-d features ({ctx.features_source}).", "",
             f"`*` marks {ctx.marked} ({', '.join(pm)}). {_sentence(AVERAGING_NOTE)} "
             f"{_sentence(TIE_NOTE)}", "", "## One-to-one (Euclidean)", ""]
    lines += _md_table([("one-to-one", results["one_to_one"])], pm, "ranking")
    otm = results["one_to_many"]
    if otm is not None:
        lines += ["", "## One-to-many cluster matching", "",
                  f"Distance = {otm['alpha']} x cluster distance + {1 - otm['alpha']:.2g} x Euclidean distance; "
                  f"codewords: {ctx.quantizer}.", "",
                  "### Sweep on the test set (test-set tuning, as the released scripts print it)", ""]
        lines += _md_table([(f"M={e['M']}, K={e['K']}", e) for e in otm["sweep"]], pm, "M, K")
        lines += ["", "### Honest figure (M, K chosen without the unseen classes)", ""]
        if otm["selected"] is None:
            lines.append("Not computed; see the notes.")
        else:
            sel = otm["selected"]
            lines.append(f"M={sel['M']}, K={sel['K']} maximise {ctx.selection_metric} (per class) on "
                         f"{sel['selected_on']}: {ctx.seen_description}.")
            lines += [""] + _md_table([(f"M={sel['M']}, K={sel['K']}", sel)], pm, "selected")
            if ctx.seen_sweep:
                lines += ["", "Seen-class validation sweep:", ""]
                lines += _md_table([(f"M={e['M']}, K={e['K']}", e) for e in ctx.seen_sweep], pm, "M, K")
    if ctx.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in ctx.notes]
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN (a class with no gallery item everywhere) becomes null: JSON has no NaN."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_results(out_dir: Path, results: dict[str, Any], ctx: ReportContext) -> None:
    """``results.json`` (the schema of issue 3) and ``results.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / RESULTS_FILE, json.dumps(_json_safe(results), indent=2) + "\n")
    _write_text(out_dir / RESULTS_MARKDOWN_FILE, markdown_report(results, ctx))
