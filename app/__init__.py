"""The sketch-search web app (``search_app.py``): a leaf that uses extraction and ranking; nothing imports it."""
