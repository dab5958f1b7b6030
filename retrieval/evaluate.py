"""Zero-shot SBIR test (METHOD.md sections 6-7): what the four ``test_*.py`` scripts run.

``main(argv, setting_name)``: features from ``<resume_dir>/features_zero.pickle`` when it exists (no
dataset, model or checkpoint needed), otherwise extracted with the trained student and written there;
then the one-to-one metrics, and in mode 2 the released scripts' one-to-many sweep on the test set plus
the honest figure (M, K chosen on seen-class validation data). Tables on stdout, ``results.json``,
``results.md`` and two figures in the resume dir.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from data.dataset import ListDataset
from data.lists import read_class_file
from data.registry import SETTINGS, Setting, SettingPaths, get_setting, resolve_paths
from retrieval.cluster_matching import COVARIANCE_TYPES, DEFAULT_ALPHA, DEFAULT_SEED, QUANTIZERS, check_pq_shape
from retrieval.feature_io import FEATURES_FILE, FeatureSet, load_features, save_features
from retrieval.figures import write_examples_figure, write_pr_figure
from retrieval.report import ReportContext, console_report, write_results
from retrieval.search import QuantizerOptions, RetrievalProblem, SweepEntry
from retrieval.seen_validation import seen_validation_sets
from utils.distributed import select_device
from utils.cli import ArgumentParser
from utils.errors import UserError

CHECKPOINT_FILE = "model_best.pth.tar"
SELECTED_ON = "seen-class validation"
FROM_FILE = "features read from"


# ----------------------------------------------------------------------------------------------- arguments
def build_parser(setting: Setting) -> argparse.ArgumentParser:
    p = ArgumentParser(
        description=f"Zero-shot sketch-based image retrieval test on {setting.name} (SBKA). With no flags "
                    "this is the released test script (mode 2: one-to-many cluster matching).")
    p.add_argument("--resume_dir", default=setting.checkpoint_dir,
                   help=f"holds {FEATURES_FILE}, {CHECKPOINT_FILE} and receives the results")
    p.add_argument("--data_root", default="datasets", help=f"folder holding {setting.dataset_dir}/")
    p.add_argument("--checkpoint", default=None, help=f"student checkpoint (default: <resume_dir>/{CHECKPOINT_FILE})")
    p.add_argument("--extract", action="store_true",
                   help=f"extract features with the checkpoint even if {FEATURES_FILE} exists (overwrites it)")
    p.add_argument("--mode", type=int, choices=(1, 2), default=2,
                   help="1: one-to-one (Euclidean); 2: also one-to-many cluster matching")
    p.add_argument("--pq_m", type=int, nargs="+", default=list(setting.pq_m), help="subspace counts M to sweep")
    p.add_argument("--pq_k", type=int, nargs="+", default=list(setting.pq_k), help="codeword counts K to sweep")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="weight of the cluster distance")
    p.add_argument("--quantizer", choices=QUANTIZERS, default="gmm",
                   help="codewords: GaussianMixture means (released code) or k-means (faster)")
    p.add_argument("--gmm_covariance", choices=COVARIANCE_TYPES, default="full",
                   help="GaussianMixture covariance type ('diag' is much faster)")
    p.add_argument("--gmm_max_samples", type=int, default=None,
                   help="fit the codewords on a seeded sample of this many gallery items (default: all)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of the codeword fit, the seen-class draw and the example queries")
    p.add_argument("--val_max_queries", type=int, default=2000, help="cap on seen-class validation sketches")
    p.add_argument("--val_max_gallery", type=int, default=20000, help="cap on seen-class validation photos")
    p.add_argument("--batch_size", type=int, default=80, help="images per extraction batch")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image loader workers")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for extraction on CUDA")
    p.add_argument("--chunk", type=int, default=1024, help="queries per distance block (bounds memory)")
    p.add_argument("--no_figures", action="store_true", help="do not write pr_curve.png / retrieval_examples.png")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def check_args(args: argparse.Namespace) -> None:
    for flag in ("batch_size", "chunk", "val_max_queries", "val_max_gallery"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.gmm_max_samples is not None and args.gmm_max_samples < 2:
        raise UserError(f"--gmm_max_samples must be at least 2, got {args.gmm_max_samples}")


def train_command(setting: Setting, resume_dir: Path) -> str:
    """The training command that produces this setting's checkpoint in ``resume_dir``."""
    dataset, version = setting.name.split("/")
    cmd = f"python train_{dataset}_ext.py"
    if sum(name.startswith(dataset + "/") for name in SETTINGS) > 1:
        cmd += f" --zero_version {version}"
    if resume_dir != Path(setting.checkpoint_dir):
        cmd += f" --savedir {resume_dir}"
    return cmd


