"""The file names of a run folder (``--savedir`` of training, ``--resume_dir`` of testing and of the app).

Each name is written here once; every module that reads or writes one of these files imports it from here.
Training writes the checkpoints, the log and the training curves; a test script writes the features, their
sidecars, the seen-class validation caches, the results and the figures.
"""
from __future__ import annotations

LAST_CHECKPOINT_FILE = "checkpoint.pth.tar"       # the latest epoch: what --resume continues
BEST_CHECKPOINT_FILE = "model_best.pth.tar"       # the best validation epoch: what the test scripts and the app use
LOG_FILE = "log.jsonl"                            # one JSON line per epoch
ARGS_FILE = "args.json"                           # the run's resolved flags, readable without Python
TRAINING_CURVES_FILE = "training_curves.png"       # each figure also as a vector PDF beside it (pdf_name)
FEATURES_FILE = "features_zero.pickle"            # unseen-class test features, in the released format
FEATURES_SIDECAR_FILE = "features_zero.json"      # what made them (utils.provenance.sidecar_path)
RESULTS_FILE = "results.json"
RESULTS_MARKDOWN_FILE = "results.md"
PR_CURVE_FILE = "pr_curve.png"
EXAMPLES_FILE = "retrieval_examples.png"
SEEN_CACHE_PREFIX = "features_seen_val_"           # seen-class validation features, one file per draw
SEEN_CACHE_GLOB = SEEN_CACHE_PREFIX + "*.pickle"

FIGURE_FILES = (TRAINING_CURVES_FILE, PR_CURVE_FILE, EXAMPLES_FILE)


def pdf_name(png_name: str) -> str:
    """The vector copy of a figure: same name, ``.pdf``."""
    return png_name.removesuffix(".png") + ".pdf"


# What a run (and testing it) writes into its folder: an earlier run's files, replaced by --overwrite.
RUN_FILES = (LAST_CHECKPOINT_FILE, BEST_CHECKPOINT_FILE, LOG_FILE, ARGS_FILE, FEATURES_FILE, FEATURES_SIDECAR_FILE,
             RESULTS_FILE, RESULTS_MARKDOWN_FILE, *FIGURE_FILES, *map(pdf_name, FIGURE_FILES))
RUN_FILE_PATTERNS = (SEEN_CACHE_GLOB, SEEN_CACHE_PREFIX + "*.json")


def seen_cache_file(n_classes: int, max_queries: int, max_gallery: int, seed: int) -> str:
    """The seen-class validation cache of one draw (its sidecar has the same stem, ``.json``)."""
    return f"{SEEN_CACHE_PREFIX}c{n_classes}_q{max_queries}_g{max_gallery}_seed{seed}.pickle"


# The batch search's output folder (search_app.py --queries ... --out OUT): not a run folder, same naming habit.
BATCH_CSV_FILE = "results.csv"
BATCH_JSON_FILE = RESULTS_FILE
BATCH_PAGE_FILE = "index.html"
BATCH_OUTPUTS = f"{BATCH_CSV_FILE}, {BATCH_JSON_FILE} and {BATCH_PAGE_FILE}"
