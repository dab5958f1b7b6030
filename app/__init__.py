"""The sketch-search web app (``search_app.py``): a leaf that uses extraction and ranking; nothing imports it."""
from utils.runtime import prepare_process

prepare_process(sleep=True)  # before torch loads: idle OpenMP threads sleep between queries (utils/runtime.py)
