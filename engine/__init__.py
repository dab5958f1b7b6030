"""Orchestration: a training run (warm-up, bidirectional phases, resume), a test run (run-folder checks,
extraction, scoring, reports), the full pre-training check, the demo."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)
