"""Zero-shot SBIR test (METHOD.md sections 6-7): what the four ``test_*.py`` scripts run.

``main(argv, setting_name)``: first the run folder is checked (engine.folder_checks): a checkpoint, features
or results of another setting, or a stale ``model_best.pth.tar``, are refused before anything is written.
Features come from ``<resume_dir>/features_zero.pickle`` when its sidecar (``features_zero.json``) names the
weights present now, or when it has no sidecar (the authors' release: checked, provenance unknown; no
dataset, model or checkpoint needed); otherwise they are extracted with the trained student and written
there with their sidecar. Then the one-to-one metrics, and in mode 2 the released scripts' one-to-many
sweep on the test set plus the honest figure (M, K chosen on seen-class validation data). Tables on stdout,
``results.json`` (with the provenance of what was scored), ``results.md`` and two figures in the resume dir.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from data.dataset import ListDataset
from data.images import read_rgb
from data.lists import read_class_file
from data.registry import SETTINGS, Setting, SettingPaths, get_setting, resolve_paths
from engine.flags import DEFAULT_DATA_ROOT, build_test_parser, check_test_args
from engine.folder_checks import (UNKNOWN, ZERO_ROLES, CheckpointInfo, check_best_is_current,
                                  check_checkpoint_setting, check_folder_sidecars, check_unlabelled_origin,
                                  previous_results, read_checkpoint, refuse_foreign, same_features, short,
                                  stale_reason, zero_lists, zero_sidecar)
from engine.seen_validation import seen_validation_sets
from retrieval.cluster_matching import check_pq_shape
from retrieval.feature_io import FeatureSet, load_features, save_features
from retrieval.figures import EXAMPLE_ROWS, write_examples_figure, write_pr_figure
from retrieval.report import PAPER_MARKED, ReportContext, console_report, write_results
from retrieval.search import QuantizerOptions, RetrievalProblem, SweepEntry
from utils.distributed import select_device
from utils.errors import UserError
from utils.precision import exact_float32
from utils.provenance import (file_sha256, list_fingerprint, project_version, read_sidecar, sidecar_path,
                              write_sidecar)
from utils.run_files import (BEST_CHECKPOINT_FILE, EXAMPLES_FILE, FEATURES_FILE, PR_CURVE_FILE, RESULTS_FILE,
                             RESULTS_MARKDOWN_FILE, seen_cache_file)

EXAMPLE_ROWS_PER_RANKING = 5       # mode 2: each example query is drawn once per ranking
SELECTED_ON = "seen-class validation"
FROM_FILE = "features read from"
CUSTOM_MARKED = "Sketchy Ext's pair, marked for a custom dataset, which has no published pair"


# ----------------------------------------------------------------------------------------------- arguments
def train_command(setting: Setting, resume_dir: Path) -> str:
    """The training command that produces this setting's checkpoint in ``resume_dir``."""
    dataset, version = setting.name.split("/")
    cmd = f"python {setting.train_script}"
    if setting.custom:
        cmd += " --data_root ROOT"
    if sum(name.startswith(dataset + "/") for name in SETTINGS) > 1:
        cmd += f" --zero_version {version}"
    if resume_dir != Path(setting.checkpoint_dir):
        cmd += f" --savedir {resume_dir}"
    return cmd


# ----------------------------------------------------------------------------------------------- run folder
class StudentSource:
    """The checkpoint (read once, its weights hashed) and the trained student, built on first use: runs on a
    features file never need the model."""

    def __init__(self, setting: Setting, checkpoint: Path, info: Optional[CheckpointInfo], device: torch.device):
        self.setting, self.checkpoint, self.info, self.device = setting, checkpoint, info, device
        self._loaded: Any = None

    @property
    def available(self) -> bool:
        return self.info is not None

    def get(self) -> Any:
        """The trained run (engine.trained_run.TrainedRun): the one implementation of extraction."""
        if self._loaded is None:
            from engine.trained_run import TrainedRun   # lazy: runs on a features file need no timm

            self._loaded = TrainedRun.load(self.checkpoint.parent, self.checkpoint, self.device,
                                           ckpt=self.info.ckpt, setting=self.setting)
        return self._loaded


