"""``python -m retrieval.tables``: the paper's table from every ``results.json`` under ``--runs``.

Columns: the metric pair the paper reports per setting (``Setting.paper_metrics``). Rows of this
reproduction: one-to-one; one-to-many as the released scripts print it (the best of the test-set sweep);
one-to-many with M, K chosen on seen classes. Several runs of a setting give mean ± sample standard
deviation (ddof = 1) and their number; a value no run has is "—", never a zero. ``make demo``'s results (kind
"demo" / "baseline" in results.json) and custom datasets' are never counted: one line names them.
``--with_published`` adds the rows of ``published_results.csv`` (other methods, as printed in their papers, with
their source).
Writes ``table.md``, ``table.tex`` (booktabs) and ``table.csv``; prints the Markdown.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from data.registry import SETTINGS
from retrieval.result_kinds import results_kind
from utils.checkpoint import atomic_write
from utils.errors import UserError, run_cli
from utils.cli import ArgumentParser
from utils.run_files import RESULTS_FILE

PUBLISHED_CSV = Path(__file__).with_name("published_results.csv")
# Column groups in the paper's order, with the names its table uses.
SETTING_LABELS = {"sketchy/zeroshot1": "Sketchy Ext", "sketchy/zeroshot2": "Sketchy Ext split",
                  "tuberlin/zeroshot": "TU-Berlin Ext", "quickdraw/zeroshot": "QuickDraw Ext"}
COLUMNS = [(s, m) for s in SETTING_LABELS for m in SETTINGS[s].paper_metrics]
MISSING = "—"
OURS = "SBKA (reproduced)"
TUNED_MARK = "†"
ROW_ONE_TO_ONE = f"{OURS}, one-to-one"
ROW_TEST_TUNED = f"{OURS}, one-to-many, best of test-set sweep{TUNED_MARK}"
ROW_SEEN_CHOSEN = f"{OURS}, one-to-many, M, K from seen classes"


def column_name(setting: str, metric: str) -> str:
    """The CSV header of one column, e.g. ``sketchy/zeroshot1 mAP@all``."""
    return f"{setting} {metric}"


@dataclass
class Run:
    """One ``results.json``: its folder (relative to --runs) and its contents."""

    name: str
    setting: str
    results: dict


@dataclass
class Row:
    """A table row: per column the values of the runs that have one (published rows: one value)."""

    method: str
    values: dict = field(default_factory=dict)        # (setting, metric) -> list of floats
    source: str = ""
    runs: dict = field(default_factory=dict)          # setting -> number of runs of that setting (ours only)
    printed: dict = field(default_factory=dict)       # (setting, metric) -> the text of a published value


# ----------------------------------------------------------------------------------------------- reading
LEFT_OUT_KINDS = {"demo": "the demo", "baseline": "the demo's untrained baseline"}


def find_runs(runs_dir: Path, left_out: Optional[list] = None) -> list[Run]:
    """The results files of trained runs under ``runs_dir``; those of a setting that is no column of the paper's
    table (a custom dataset) and `make demo`'s (kind "demo" / "baseline") are named in ``left_out`` instead."""
    if not runs_dir.is_dir():
        raise UserError(f"--runs {runs_dir} is not a folder (it should hold the test scripts' run folders)")
    runs = []
    for f in sorted(runs_dir.rglob(RESULTS_FILE)):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{f} is not readable JSON ({exc})") from None
        if not isinstance(data, dict) or "setting" not in data or "one_to_one" not in data:
            raise UserError(f"{f} is not a results file of the test scripts (no 'setting' / 'one_to_one')")
        if data["setting"] in SETTINGS and SETTINGS[data["setting"]].custom:
            if left_out is not None:
                left_out.append(f"{f} ({data['setting']}: a dataset of your own, no column of the paper's table)")
            continue
        kind = results_kind(data)
        if kind != "run":           # `make demo`'s: generated shapes, not a run of the setting it borrows
            if left_out is not None:
                left_out.append(f"{f} ({LEFT_OUT_KINDS[kind]}, not a trained run)")
            continue
        if data["setting"] not in SETTING_LABELS:
            raise UserError(f"{f}: unknown setting {data['setting']!r}; known: {', '.join(SETTING_LABELS)}")
        runs.append(Run(str(f.parent.relative_to(runs_dir)) or ".", data["setting"], data))
    return runs


def _metric(block: Optional[dict], averaging: str, metric: str) -> Optional[float]:
    """A value of ``block[averaging][metric]``; None when absent or null (NaN is written as null)."""
    value = ((block or {}).get(averaging) or {}).get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def best_of_sweep(sweep: list[dict], averaging: str, metric: str) -> Optional[dict]:
    """The sweep entry with the highest ``metric`` (first on ties), as one reads the released printout."""
    scored = [(v, i) for i, e in enumerate(sweep) if (v := _metric(e, averaging, metric)) is not None]
    return sweep[max(scored, key=lambda t: (t[0], -t[1]))[1]] if scored else None


