"""What every entry point does first, before torch loads (standard library only, so it works without torch).

- OpenMP's idle threads: torch's threads spin for a while after each parallel region, waiting for the next. On a
  machine with nothing else to do that is the fastest; on a CPU shared with other work the spinning takes the
  cores the busy threads need, and training runs 2-9x slower (bench/bench_load.py). So the setting is chosen from
  what runs at start: when other threads are runnable (``/proc/stat``'s ``procs_running``, sampled a few times
  over ~20 ms), idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``: 2-9x faster there, about a third slower on a
  quiet machine); on a quiet machine OpenMP's own default stays. Without ``/proc/stat`` they sleep. OpenMP reads this once, when torch loads, so it is set here, unless the user
  set OMP_WAIT_POLICY or GOMP_SPINCOUNT. The app always sleeps (``prepare_process(sleep=True)``): between queries
  spinning only costs.
- A dependency this Python cannot import is one sentence (which module, how to get the environment), not a
  traceback: the usual cause is running a script outside the ``.venv`` that ``make demo`` / ``make test`` built.

Every package of the project calls :func:`prepare_process` in its ``__init__``, so ``python -m engine.demo``,
the entry scripts, the app, the bench scripts and the tests all get it before their first ``import torch``.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from types import TracebackType
from typing import Any, Callable, Mapping, Optional

# The project's own top-level packages: a missing module among them is a broken checkout, not a missing dependency.
PROJECT_PACKAGES = frozenset({"app", "bench", "data", "engine", "losses", "models", "retrieval", "tests", "utils"})
REQUIREMENTS = "requirements.txt"


def missing_dependency(exc: BaseException) -> Optional[str]:
    """The one-sentence message for an ``import`` of a third-party module that failed, else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".", 1)[0]
    if top in PROJECT_PACKAGES:
        return None
    return (f"this Python ({sys.executable}) cannot import {top}, which SBKA-repro needs: run the scripts with the "
            f"environment `make demo` / `make test` built (`. .venv/bin/activate`, or `.venv/bin/python SCRIPT`), "
            f"or install the dependencies into yours (`pip install -r {REQUIREMENTS}`)")


def _excepthook(kind: type[BaseException], exc: BaseException, tb: Optional[TracebackType]) -> None:
    message = missing_dependency(exc)
    if message is None or os.environ.get("SBKA_DEBUG") == "1":
        sys.__excepthook__(kind, exc, tb)
        return
    print(f"error: {message}", file=sys.stderr)


SLEEP = ("OMP_WAIT_POLICY", "PASSIVE")
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
BUSY = 0.5                 # mean runnable threads besides this one from which the machine counts as shared
# Names the setting prepare_process made (NAME=VALUE), so that a child process (a test's subprocess, a run of
# engine.reproduce, torchrun's workers) chooses again for itself instead of taking it for the user's choice.
AUTO_MARK = "SBKA_OPENMP_AUTO"
_decided = False           # this process chose already (prepare_process runs at every package's import)


def other_runnable(samples: int = 5, interval_s: float = 0.004, stat: str = "/proc/stat") -> Optional[float]:
    """Mean number of runnable threads other than this one over ``samples`` reads of ``stat`` (Linux), or None
    where it cannot be read. Called before torch loads, when this process runs one thread."""
    counts = []
    for i in range(samples):
        try:
            with open(stat, encoding="ascii") as fh:
                line = next((ln for ln in fh if ln.startswith("procs_running ")), None)
        except OSError:
            return None
        if line is None:
            return None
        counts.append(max(0, int(line.split()[1]) - 1))
        if i + 1 < samples:
            time.sleep(interval_s)
    return sum(counts) / len(counts)


def user_chose(environ: Mapping[str, str]) -> bool:
    """An OpenMP wait setting is in ``environ`` and was not put there by :func:`prepare_process`."""
    mark = environ.get(AUTO_MARK, "")
    name, _, value = mark.partition("=")
    return any(v in environ for v in OPENMP_VARIABLES) and not (
        name in OPENMP_VARIABLES and environ.get(name) == value
        and not any(v in environ for v in OPENMP_VARIABLES if v != name))


def openmp_choice(others: Optional[float], sleep: bool = False) -> Optional[tuple[str, str]]:
    """Sleep on a shared machine (or one that cannot tell) or when asked; on a quiet one, None: OpenMP's default."""
    return SLEEP if sleep or others is None or others >= BUSY else None


def set_openmp(choice: Optional[tuple[str, str]]) -> None:
    """Replace an automatic setting (no user's: see :func:`user_chose`) by ``choice`` (None: none)."""
    for name in (*OPENMP_VARIABLES, AUTO_MARK):
        os.environ.pop(name, None)
    if choice is not None:
        os.environ[choice[0]] = choice[1]
        os.environ[AUTO_MARK] = "=".join(choice)


def prepare_process(sleep: bool = False) -> None:
    """Choose OpenMP's idle-thread policy unless the user did (see the module's docstring; ``sleep``: idle
    threads sleep whatever the load, the app's choice); a missing dependency ends in one sentence."""
    global _decided
    if "torch" not in sys.modules and not user_chose(os.environ):   # once torch is loaded OpenMP has read it
        if not _decided:
            set_openmp(openmp_choice(None if sleep else other_runnable(), sleep))
            _decided = True
        elif sleep:
            set_openmp(SLEEP)
    if sys.excepthook is sys.__excepthook__:        # leave a hook someone else installed (IPython, ...) alone
        sys.excepthook = _excepthook


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) that imports ``exports[name]``'s module on first use: ``from models
    import build_student`` loads torch, ``from models.defaults import DEFAULT_MODEL`` does not, so the flag parsers
    answer ``--help`` and typos before torch loads."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)
    return __getattr__