# ----------------------------------------------------------------------------------------------- features
class StudentSource:
    """The trained student, loaded on first use: runs on a features file never need it."""

    def __init__(self, setting: Setting, checkpoint: Path, device: torch.device):
        self.setting, self.checkpoint, self.device = setting, checkpoint, device
        self._loaded: Optional[tuple[Any, dict]] = None

    @property
    def available(self) -> bool:
        return self.checkpoint.is_file()

    def get(self) -> tuple[Any, dict]:
        if self._loaded is None:
            from engine.extract import load_student_for   # lazy: runs on a features file need no timm

            self._loaded = load_student_for(self.setting, self.checkpoint, self.device)
        return self._loaded


def embed_sets(source: StudentSource, gallery: ListDataset, queries: ListDataset,
               args: argparse.Namespace, what: str) -> FeatureSet:
    """Student features of a gallery and a query dataset."""
    from engine.extract import extract_features

    student, _ = source.get()
    kw = dict(device=source.device, batch_size=args.batch_size, workers=args.workers, amp=args.amp)
    g, gl = extract_features(student, gallery, desc=f"{what} photos", **kw)
    q, ql = extract_features(student, queries, desc=f"{what} sketches", **kw)
    return FeatureSet(g, gl, q, ql)


def image_transform(source: StudentSource):
    """The test pre-processing at the checkpoint's input size."""
    from data.transforms import test_transform   # lazy: torchvision is only needed to read images

    return test_transform(int(source.get()[1].get("img_size", 224)))


def zero_features(args: argparse.Namespace, setting: Setting, resume_dir: Path,
                  source: StudentSource) -> tuple[FeatureSet, str]:
    """The test features and where they came from: the features file, else extraction (written there)."""
    path = resume_dir / FEATURES_FILE
    if path.is_file() and not args.extract:
        return load_features(path), f"{FROM_FILE} {path}"
    if not source.available:
        if args.checkpoint is not None:
            raise UserError(f"checkpoint {source.checkpoint} (--checkpoint) does not exist")
        if args.extract:
            raise UserError(f"--extract needs the checkpoint {source.checkpoint}, which does not exist "
                            "(pass --checkpoint PATH)")
        raise UserError(
            f"neither {path} nor {source.checkpoint} exists: download the authors' released features_zero.pickle "
            f"to {path}, or train a model with `{train_command(setting, resume_dir)}`")
    paths = resolve_paths(setting, args.data_root)
    n_unseen = len(read_class_file(paths.zero_class_file))
    transform = image_transform(source)
    photos, sketches = (ListDataset.from_list(paths.root, paths.list_file(role), n_unseen, transform,
                                              paths.zero_class_file) for role in ("photo_zero", "sketch_zero"))
    features = embed_sets(source, photos, sketches, args, "unseen-class")
    save_features(features, path)
    return features, f"extracted with {source.checkpoint}, written to {path}"


