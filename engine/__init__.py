"""Training loop (warm-up and bidirectional phases) and feature extraction."""
