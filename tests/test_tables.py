"""``python -m retrieval.tables``: the table's numbers are the runs' numbers; its LaTeX is well-formed."""
import csv
import io
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from data.registry import get_setting
from retrieval import tables
from retrieval.metrics import METRIC_KEYS
from retrieval.report import ReportContext, write_results
from retrieval.result_kinds import BASELINE_LABEL, DEMO_LABEL
from utils.errors import UserError

# The published rows exactly as issue 10 lists them ("—" = not reported).
ISSUE_TABLE = """
| SAKE (ICCV 2019) | 0.547 / 0.692 | 0.497 / 0.598 | 0.475 / 0.599 | 0.130 / 0.179 | ZSE-SBIR (CVPR 2023) Table 1 |
| DSN (IJCAI 2021) | 0.583 / 0.704 | — | 0.484 / 0.591 | — | ZSE-SBIR Table 1 |
| TVT (AAAI 2022) | 0.648 / 0.796 | 0.531 / 0.618 | 0.484 / 0.662 | 0.149 / 0.293 | ZSE-SBIR Table 1 |
| PSKD (ACM MM 2022) | 0.688 / 0.786 | 0.560 / 0.645 | 0.502 / 0.662 | 0.150 / 0.298 | SpLIP (ECCV 2024) comparison table |
| ZSE-SBIR, retrieval head (CVPR 2023) | 0.736 / 0.808 | 0.504 / 0.602 | 0.569 / 0.637 | 0.142 / 0.202 | ZSE-SBIR Table 1 |
| CLIP-AT (CVPR 2023) | — | 0.723 / 0.725 | 0.651 / 0.732 | 0.202 / 0.388 | CLIP-AT comparison figure |
| SpLIP (ECCV 2024) | 0.802 / 0.867 | 0.764 / 0.773 | 0.731 / 0.782 | 0.342 / 0.446 | SpLIP comparison table |
"""


def _averaged(rng):
    return {a: {m: float(rng.random()) for m in METRIC_KEYS} for a in ("per_class", "per_query")}


def write_run(folder: Path, setting: str, seed: int, selected: bool = True) -> dict:
    """A results.json written by the test scripts' own writer, with random metrics."""
    rng = np.random.default_rng(seed)
    s = get_setting(setting)
    sweep = [{"M": m, "K": k, **_averaged(rng)} for m in s.pq_m for k in s.pq_k[:3]]
    sel = {"M": sweep[1]["M"], "K": sweep[1]["K"], "selected_on": "seen-class validation",
           **{a: dict(sweep[1][a]) for a in ("per_class", "per_query")}} if selected else None
    results = {"setting": setting, "n_queries": 10, "n_gallery": 20, "feature_dim": 8,
               "one_to_one": _averaged(rng), "one_to_many": {"alpha": 0.8, "sweep": sweep, "selected": sel},
               "provenance": {"run_id": f"r{seed}", "ignored": True}}
    write_results(folder, results, ReportContext(paper_metrics=s.paper_metrics, features_source="test"))
    return results


@pytest.fixture
def runs(tmp_path):
    base = tmp_path / "checkpoint"
    r = {"s0": write_run(base / "sketchy" / "zeroshot1" / "seed0", "sketchy/zeroshot1", 0),
         "s1": write_run(base / "sketchy" / "zeroshot1" / "seed1", "sketchy/zeroshot1", 1, selected=False),
         "s2": write_run(base / "sketchy" / "zeroshot1" / "seed2", "sketchy/zeroshot1", 2),
         "tu": write_run(base / "tuberlin" / "zeroshot", "tuberlin/zeroshot", 3)}
    return base, r


