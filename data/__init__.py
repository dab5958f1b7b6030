"""List-file datasets, the per-setting registry, transforms, paired loading, the demo generator."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)
