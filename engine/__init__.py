"""Training loop (warm-up and bidirectional phases) and feature extraction."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)