def inspect_run_folder(args: argparse.Namespace, setting: Setting, resume_dir: Path,
                       device: torch.device, ctx: ReportContext) -> StudentSource:
    """Read the checkpoint and refuse a folder of another setting or a stale best, before anything is written."""
    path = Path(args.checkpoint) if args.checkpoint else resume_dir / BEST_CHECKPOINT_FILE
    info = None
    if path.is_file():
        try:
            info = read_checkpoint(path)
        except UserError as exc:
            features = resume_dir / FEATURES_FILE
            if args.extract or not features.is_file() or sidecar_path(features).is_file():
                raise
            ctx.notes.append(f"{exc} (ignored: the features file is used as found)")
    if info is not None:
        check_checkpoint_setting(info, setting, resume_dir)
        if args.checkpoint is None:
            check_best_is_current(info, resume_dir, setting)
    check_folder_sidecars(resume_dir, setting)
    return StudentSource(setting, path, info, device)


def resolve_data_root(args: argparse.Namespace, source: StudentSource) -> str:
    """--data_root, else the one stored with the checkpoint when that folder still exists, else the default."""
    if args.data_root is not None:
        return args.data_root
    stored = source.info.args.get("data_root") if source.info is not None else None
    if isinstance(stored, str) and stored and Path(stored).is_dir():
        print(f"data_root: {stored} (stored in {source.checkpoint}; --data_root overrides it)", flush=True)
        return stored
    return DEFAULT_DATA_ROOT


def dataset_paths(setting: Setting, data_root: str) -> Optional[SettingPaths]:
    try:
        return resolve_paths(setting, data_root)
    except UserError:
        return None


# ----------------------------------------------------------------------------------------------- features
def embed_sets(source: StudentSource, gallery: ListDataset, queries: ListDataset,
               args: argparse.Namespace, what: str) -> FeatureSet:
    """Student features of a gallery and a query dataset."""
    run = source.get()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    run.student.to(memory_format=memory_format)
    kw = dict(batch_size=args.batch_size, workers=args.workers, amp=args.amp,
              on_device_normalize=args.gpu_normalize, memory_format=memory_format)
    g, gl = run.embed_dataset(gallery, desc=f"{what} photos", **kw)
    q, ql = run.embed_dataset(queries, desc=f"{what} sketches", **kw)
    return FeatureSet(g, gl, q, ql)


def image_transform(source: StudentSource, args: argparse.Namespace):
    """The test pre-processing at the checkpoint's input size (up to uint8 with --gpu_normalize)."""
    return source.get().transform(normalize=not args.gpu_normalize)


def extraction_options(args: argparse.Namespace, device: torch.device) -> dict[str, bool]:
    """How features were computed, recorded in their sidecar (bf16 features differ from fp32 ones a little)."""
    return {"amp": bool(args.amp and device.type == "cuda"), "channels_last": bool(args.channels_last),
            "gpu_normalize": bool(args.gpu_normalize)}


def save_with_sidecar(features: FeatureSet, path: Path, record: dict) -> dict:
    """Features, then their provenance; the old sidecar goes first, so a crash in between leaves features of
    unknown provenance, never a sidecar that describes other features."""
    sidecar_path(path).unlink(missing_ok=True)
    save_features(features, path)
    write_sidecar(path, record)
    return read_sidecar(path)


def describe_record(record: dict) -> str:
    return (f"extracted with {record.get('checkpoint')} (run {short(record.get('run_id'))}, weights "
            f"{short(record.get('student_sha256'))}, {record.get('img_size')} px)")


