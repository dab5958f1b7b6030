"""List-file datasets, the per-setting registry, transforms, paired loading, the demo generator."""
