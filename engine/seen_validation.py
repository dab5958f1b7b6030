"""Seen-class validation data: choosing M and K without looking at the unseen classes.

Queries = seen-class validation sketches (the split's ``*_test`` list, else the training's per-class
hold-out of the training sketches); gallery = seen-class training photos. The test sweep's K range is
centred on the number of test classes, so the validation task draws the same number of seen classes
(seeded), then caps queries and photos by a seeded uniform sample.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from data.dataset import ListDataset, holdout_indices
from data.lists import read_class_file
from data.registry import VAL_FRACTION, SettingPaths


def _capped(indices: np.ndarray, cap: Optional[int], rng: np.random.Generator) -> np.ndarray:
    if cap is None or len(indices) <= cap:
        return indices
    return np.sort(rng.choice(indices, size=cap, replace=False))


def seen_validation_sets(paths: SettingPaths, n_classes: int, max_queries: Optional[int],
                         max_gallery: Optional[int], seed: int, transform: Optional[Callable] = None
                         ) -> tuple[ListDataset, ListDataset, str]:
    """(query sketches, gallery photos, one-line description) of the seen-class validation task."""

    n_seen = len(read_class_file(paths.class_file))
    val_list = paths.list_file("sketch_test")
    if val_list is not None:
        sketches = ListDataset.from_list(paths.root, val_list, n_seen, transform, paths.class_file)
        source = val_list.name
    else:
        train = ListDataset.from_list(paths.root, paths.list_file("sketch_train"), n_seen, transform,
                                      paths.class_file)
        sketches = train.subset(holdout_indices(train.labels, VAL_FRACTION)[1])
        source = f"the {VAL_FRACTION:.0%} per-class hold-out of {paths.list_file('sketch_train').name}"
        if paths.setting.val_fraction == 0:    # QuickDraw: training keeps these sketches unless asked not to
            source += " (trained on, unless training ran with --val_fraction)"
    photos = ListDataset.from_list(paths.root, paths.list_file("photo_train"), n_seen, transform, paths.class_file)
    rng = np.random.default_rng(seed)
    present = np.intersect1d(sketches.labels, photos.labels)
    classes = rng.choice(present, size=min(n_classes, len(present)), replace=False)
    sketches = sketches.subset(_capped(np.flatnonzero(np.isin(sketches.labels, classes)), max_queries, rng))
    photos = photos.subset(_capped(np.flatnonzero(np.isin(photos.labels, classes)), max_gallery, rng))
    description = (f"{len(sketches)} sketches from {source} against {len(photos)} photos of "
                   f"{paths.list_file('photo_train').name}, {len(classes)} seen classes drawn with seed {seed}")
    return sketches, photos, description
