"""Pure scoring: distances, metrics, one-to-many cluster matching, feature files, result reports, the paper's
table. It builds no model and no dataset and imports no engine."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)
