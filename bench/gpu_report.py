"""The GPU check's report: sections of rows, written as JSON and Markdown after every section.

Each section runs inside ``Report.section``: an exception is recorded (type, message, traceback tail) and
the next section still runs, so one failing row never loses the report. Files are replaced atomically.
"""
from __future__ import annotations

import json
import math
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from utils.checkpoint import atomic_write

JSON_NAME = "gpu_report.json"
MD_NAME = "gpu_report.md"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 0.01:
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.2e}"
    if value is None:
        return "–"
    return str(value).replace("|", "/")


class Section:
    def __init__(self, name: str, title: str, on_row=None):
        self.name, self.title = name, title
        self.on_row = on_row
        self.status = "running"
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self.error: Optional[str] = None
        self.seconds = 0.0

    def row(self, **fields: Any) -> dict[str, Any]:
        self.rows.append(fields)
        if self.on_row is not None:
            self.on_row()                  # a row is on disk as soon as it is measured
        return fields

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "status": self.status, "seconds": self.seconds, "rows": self.rows,
                "notes": self.notes, "error": self.error, **self.extra}


class Report:
    """Sections in run order plus the goals; ``write()`` after each section."""

    def __init__(self, out_dir: Path, meta: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.meta = meta
        self.sections: dict[str, Section] = {}
        self.goals: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    @contextmanager
    def section(self, name: str, title: str) -> Iterator[Section]:
        sec = Section(name, title, on_row=self.write)
        self.sections[name] = sec
        start = time.perf_counter()
        self.write()
        print(f"[gpu_check] {title} ...", flush=True)
        try:
            yield sec
            sec.status = "ok" if sec.status == "running" else sec.status
        except Exception as exc:  # noqa: BLE001 - a failing section is recorded, the next one still runs
            sec.status = "error"
            sec.error = f"{type(exc).__name__}: {exc}"
            sec.extra["traceback"] = traceback.format_exc()[-3000:]
            print(f"[gpu_check] {title} FAILED: {sec.error}", flush=True)
        finally:
            sec.seconds = time.perf_counter() - start
            print(f"[gpu_check] {title}: {sec.status} in {sec.seconds:.1f} s", flush=True)
            self.write()

    def skip(self, name: str, title: str, why: str) -> None:
        sec = Section(name, title)
        sec.status, sec.error = "skipped", why
        self.sections[name] = sec
        print(f"[gpu_check] {title}: skipped ({why})", flush=True)
        self.write()

    def goal(self, text: str, target: str, measured: Any, met: Optional[bool], where: str) -> None:
        self.goals = [g for g in self.goals if g["goal"] != text]
        self.goals.append({"goal": text, "target": target, "measured": measured, "met": met, "where": where})

    def as_dict(self) -> dict[str, Any]:
        return _clean({"meta": {**self.meta, "elapsed_s": time.perf_counter() - self.started},
                       "goals": self.goals, "sections": {n: s.as_dict() for n, s in self.sections.items()}})

    def write(self) -> None:
        data = self.as_dict()
        atomic_write(self.out_dir / JSON_NAME, lambda fh: fh.write(json.dumps(data, indent=1).encode("utf-8")))
        atomic_write(self.out_dir / MD_NAME, lambda fh: fh.write(markdown(data).encode("utf-8")))


def _table(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return lines


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    out = ["# SBKA GPU check", "",
           f"Device: **{meta.get('device_name')}** ({meta.get('device')}); torch {meta.get('torch')}, "
           f"timm {meta.get('timm')}, CUDA {meta.get('cuda')}, {meta.get('cpu_count')} CPU cores; "
           f"mode {'smoke (tiny sizes, not a measurement)' if meta.get('smoke') else 'full'}; "
           f"run {meta.get('started_utc')}, {meta.get('elapsed_s', 0):.0f} s in all; command `{meta.get('command')}`.",
           ""]
    if data["goals"]:
        out += ["## Goals", ""]
        out += _table([{"goal": g["goal"], "target": g["target"], "measured": g["measured"],
                        "met": {True: "yes", False: "NO", None: "n/a"}[g["met"]], "row": g["where"]}
                       for g in data["goals"]])
        out.append("")
    for name, sec in data["sections"].items():
        out += [f"## {sec['title']}", "", f"status: **{sec['status']}**, {sec['seconds'] or 0:.1f} s"]
        if sec.get("error"):
            out += ["", f"error: `{sec['error']}`"]
        if sec["rows"]:
            out += [""] + _table(sec["rows"])
        for key in ("top_ops",):
            if sec.get(key):
                out += ["", f"{key}:", ""] + _table(sec[key])
        if sec["notes"]:
            out += [""] + [f"- {n}" for n in sec["notes"]]
        out.append("")
    return "\n".join(out)