def seen_validation_features(args: argparse.Namespace, paths: SettingPaths, source: StudentSource,
                             resume_dir: Path, n_classes: int) -> tuple[Optional[FeatureSet], str]:
    """Seen-class validation features (cached in the resume dir), or None and why not."""
    cache = resume_dir / (f"features_seen_val_c{n_classes}_q{args.val_max_queries}_g{args.val_max_gallery}"
                          f"_seed{args.seed}.pickle")
    fresh = cache.is_file() and (not source.available or cache.stat().st_mtime >= source.checkpoint.stat().st_mtime)
    if fresh and not args.extract:
        return load_features(cache), f"seen-class validation features from {cache}"
    if not source.available:
        return None, (f"the honest figure needs the model checkpoint {source.checkpoint} to embed the "
                      "seen-class validation data")
    sketches, photos, description = seen_validation_sets(paths, n_classes, args.val_max_queries,
                                                         args.val_max_gallery, args.seed, image_transform(source))
    features = embed_sets(source, photos, sketches, args, "seen-class")
    save_features(features, cache)
    return features, description


# ----------------------------------------------------------------------------------------------- one-to-many
def sweep_summary(entries: Sequence[SweepEntry]) -> list[dict]:
    return [{"M": e.m, "K": e.k, **e.metrics.averaged()} for e in entries]


def best_entry(entries: Sequence[SweepEntry], metric: str) -> SweepEntry:
    """Highest per-class ``metric``; the first in sweep order on ties, NaN never wins."""
    scores = [e.metrics.averaged()["per_class"][metric] for e in entries]
    return entries[int(np.argmax([-math.inf if math.isnan(s) else s for s in scores]))]


def honest_selection(args: argparse.Namespace, setting: Setting, resume_dir: Path, source: StudentSource,
                     test: FeatureSet, grid: list[tuple[int, int]], options: QuantizerOptions,
                     device: torch.device, ctx: ReportContext) -> Optional[tuple[int, int]]:
    """(M, K) that win the same sweep on seen-class validation data, or None (with a note saying why)."""
    try:
        paths = resolve_paths(setting, args.data_root)
    except UserError as exc:
        reason = str(exc).split(": ", 1)[0]        # the first clause names the missing folder or file
        ctx.notes.append(f"honest figure not computed: it needs the dataset's seen-class data ({reason}); "
                         "the test-set sweep above is shown alone")
        return None
    seen, description = seen_validation_features(args, paths, source, resume_dir, len(np.unique(test.query_labels)))
    if seen is None:
        ctx.notes.append(f"honest figure not computed: {description}")
        return None
    try:
        for m, k in grid:
            check_pq_shape(seen.dim, len(seen.gallery) if options.max_samples is None
                           else min(options.max_samples, len(seen.gallery)), m, k)
    except UserError as exc:
        ctx.notes.append(f"honest figure not computed: the seen-class validation gallery is too small ({exc})")
        return None
    entries = RetrievalProblem(seen, device, args.chunk).sweep(grid, options, "sweep (seen-class validation)")
    ctx.seen_description, ctx.seen_sweep = description, sweep_summary(entries)
    best = best_entry(entries, ctx.selection_metric)
    return best.m, best.k


def quantizer_label(options: QuantizerOptions) -> str:
    label = (f"GaussianMixture means, covariance '{options.covariance}'" if options.quantizer == "gmm"
             else "k-means centres")
    sample = "all gallery items" if options.max_samples is None else f"a sample of {options.max_samples} gallery items"
    return f"{label}, fitted on {sample}, seed {options.seed}"