def zero_features(args: argparse.Namespace, setting: Setting, resume_dir: Path, source: StudentSource,
                  ctx: ReportContext) -> tuple[FeatureSet, Any]:
    """The test features and their provenance (the sidecar's record, or "unknown"): the features file when it
    is current, else extracted (and written there with its sidecar). Sets ``ctx.features_source``."""
    path = resume_dir / FEATURES_FILE
    paths = dataset_paths(setting, args.data_root)
    if path.is_file() and not args.extract:
        features = load_features(path)
        record = read_sidecar(path)
        if record is None:
            checked = check_unlabelled_origin(features, setting, paths, path, resume_dir)
            ctx.features_source = (f"{FROM_FILE} {path}; provenance unknown: no {sidecar_path(path).name}, as for "
                                   f"the authors' released file; checked: {checked}")
            if source.available:
                ctx.notes.append(f"{path.name} does not record what made it: it may not come from "
                                 f"{source.checkpoint}; add --extract to extract new features with it")
            return features, UNKNOWN
        reason = stale_reason(record, source.info, zero_lists(paths) if paths else None, f"the features in {path}")
        if reason is None:
            ctx.features_source = f"{FROM_FILE} {path}, {describe_record(record)}"
            return features, record
        if not source.available:
            raise UserError(f"{reason}, and there is no checkpoint {source.checkpoint} to extract them again: "
                            f"pass --checkpoint or --extract with the right model (nothing was written)")
        print(f"{reason}: extracting them again", flush=True)
        ctx.notes.append(f"{reason}: they were extracted again")
    elif not source.available:
        if args.checkpoint is not None:
            raise UserError(f"checkpoint {source.checkpoint} (--checkpoint) does not exist")
        if args.extract:
            raise UserError(f"--extract needs the checkpoint {source.checkpoint}, which does not exist "
                            "(pass --checkpoint PATH)")
        if setting.dataset_dir == "Sketchy":     # the authors released features for the two Sketchy splits only
            raise UserError(
                f"neither {path} nor {source.checkpoint} exists: download the authors' released "
                f"{setting.split_dir}/{FEATURES_FILE} to {path} (README.md, section 'Datasets'), or train a model "
                f"with `{train_command(setting, resume_dir)}`")
        released = "" if setting.custom else " (the authors released features for the two Sketchy splits only)"
        raise UserError(
            f"neither {path} nor {source.checkpoint} exists: train a model with "
            f"`{train_command(setting, resume_dir)}`{released}, or pass --checkpoint PATH")
    paths = resolve_paths(setting, args.data_root)
    n_unseen = len(read_class_file(paths.zero_class_file))
    transform = image_transform(source, args)
    photos, sketches = (ListDataset.from_list(paths.root, paths.list_file(role), n_unseen, transform,
                                              paths.zero_class_file) for role in ZERO_ROLES)
    features = embed_sets(source, photos, sketches, args, "unseen-class")
    record = save_with_sidecar(features, path, {**zero_sidecar(source.info, paths, features),
                                                "extraction": extraction_options(args, source.device)})
    ctx.features_source = f"{describe_record(record)}, written to {path}"
    return features, record


def seen_validation_features(args: argparse.Namespace, paths: SettingPaths, source: StudentSource,
                             resume_dir: Path, n_classes: int, test_weights: Optional[str],
                             ctx: ReportContext) -> tuple[Optional[FeatureSet], str]:
    """Seen-class validation features (cached in the resume dir with a sidecar), or None and why not.

    A cache is used when its sidecar names the weights of the test features (or of the checkpoint), the
    same lists and the same draw; otherwise it is extracted again (a cache without sidecar only when there
    is no checkpoint to do so, with a note).
    """
    params = {"n_classes": n_classes, "max_queries": args.val_max_queries, "max_gallery": args.val_max_gallery,
              "seed": args.seed}
    cache = resume_dir / seen_cache_file(n_classes, args.val_max_queries, args.val_max_gallery, args.seed)
    roles = [r for r in ("sketch_test", "sketch_train", "photo_train") if paths.list_file(r) is not None]
    lists = {"class_file": list_fingerprint(paths.class_file),
             **{r: list_fingerprint(paths.list_file(r)) for r in roles}}
    weights = source.info.student_sha256 if source.available else test_weights
    if cache.is_file() and not args.extract:
        record = read_sidecar(cache)
        if record is None and not source.available:
            features = load_features(cache)
            n_seen = len(read_class_file(paths.class_file))
            if max(features.gallery_labels.max(), features.query_labels.max()) >= n_seen:
                raise UserError(f"{cache} cannot hold {paths.setting.name}'s seen-class features: its labels reach "
                                f"beyond the {n_seen} classes of {paths.class_file}; delete it")
            ctx.notes.append(f"{cache.name} does not record what made it (no {sidecar_path(cache).name}): "
                             "used as found, its provenance is unknown")
            return features, f"seen-class validation features from {cache} (provenance unknown)"
        if record is None:
            reason = f"{cache} does not record what made it"
        elif record.get("setting") != paths.setting.name:
            raise refuse_foreign(str(cache), str(record.get("setting")), paths.setting, resume_dir)
        elif weights is None or record.get("student_sha256") != weights:
            reason = (f"{cache} was extracted with other weights (weights {short(record.get('student_sha256'))}) "
                      f"than the test features' (weights {short(weights)})")
        elif record.get("lists") != lists or any(record.get(k) != v for k, v in params.items()):
            reason = f"{cache} was extracted from other list files or another draw"
        else:
            return load_features(cache), str(record.get("description"))
        if not source.available:
            return None, f"{reason}, and the model checkpoint {source.checkpoint} is needed to extract them again"
        print(f"{reason}: extracting the seen-class validation features again", flush=True)
    if not source.available:
        return None, (f"the honest figure needs the model checkpoint {source.checkpoint} to embed the "
                      "seen-class validation data")
    sketches, photos, description = seen_validation_sets(paths, n_classes, args.val_max_queries,
                                                         args.val_max_gallery, args.seed, image_transform(source, args))
    features = embed_sets(source, photos, sketches, args, "seen-class")
    save_with_sidecar(features, cache, {**source.info.provenance(), "lists": lists, **params,
                                        "description": description, "n_gallery": int(len(features.gallery)),
                                        "n_queries": int(len(features.query)), "version": project_version()})
    return features, description