def our_rows(runs: list[Run], averaging: str) -> tuple[list[Row], list[str]]:
    """The three rows of this reproduction and the footnote naming the test-set-tuned M, K."""
    rows = [Row(ROW_ONE_TO_ONE), Row(ROW_TEST_TUNED), Row(ROW_SEEN_CHOSEN)]
    chosen: dict[str, Counter] = {}
    for row in rows:
        row.runs = dict(Counter(r.setting for r in runs))
        row.source = "this reproduction"
    for run in runs:
        metrics = SETTINGS[run.setting].paper_metrics
        otm = run.results.get("one_to_many") or {}
        best = best_of_sweep(otm.get("sweep") or [], averaging, metrics[0])
        if best is not None:
            chosen.setdefault(run.setting, Counter())[(best["M"], best["K"])] += 1
        for row, block in zip(rows, (run.results["one_to_one"], best, otm.get("selected"))):
            for m in metrics:
                value = _metric(block, averaging, m)
                if value is not None:
                    row.values.setdefault((run.setting, m), []).append(value)
    notes = []
    for setting, counter in chosen.items():
        several = sum(counter.values()) > 1
        picks = ", ".join(f"M={m} K={k}" + (f" ({n} run{'s' if n > 1 else ''})" if several else "")
                          for (m, k), n in sorted(counter.items()))
        notes.append(f"{SETTING_LABELS[setting]}: {picks}")
    return rows, notes


def _parse_value(text: str, where: str) -> Optional[float]:
    text = text.strip()
    if text in ("", MISSING, "-", "--"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {text!r} is not a number (write a fraction such as 0.547, or leave it empty)") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{where}: {value} is not a fraction between 0 and 1")
    return value


