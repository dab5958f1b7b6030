"""Parsing of list files (``<relative path> <label>``) and class files (``<name> <id>``)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from utils.errors import UserError


def _split_line(line: str) -> tuple[str, str] | None:
    """Path = every token but the last (it may contain spaces); the last token = the integer."""
    stripped = line.strip()
    if not stripped:
        return None
    parts = stripped.rsplit(None, 1)
    if len(parts) != 2:
        return ("", parts[0])
    return parts[0], parts[1]


def list_can_hold(text: str) -> bool:
    """Whether ``text`` comes back unchanged as the path (or class name) of a list line: no line break, no
    leading or trailing whitespace, UTF-8 encodable."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:                      # undecodable bytes of a file name (surrogate escapes)
        return False
    line = f"{text} 0"
    return bool(text) and len(line.splitlines()) == 1 and _split_line(line) == (text, "0")


def list_text(entries: Iterable[tuple[str, int]]) -> str:
    """The text of a list or class file: one ``<path or name> <integer>`` line per entry."""
    return "".join(f"{rel} {label}\n" for rel, label in entries)


def parse_list_file(path: str | Path, n_classes: int | None = None,
                    class_file: str | Path | None = None, with_line_numbers: bool = False):
    """Read a list file; returns (relative paths, int64 labels[, 1-based line numbers]).

    Every line is validated here, so a malformed line or a label outside ``0..n_classes-1`` is
    reported with the list file and the line number before any training starts.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise UserError(f"list file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"list file {path} is not UTF-8 text (byte {exc.start})") from None
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parsed = _split_line(line)
        if parsed is None:
            continue
        rel, label_text = parsed
        try:
            label = int(label_text)
        except ValueError:
            label = None
        if not rel or label is None:
            raise UserError(
                f"{path}, line {lineno}: expected '<relative path> <integer label>', got {line.strip()!r}")
        if n_classes is not None and not 0 <= label < n_classes:
            src = f" (the class file {class_file} lists {n_classes} classes)" if class_file else ""
            raise UserError(
                f"{path}, line {lineno}: label {label} is outside 0..{n_classes - 1}{src}")
        paths.append(rel)
        labels.append(label)
        lines.append(lineno)
    if not paths:
        raise UserError(f"list file {path} has no entries")
    if with_line_numbers:
        return paths, np.asarray(labels, dtype=np.int64), lines
    return paths, np.asarray(labels, dtype=np.int64)


def read_class_file(path: str | Path) -> list[str]:
    """Read ``cname_cid*.txt``; returns class names indexed by id (ids must be 0..n-1)."""
    path = Path(path)
    names, ids = parse_list_file(path)
    order = np.argsort(ids, kind="stable")
    if not np.array_equal(ids[order], np.arange(len(ids))):
        raise UserError(f"class file {path}: ids must be 0..{len(ids) - 1}, each once")
    return [names[i] for i in order]
