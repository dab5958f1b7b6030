"""Orchestration: a training run (warm-up, bidirectional phases, resume), a test run (run-folder checks,
extraction, scoring, reports), the full pre-training check, the demo."""
