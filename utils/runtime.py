"""What every entry point does first, before torch loads (standard library only, so it works without torch).

- OpenMP's idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning: on a CPU shared with other work,
  spinning threads take the cores the busy ones need: training 2-9x slower (bench/bench_load.py; the app's queries:
  bench/bench_app.py), against 10-20 % faster on a machine with nothing else to do. OpenMP reads it once, when
  torch loads, so it is set here, unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT.
- A dependency this Python cannot import is one sentence (which module, how to get the environment), not a
  traceback: the usual cause is running a script outside the ``.venv`` that ``make demo`` / ``make test`` built.

Every package of the project calls :func:`prepare_process` in its ``__init__``, so ``python -m engine.demo``,
the entry scripts, the app, the bench scripts and the tests all get it before their first ``import torch``.
"""
from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Optional

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


def prepare_process() -> None:
    """Idle OpenMP threads sleep (unless the user chose a policy); a missing dependency ends in one sentence."""
    if "GOMP_SPINCOUNT" not in os.environ:      # a spin count the user set is a choice of policy too
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if sys.excepthook is sys.__excepthook__:        # leave a hook someone else installed (IPython, ...) alone
        sys.excepthook = _excepthook