def read_published(path: Path = PUBLISHED_CSV) -> list[Row]:
    """Rows of other methods from a CSV: ``method``, one column per (setting, metric), ``source``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"published results {path} cannot be read ({exc.strerror or exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    wanted = ["method"] + [column_name(s, m) for s, m in COLUMNS] + ["source"]
    unknown = [c for c in reader.fieldnames or [] if c not in wanted]
    absent = [c for c in wanted if c not in (reader.fieldnames or [])]
    if unknown or absent:
        raise UserError(f"{path}: " + "; ".join(
            ([f"unknown column {unknown[0]!r}"] if unknown else []) + ([f"missing column {absent[0]!r}"] if absent else []))
            + f" (columns: {', '.join(wanted)})")
    rows = []
    for lineno, rec in enumerate(reader, start=2):
        if not (rec["method"] or "").strip():
            raise UserError(f"{path}, line {lineno}: the method is empty")
        row = Row(rec["method"].strip(), source=(rec["source"] or "").strip())
        for s, m in COLUMNS:
            value = _parse_value(rec[column_name(s, m)] or "", f"{path}, line {lineno}, column {column_name(s, m)!r}")
            if value is not None:
                row.values[(s, m)] = [value]
                row.printed[(s, m)] = rec[column_name(s, m)].strip()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- numbers
def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell_text(row: Row, key: tuple, digits: int) -> str:
    """Published values as printed in their source; ours as mean [± std] [(n=k)] with ``digits`` decimals."""
    if key in row.printed:
        return row.printed[key]
    values = row.values.get(key)
    if not values:
        return MISSING
    mean, std = mean_std(values)
    text = f"{mean:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    if row.runs.get(key[0], 0) > 1:
        text += f" (n={len(values)})"
    return text


# ----------------------------------------------------------------------------------------------- writers
def markdown_table(rows: list[Row], notes: list[str], digits: int, averaging: str, with_source: bool) -> str:
    head = ["method"] + [f"{SETTING_LABELS[s]} {m}" for s, m in COLUMNS] + (["source"] if with_source else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.method] + [cell_text(row, k, digits) for k in COLUMNS] + ([row.source] if with_source else [])
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in footnotes(notes, averaging, with_source)]) + "\n"


def footnotes(notes: list[str], averaging: str, with_published: bool = False) -> list[str]:
    out = [f"{OURS}: metrics averaged {averaging.replace('_', ' ')}; several runs of a setting give "
           f"mean ± sample standard deviation (ddof = 1) over n runs; {MISSING} = no run / not reported."]
    if with_published:
        out.append("Other methods: as printed in the comparison table named in the source column.")
    if notes:
        out.append(f"{TUNED_MARK} M, K tuned on the test set, as the released test scripts print it: the sweep "
                   "entry with the best first metric of each pair; " + "; ".join(notes) + ".")
    return out


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "±": r"$\pm$", TUNED_MARK: r"$^\dagger$", MISSING: "---"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def latex_table(rows: list[Row], notes: list[str], digits: int, averaging: str, with_source: bool) -> str:
    n_cols = 1 + len(COLUMNS) + (1 if with_source else 0)
    spec = "l" + "".join(" cc" for _ in SETTING_LABELS) + (" l" if with_source else "")
    groups = " & ".join(rf"\multicolumn{{2}}{{c}}{{{tex_escape(label)}}}" for label in SETTING_LABELS.values())
    rules = " ".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(SETTING_LABELS)))
    lines = [r"\begin{table*}[t]", r"\centering", r"\small",
             rf"\caption{{Zero-shot sketch-based image retrieval. {tex_escape(footnotes(notes, averaging)[0])}}}",
             r"\label{tab:zs-sbir}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             r"Method & " + groups + (" & Source" if with_source else "") + r" \\", rules,
             " & " + " & ".join(tex_escape(m) for _, m in COLUMNS) + (" & " if with_source else "") + r" \\",
             r"\midrule"]
    for i, row in enumerate(rows):
        if i and bool(rows[i - 1].runs) != bool(row.runs):
            lines.append(r"\midrule")
        cells = [tex_escape(row.method)] + [tex_escape(cell_text(row, k, digits)) for k in COLUMNS]
        if with_source:
            cells.append(tex_escape(row.source))
        assert len(cells) == n_cols
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in footnotes(notes, averaging, with_source)[1:]:
        lines.append(rf"\par\smallskip\footnotesize {tex_escape(note)}")
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[Row]) -> str:
    """Full precision: per column the mean, the sample standard deviation and the number of values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["method"]
    for s, m in COLUMNS:
        head += [column_name(s, m), f"{column_name(s, m)} std", f"{column_name(s, m)} n"]
    w.writerow(head + ["source"])
    for row in rows:
        rec = [row.method]
        for k in COLUMNS:
            values = row.values.get(k)
            if not values:
                rec += ["", "", ""]
                continue
            mean, std = mean_std(values)
            rec += [repr(mean), "" if std is None else repr(std), len(values)]
        w.writerow(rec + [row.source])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m retrieval.tables",
                       description=f"Assemble the paper's table from the test scripts' {RESULTS_FILE} files.")
    p.add_argument("--runs", default="checkpoint", help=f"folder searched (recursively) for {RESULTS_FILE}")
    p.add_argument("--out", default=None, help="where table.md, table.tex, table.csv go (default: --runs)")
    p.add_argument("--per_query", action="store_true",
                   help="average over all queries instead of per class (SBKA's test scripts average per class)")
    p.add_argument("--with_published", action="store_true", help=f"add the published rows of {PUBLISHED_CSV.name}")
    p.add_argument("--published", default=str(PUBLISHED_CSV), help="CSV of published rows (used with --with_published)")
    p.add_argument("--digits", type=int, default=4, help="decimals of this reproduction's numbers")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def build_rows(args: argparse.Namespace, left_out: Optional[list] = None) -> tuple[list[Row], list[str], list[Run]]:
    left_out = [] if left_out is None else left_out
    runs = find_runs(Path(args.runs), left_out)
    if not runs and left_out:
        raise UserError(f"no results of the paper's settings under {args.runs}, only {'; '.join(left_out)}")
    if not runs:
        raise UserError(f"no {RESULTS_FILE} under {args.runs}: run the test scripts first "
                        "(README.md, section 'Testing and reproducing the tables')")
    ours, notes = our_rows(runs, "per_query" if args.per_query else "per_class")
    published = read_published(Path(args.published)) if args.with_published else []
    return published + ours, notes, runs


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 <= args.digits <= 10:
        raise UserError(f"--digits must be between 0 and 10, got {args.digits}")
    left_out: list[str] = []
    rows, notes, runs = build_rows(args, left_out)
    averaging = "per_query" if args.per_query else "per_class"
    out = Path(args.out or args.runs)
    texts = {"table.md": markdown_table(rows, notes, args.digits, averaging, args.with_published),
             "table.tex": latex_table(rows, notes, args.digits, averaging, args.with_published),
             "table.csv": csv_table(rows)}
    for name, text in texts.items():
        atomic_write(out / name, lambda fh, t=text: fh.write(t.encode("utf-8")))
    print(texts["table.md"], end="")
    print(f"\n{len(runs)} results files: " + ", ".join(f"{r.name} ({r.setting})" for r in runs))
    if left_out:
        print(f"left out: {'; '.join(left_out)}")
    print(f"written: {', '.join(str(out / n) for n in texts)}")


if __name__ == "__main__":
    run_cli(main)
