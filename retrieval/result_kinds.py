"""What a results.json scores, its ``kind``, in a module without torch (``python -m retrieval.tables`` reads it).

"run" is a real training run, the only kind the tables count; "demo" is `make demo`'s trained run and "baseline"
the untrained network it starts from.
"""
from __future__ import annotations

from typing import Any

RESULT_KINDS = ("run", "demo", "baseline")
# The demo's reports say so: its numbers are the generated shapes', not Sketchy's.
DEMO_LABEL = "demo (generated shapes, run with the sketchy/zeroshot1 scripts)"
BASELINE_LABEL = f"{DEMO_LABEL}, untrained network"


def results_kind(results: dict[str, Any]) -> str:
    """The ``kind`` of a results.json; files written before the field existed are told apart by the demo's labels."""
    kind = results.get("kind")
    if kind in RESULT_KINDS:
        return kind
    label = str(results.get("label") or "")
    if label == BASELINE_LABEL:
        return "baseline"
    return "demo" if label.startswith(DEMO_LABEL) else "run"
