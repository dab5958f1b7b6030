"""The sketch-search web app (``search_app.py``): a leaf that uses extraction and ranking; nothing imports it."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)
