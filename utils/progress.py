"""Progress for every loop of the project: a tqdm bar on a terminal, plain lines elsewhere.

Written to a file or a pipe (a log, CI, ``| tee``), tqdm's ``\\r`` frames and cursor moves become debris; there
:func:`progress` prints one line each time another ``every`` percent is done, and a last line at the end.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, TextIO

from tqdm import tqdm

EVERY_PERCENT = 10          # a bar that stays (leave=True): a line per 10 %
EVERY_PERCENT_TRANSIENT = 25  # a bar a terminal would erase (leave=False, often nested): a line per 25 %


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """The part of tqdm's interface this project uses, as a line per ``every`` percent."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: Optional[str] = None,
                 unit: str = "it", file: Optional[TextIO] = None, every: int = EVERY_PERCENT):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.file = file if file is not None else sys.stderr
        self.every = max(1, int(every))
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self._next_percent = self.every
        self._closed = False

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f"{100 * self.n // self.total:3d}% " if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {percent}({done} {self.unit}) {elapsed:.0f}s{rate}{extra}"

    def _emit(self) -> None:
        print(self._line(), file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total:
            percent = 100 * self.n / self.total
            if percent >= self._next_percent:
                self._emit()
                while self._next_percent <= percent:
                    self._next_percent += self.every

    def set_postfix(self, values: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.total or self.n < self.total:  # the last line was not printed yet
            self._emit()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def shows_soon(bar: Any, steps: int, every_s: float = 1.0) -> bool:
    """Whether ``bar`` will print within the next ``steps`` updates (a line-per-percent bar), or last drew a
    postfix at least ``every_s`` ago (a terminal bar): computing a postfix that no one sees costs a device
    synchronisation for nothing."""
    if isinstance(bar, LineProgress):
        return bool(bar.total) and 100 * (bar.n + steps) / bar.total >= bar._next_percent
    if getattr(bar, "disable", False):
        return False
    now = time.perf_counter()
    if now - getattr(bar, "_postfix_at", -math.inf) >= every_s:
        bar._postfix_at = now
        return True
    return False


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
             unit: str = "it", leave: bool = True, disable: bool = False, file: Optional[TextIO] = None,
             every: Optional[int] = None) -> Any:
    """A tqdm bar when ``file`` (stderr by default) is a terminal, else a :class:`LineProgress`.

    ``disable`` gives a bar that shows nothing. Off a terminal a line is printed per ``every`` percent
    (default: 10, or 25 for a ``leave=False`` bar, which a terminal would erase).
    """
    stream = file if file is not None else sys.stderr
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=stream)
    if every is None:
        every = EVERY_PERCENT if leave else EVERY_PERCENT_TRANSIENT
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=stream, every=every)
