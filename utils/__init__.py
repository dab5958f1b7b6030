"""Small shared helpers: errors, safe unpickling, checkpoint I/O, distributed set-up."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)