def md_cells(md: str, method: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def column(setting: str, metric: str) -> int:
    return 1 + tables.COLUMNS.index((setting, metric))


def best(result: dict, averaging: str, metric: str) -> dict:
    return max(result["one_to_many"]["sweep"], key=lambda e: e[averaging][metric])


def fmt(values, digits=4):
    text = f"{statistics.mean(values):.{digits}f}"
    return text + (f" ± {statistics.stdev(values):.{digits}f} (n={len(values)})" if len(values) > 1 else "")


@pytest.mark.parametrize("averaging", ["per_class", "per_query"])
def test_cells_are_the_runs_numbers(runs, tmp_path, capsys, averaging):
    base, r = runs
    out = tmp_path / "out"
    tables.main(["--runs", str(base), "--out", str(out)] + (["--per_query"] if averaging == "per_query" else []))
    md = (out / "table.md").read_text()
    assert capsys.readouterr().out.startswith(md)
    sk = [r["s0"], r["s1"], r["s2"]]
    one = md_cells(md, tables.ROW_ONE_TO_ONE)
    for metric in ("mAP@all", "P@100"):
        assert one[column("sketchy/zeroshot1", metric)] == fmt([x["one_to_one"][averaging][metric] for x in sk])
        assert one[column("tuberlin/zeroshot", metric)] == f"{r['tu']['one_to_one'][averaging][metric]:.4f}"
    # no run of the Sketchy split or QuickDraw: a dash, never a zero
    for setting, metric in tables.COLUMNS:
        if setting in ("sketchy/zeroshot2", "quickdraw/zeroshot"):
            assert one[column(setting, metric)] == "—"
    # best of the test-set sweep on mAP@all; P@100 comes from that same entry
    tuned = md_cells(md, tables.ROW_TEST_TUNED)
    winners = [best(x, averaging, "mAP@all") for x in sk]
    assert tuned[column("sketchy/zeroshot1", "P@100")] == fmt([w[averaging]["P@100"] for w in winners])
    tu_best = best(r["tu"], averaging, "mAP@all")
    assert f"TU-Berlin Ext: M={tu_best['M']} K={tu_best['K']}." in md
    # the seen-class choice is missing in seed1: mean over the two runs that have it
    chosen = md_cells(md, tables.ROW_SEEN_CHOSEN)
    assert chosen[column("sketchy/zeroshot1", "mAP@all")] == fmt(
        [r["s0"]["one_to_many"]["selected"][averaging]["mAP@all"], r["s2"]["one_to_many"]["selected"][averaging]["mAP@all"]])
    assert "(n=2)" in chosen[column("sketchy/zeroshot1", "mAP@all")]
    # the CSV keeps full precision: mean, sample std (ddof=1), n
    rec = next(row for row in csv.DictReader(io.StringIO((out / "table.csv").read_text()))
               if row["method"] == tables.ROW_ONE_TO_ONE)
    vals = [x["one_to_one"][averaging]["mAP@all"] for x in sk]
    assert float(rec["sketchy/zeroshot1 mAP@all"]) == pytest.approx(statistics.mean(vals), rel=1e-14)
    assert float(rec["sketchy/zeroshot1 mAP@all std"]) == pytest.approx(statistics.stdev(vals), rel=1e-12)
    assert rec["sketchy/zeroshot1 mAP@all n"] == "3" and rec["quickdraw/zeroshot mAP@all"] == ""


def test_published_csv_holds_the_issue_table(repo_root):
    rows = tables.read_published(repo_root / "retrieval" / "published_results.csv")
    expected = [ln.strip("| ").split(" | ") for ln in ISSUE_TABLE.strip().splitlines()]
    assert [r.method for r in rows] == [e[0] for e in expected]
    for row, exp in zip(rows, expected):
        assert row.source == exp[-1]
        for i, setting in enumerate(tables.SETTING_LABELS):
            metrics = get_setting(setting).paper_metrics
            pair = exp[1 + i].split(" / ") if exp[1 + i] != "—" else ["—", "—"]
            assert [tables.cell_text(row, (setting, m), 4) for m in metrics] == pair


def _strip_escaped(tex: str) -> str:
    return re.sub(r"\\[{}&%$#_]", "", tex)


def test_latex_is_balanced_with_one_row_per_method(runs, tmp_path):
    base, _ = runs
    tables.main(["--runs", str(base), "--with_published"])
    tex = (base / "table.tex").read_text()
    body = _strip_escaped(tex)
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+\*?)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack.pop() == env
    assert not stack and body.count("$") % 2 == 0
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    n_cols = len(spec.replace(" ", ""))
    assert n_cols == 1 + len(tables.COLUMNS) + 1
    block = tex.split("\\toprule", 1)[1].split("\\bottomrule", 1)[0]
    header, data = block.split("\\midrule", 1)
    for line in header.strip().splitlines():
        if line.endswith("\\\\"):
            spans = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", line)]
            assert _strip_escaped(line).count("&") + 1 + sum(s - 1 for s in spans) == n_cols
    rows = [ln for ln in data.splitlines() if ln.endswith("\\\\")]
    methods = [r.method for r in tables.read_published()] + [tables.ROW_ONE_TO_ONE, tables.ROW_TEST_TUNED,
                                                             tables.ROW_SEEN_CHOSEN]
    assert len(rows) == len(methods)
    for ln, method in zip(rows, methods):
        assert _strip_escaped(ln).count("&") == n_cols - 1
        assert ln.startswith(tables.tex_escape(method) + " &")
    assert "\\toprule" in tex and "$\\pm$" in tex and "(n=3)" in tex


