"""Zero-shot retrieval evaluation: feature files, metrics, one-to-many cluster matching, result tables."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)