# ----------------------------------------------------------------------------------------------- one-to-many
def sweep_summary(entries: Sequence[SweepEntry]) -> list[dict]:
    return [{"M": e.m, "K": e.k, **e.metrics.averaged()} for e in entries]


def best_entry(entries: Sequence[SweepEntry], metric: str) -> SweepEntry:
    """Highest per-class ``metric``; the first in sweep order on ties, NaN never wins."""
    scores = [e.metrics.averaged()["per_class"][metric] for e in entries]
    return entries[int(np.argmax([-math.inf if math.isnan(s) else s for s in scores]))]


def honest_selection(args: argparse.Namespace, setting: Setting, resume_dir: Path, source: StudentSource,
                     test: FeatureSet, test_weights: Optional[str], grid: list[tuple[int, int]],
                     options: QuantizerOptions, device: torch.device, ctx: ReportContext) -> Optional[tuple[int, int]]:
    """(M, K) that win the same sweep on seen-class validation data, or None (with a note saying why)."""
    try:
        paths = resolve_paths(setting, args.data_root)
    except UserError as exc:
        reason = str(exc).split(": ", 1)[0]        # the first clause names the missing folder or file
        ctx.notes.append(f"honest figure not computed: it needs the dataset's seen-class data ({reason}); "
                         "the test-set sweep above is shown alone")
        return None
    seen, description = seen_validation_features(args, paths, source, resume_dir, len(np.unique(test.query_labels)),
                                                 test_weights, ctx)
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
    args = build_test_parser(setting).parse_args(argv)
    check_test_args(args)
    device = select_device(args.device)
    exact_float32()     # no TF32 in matmuls or convolutions: rankings must not depend on the card
    resume_dir = Path(args.resume_dir)
    ctx = ReportContext(paper_metrics=tuple(setting.paper_metrics), features_source="",
                        selection_metric=setting.paper_metrics[0], title=args.label or setting.name,
                        marked=CUSTOM_MARKED if setting.custom else PAPER_MARKED)
    source = inspect_run_folder(args, setting, resume_dir, device, ctx)   # refuses before anything is written
    args.data_root = resolve_data_root(args, source)
    features, feature_record = zero_features(args, setting, resume_dir, source, ctx)
    grid = [(m, k) for m in args.pq_m for k in args.pq_k] if args.mode == 2 else []
    fitted_on = len(features.gallery) if args.gmm_max_samples is None else min(args.gmm_max_samples,
                                                                                 len(features.gallery))
    for m, k in grid:                                  # before any work, so a bad flag fails at once
        check_pq_shape(features.dim, fitted_on, m, k)
    if args.checkpoint is not None and not args.extract and feature_record == UNKNOWN:
        ctx.notes.append("--checkpoint serves only the honest figure here (add --extract to extract new features "
                         "with it)")
    problem = RetrievalProblem(features, device, args.chunk)
    one_to_one = problem.evaluate(desc="one-to-one")
    no_positives = int(np.isnan(one_to_one.values["mAP@all"]).sum())
    if no_positives:
        ctx.notes.append(f"{no_positives} queries belong to classes with no gallery item: their AP is undefined "
                         "and left out of every mAP mean (their precision counts as 0, as in the released code)")
    results: dict[str, Any] = {
        "setting": setting.name, "kind": args.kind, "label": ctx.title, "n_queries": int(len(features.query)),
        "n_gallery": int(len(features.gallery)), "feature_dim": features.dim, "one_to_one": one_to_one.averaged(),
        "one_to_many": None,
        "provenance": {"features": feature_record, "features_sha256": file_sha256(resume_dir / FEATURES_FILE),
                       "mode": args.mode, "seed": args.seed, "version": project_version(), "one_to_many": None}}
    curves = {"one-to-one": one_to_one}
    rankings = [("one-to-one (Euclidean)", problem.distance_fn())]
    if args.mode == 2:
        results["one_to_many"] = one_to_many(args, setting, problem, source, resume_dir, grid, feature_record,
                                             ctx, curves, rankings)
        results["provenance"]["one_to_many"] = {
            "quantizer": {"quantizer": args.quantizer, "gmm_covariance": args.gmm_covariance,
                          "gmm_max_samples": args.gmm_max_samples},
            "alpha": args.alpha, "grid": [list(mk) for mk in grid], "seed": args.seed,
            "version": project_version(), "kept_from_earlier_run": False}
    else:
        keep_one_to_many(resume_dir, results, ctx)
    if not args.no_figures:
        write_figures(args, setting, problem, curves, rankings, resume_dir, ctx)
    print(console_report(results, ctx), flush=True)
    write_results(resume_dir, results, ctx)
    print(f"results written to {resume_dir / RESULTS_FILE} and {resume_dir / RESULTS_MARKDOWN_FILE}")