def test_bad_inputs_are_one_sentence(tmp_path, runs):
    base, _ = runs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no results.json under"):
        tables.main(["--runs", str(empty)])
    bad = tmp_path / "pub.csv"
    text = (tables.PUBLISHED_CSV).read_text().replace("0.583", "0.5x3")
    bad.write_text(text)
    with pytest.raises(UserError, match=r"pub\.csv, line 3, column 'sketchy/zeroshot1 mAP@all': '0\.5x3' is not a number"):
        tables.main(["--runs", str(base), "--with_published", "--published", str(bad)])
    bad.write_text(text.replace("source", "venue", 1))
    with pytest.raises(UserError, match="unknown column 'venue'"):
        tables.read_published(bad)
    (base / "broken").mkdir()
    (base / "broken" / "results.json").write_text("{not json")
    with pytest.raises(UserError, match=r"broken/results\.json is not readable JSON"):
        tables.find_runs(base)


def test_a_user_added_published_row_appears(runs, tmp_path):
    base, _ = runs
    pub = tmp_path / "pub.csv"
    pub.write_text(tables.PUBLISHED_CSV.read_text() + "My method (2025),0.9,,,,,,,,my paper Table 2\n")
    tables.main(["--runs", str(base), "--with_published", "--published", str(pub), "--out", str(tmp_path / "o")])
    cells = md_cells((tmp_path / "o" / "table.md").read_text(), "My method (2025)")
    assert cells[1] == "0.9" and cells[2] == "—" and cells[-1] == "my paper Table 2"


@pytest.mark.parametrize("labelled_only", [False, True], ids=["kind field", "labels of older results"])
def test_the_demo_and_its_baseline_are_left_out(tmp_path, capsys, labelled_only):
    """Issue 19's case: after `make demo` no table row holds a number of the demo or of its untrained baseline
    (older files, without "kind", are told apart by the demo's labels), and one line names them."""
    base = tmp_path / "checkpoint"
    demo = write_run(base / "demo", "sketchy/zeroshot1", 5)
    older = write_run(base / "demo" / "untrained", "sketchy/zeroshot1", 6)      # where older demos put it
    baseline = write_run(base / "demo_untrained", "sketchy/zeroshot1", 7)
    for folder, results, kind, label in ((base / "demo", demo, "demo", DEMO_LABEL),
                                         (base / "demo" / "untrained", older, "baseline", BASELINE_LABEL),
                                         (base / "demo_untrained", baseline, "baseline", BASELINE_LABEL)):
        results = {**results, "label": label, **({} if labelled_only else {"kind": kind})}
        write_results(folder, results, ReportContext(paper_metrics=("mAP@all", "P@100"), features_source="test"))
    named = (f"{base / 'demo' / 'results.json'} (the demo, not a trained run); "
             f"{base / 'demo' / 'untrained' / 'results.json'} (the demo's untrained baseline, not a trained run); "
             f"{base / 'demo_untrained' / 'results.json'} (the demo's untrained baseline, not a trained run)")
    with pytest.raises(UserError) as refused:            # only the demo's: nothing to tabulate, and it says why
        tables.main(["--runs", str(base), "--with_published"])
    assert str(refused.value) == f"no results of the paper's settings under {base}, only {named}"
    assert not (base / "table.md").exists()

    real = write_run(base / "sketchy" / "zeroshot1", "sketchy/zeroshot1", 8)     # a trained run is the only one counted
    tables.main(["--runs", str(base), "--with_published"])
    out = capsys.readouterr().out
    md = (base / "table.md").read_text()
    for metric in ("mAP@all", "P@100"):
        assert md_cells(md, tables.ROW_ONE_TO_ONE)[column("sketchy/zeroshot1", metric)] == \
            fmt([real["one_to_one"]["per_class"][metric]])
    assert [ln for ln in out.splitlines() if ln.startswith("left out")] == [f"left out: {named}"]