# ----------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]], setting_name: str) -> None:
    setting = get_setting(setting_name)
    args = build_parser(setting).parse_args(argv)
    check_args(args)
    device = select_device(args.device)
    torch.set_float32_matmul_precision("highest")     # no TF32: rankings must not depend on the card
    resume_dir = Path(args.resume_dir)
    source = StudentSource(setting, Path(args.checkpoint) if args.checkpoint else resume_dir / CHECKPOINT_FILE, device)
    features, origin = zero_features(args, setting, resume_dir, source)
    grid = [(m, k) for m in args.pq_m for k in args.pq_k] if args.mode == 2 else []
    fitted_on = len(features.gallery) if args.gmm_max_samples is None else min(args.gmm_max_samples,
                                                                                 len(features.gallery))
    for m, k in grid:                                  # before any work, so a bad flag fails at once
        check_pq_shape(features.dim, fitted_on, m, k)
    ctx = ReportContext(paper_metrics=tuple(setting.paper_metrics), features_source=origin,
                        selection_metric=setting.paper_metrics[0])
    if args.checkpoint is not None and not args.extract and origin.startswith(FROM_FILE):
        ctx.notes.append(f"{origin}; --checkpoint serves only the honest figure (add --extract to extract "
                         "new features with it)")
    problem = RetrievalProblem(features, device, args.chunk)
    one_to_one = problem.evaluate(desc="one-to-one")
    no_positives = int(np.isnan(one_to_one.values["mAP@all"]).sum())
    if no_positives:
        ctx.notes.append(f"{no_positives} queries belong to classes with no gallery item: their AP is undefined "
                         "and left out of every mAP mean (their precision counts as 0, as in the released code)")
    results: dict[str, Any] = {
        "setting": setting.name, "n_queries": int(len(features.query)), "n_gallery": int(len(features.gallery)),
        "feature_dim": features.dim, "one_to_one": one_to_one.averaged(), "one_to_many": None}
    curves = {"one-to-one": one_to_one}
    if args.mode == 2:
        results["one_to_many"] = one_to_many(args, setting, problem, source, resume_dir, grid, ctx, curves)
    if not args.no_figures:
        write_figures(args, setting, problem, curves, resume_dir, ctx)
    print(console_report(results, ctx), flush=True)
    write_results(resume_dir, results, ctx)
    print(f"results written to {resume_dir / 'results.json'} and {resume_dir / 'results.md'}")


def one_to_many(args: argparse.Namespace, setting: Setting, problem: RetrievalProblem, source: StudentSource,
                resume_dir: Path, grid: list[tuple[int, int]], ctx: ReportContext, curves: dict) -> dict[str, Any]:
    """The test-set sweep and the honest figure; adds the one-to-many curve to ``curves``."""
    options = QuantizerOptions(args.quantizer, args.gmm_covariance, args.gmm_max_samples, args.seed, args.alpha)
    ctx.quantizer = quantizer_label(options)
    entries = problem.sweep(grid, options, "sweep (test set)")
    if not all(e.converged for e in entries):
        ctx.notes.append("some codeword fits stopped at the iteration limit before converging "
                         "(as they may in the released code)")
    chosen = honest_selection(args, setting, resume_dir, source, problem.features, grid, options,
                              problem.device, ctx)
    selected = None
    if chosen is not None:
        entry = next(e for e in entries if (e.m, e.k) == chosen)
        selected = {"M": entry.m, "K": entry.k, "selected_on": SELECTED_ON, **entry.metrics.averaged()}
        curves[f"one-to-many, M={entry.m} K={entry.k} ({SELECTED_ON})"] = entry.metrics
    else:
        best = best_entry(entries, ctx.selection_metric)
        curves[f"one-to-many, M={best.m} K={best.k} (tuned on the test set)"] = best.metrics
    return {"alpha": args.alpha, "sweep": sweep_summary(entries), "selected": selected}


def write_figures(args: argparse.Namespace, setting: Setting, problem: RetrievalProblem,
                  curves: dict, resume_dir: Path, ctx: ReportContext) -> None:
    """pr_curve.png always; retrieval_examples.png when the dataset's images are there."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    write_pr_figure(curves, resume_dir / "pr_curve.png", f"{setting.name}: mean interpolated precision")
    try:
        paths = resolve_paths(setting, args.data_root)
    except UserError:
        ctx.notes.append("retrieval_examples.png not drawn: it needs the dataset's images (--data_root)")
        return
    why_not = write_examples_figure(problem, paths, resume_dir / "retrieval_examples.png", args.seed)
    if why_not:
        ctx.notes.append(f"retrieval_examples.png not drawn: {why_not}")
