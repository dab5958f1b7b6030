"""Zero-shot retrieval evaluation: feature files, metrics, one-to-many cluster matching, result tables."""