def keep_one_to_many(resume_dir: Path, results: dict[str, Any], ctx: ReportContext) -> None:
    """Mode 1: keep the earlier mode-2 run's one-to-many section when it was computed on these features."""
    old = previous_results(resume_dir)
    otm = old.get("one_to_many")
    if not isinstance(otm, dict):
        return
    old_provenance = old.get("provenance") if isinstance(old.get("provenance"), dict) else {}
    if not same_features(old_provenance, results["provenance"]):
        ctx.notes.append(f"the one-to-many section of the earlier {RESULTS_FILE} was dropped: it was computed on "
                         "other features than these (run --mode 2 to compute it again)")
        return
    results["one_to_many"] = otm
    kept = old_provenance.get("one_to_many")
    results["provenance"]["one_to_many"] = {**kept, "kept_from_earlier_run": True} if isinstance(kept, dict) else None
    ctx.quantizer = str(otm.get("quantizer", ""))
    seen = otm.get("seen_validation") or {}
    ctx.seen_description, ctx.seen_sweep = seen.get("description"), seen.get("sweep")
    ctx.notes.append("the one-to-many section is kept from the earlier mode-2 run on the same features "
                     "(this mode-1 run did not recompute it)")


def one_to_many(args: argparse.Namespace, setting: Setting, problem: RetrievalProblem, source: StudentSource,
                resume_dir: Path, grid: list[tuple[int, int]], feature_record: Any, ctx: ReportContext,
                curves: dict, rankings: list) -> dict[str, Any]:
    """The test-set sweep and the honest figure; adds the one-to-many curve and ranking."""
    options = QuantizerOptions(args.quantizer, args.gmm_covariance, args.gmm_max_samples, args.seed, args.alpha)
    ctx.quantizer = quantizer_label(options)
    entries = problem.sweep(grid, options, "sweep (test set)")
    if not all(e.converged for e in entries):
        ctx.notes.append("some codeword fits stopped at the iteration limit before converging "
                         "(as they may in the released code)")
    test_weights = feature_record.get("student_sha256") if isinstance(feature_record, dict) else None
    chosen = honest_selection(args, setting, resume_dir, source, problem.features, test_weights, grid, options,
                              problem.device, ctx)
    selected = None
    if chosen is not None:
        entry = next(e for e in entries if (e.m, e.k) == chosen)
        selected = {"M": entry.m, "K": entry.k, "selected_on": SELECTED_ON, **entry.metrics.averaged()}
        how = f"chosen on {SELECTED_ON}"
    else:
        entry = best_entry(entries, ctx.selection_metric)
        how = "tuned on the test set"
    curves[f"one-to-many, M={entry.m} K={entry.k} ({how})"] = entry.metrics
    rankings.append((f"one-to-many M={entry.m} K={entry.k} ({how})", problem.distance_fn(entry.codebook, args.alpha)))
    seen = ({"description": ctx.seen_description, "sweep": ctx.seen_sweep} if ctx.seen_sweep else None)
    return {"alpha": args.alpha, "quantizer": ctx.quantizer, "sweep": sweep_summary(entries), "selected": selected,
            "seen_validation": seen}


def write_figures(args: argparse.Namespace, setting: Setting, problem: RetrievalProblem, curves: dict,
                  rankings: list, resume_dir: Path, ctx: ReportContext) -> None:
    """The precision-recall figure always; the retrieval examples (a row per example query and ranking) when the
    dataset's images are there; each as PNG and PDF."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    write_pr_figure(curves, resume_dir / PR_CURVE_FILE, ctx.title)
    try:
        paths = resolve_paths(setting, args.data_root)
    except UserError:
        ctx.notes.append(f"{EXAMPLES_FILE} not drawn: it needs the dataset's images (--data_root)")
        return
    n_queries = EXAMPLE_ROWS if len(rankings) == 1 else EXAMPLE_ROWS_PER_RANKING
    why_not = write_examples_figure(problem, paths, resume_dir / EXAMPLES_FILE, args.seed, rankings,
                                    read_rgb, n_queries)
    if why_not:
        ctx.notes.append(f"{EXAMPLES_FILE} not drawn: {why_not}")
