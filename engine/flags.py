"""The flags of the train and test scripts, in a module that does not import torch.

The entry scripts parse with these parsers first (engine/entry.py), so ``--help``, a mistyped flag or a bad
value answers in a moment instead of after torch's start-up; the run itself (engine/train.py,
engine/evaluate.py) then parses the same flags again with the same parsers. This module imports no other
module of the engine.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

from data.registry import SETTINGS, VAL_FRACTION, Setting, get_setting
from losses.defaults import PRIOR_WEIGHT, SEMANTIC_BIAS
from models.defaults import CLASSIFIER_INIT_STD, DEFAULT_MODEL, OFFICIAL_FILE
from retrieval.defaults import COVARIANCE_TYPES, DEFAULT_ALPHA, DEFAULT_SEED, QUANTIZERS
from retrieval.result_kinds import RESULT_KINDS
from utils.cli import ArgumentParser
from utils.cpus import usable_cores
from utils.errors import UserError
from utils.run_files import (BEST_CHECKPOINT_FILE, EXAMPLES_FILE, FEATURES_FILE, LAST_CHECKPOINT_FILE, PR_CURVE_FILE,
                             RESULTS_FILE, TRAINING_CURVES_FILE)

DEFAULT_PRETRAINED = f"pretrained_model/{OFFICIAL_FILE}"
LR_DECAY = 0.001           # lr(e) = base * LR_DECAY ** (e / epochs)

DEFAULT_DATA_ROOT = "datasets"
# Flags a --resume takes from this command, never from the run: where and how it executes.
MACHINE_FLAGS = ("workers", "device", "no_figures", "debug", "force_process_group", "resume", "overwrite", "savedir")
# Flags restored from the run unless given; they may change (the data are checked by list fingerprints).
MOVABLE_FLAGS = ("data_root", "amp", "channels_last", "gpu_normalize", "compile", "deterministic", "checkin_every")
# Steps between two check-ins of the processes of a multi-process run (errors, non-finite losses): one
# check-in costs a small all-reduce on the CPU, latency-bound, growing with the processes; at this cadence it
# stays under 1 % of a step (bench/bench_checkin.py).
CHECKIN_EVERY = 50
COMPILE_BACKEND = "inductor"


# ----------------------------------------------------------------------------------------------- training
def smoke_preset(setting: Setting) -> dict[str, Any]:
    """``--smoke``: the real pipeline at toy size (minutes on a CPU); flags given explicitly win."""
    d = setting.sketch_divisor
    return {"model": "convnextv2_atto", "pretrained": "none", "img_size": 64,
            "batch_size": d * math.ceil(12 / d),   # Sketchy 12 = 4 + 8; TU-Berlin, QuickDraw 20 = 2 + 18
            "epochs": 2, "warmup_epochs": 1, "max_steps_per_epoch": 10, "max_val_images": 200,
            "savedir": f"checkpoint/smoke/{setting.name}"}


def batch_rule(setting: Setting) -> str:
    d = setting.sketch_divisor
    return f"{setting.dataset_label} takes B//{d} sketches and {d - 1}*(B//{d}) photos"


def settings_of(dataset: str) -> dict[str, Setting]:
    """The registry entries of one dataset, keyed by zero version (``zeroshot1``, ...)."""
    found = {name.split("/", 1)[1]: s for name, s in SETTINGS.items() if name.split("/", 1)[0] == dataset}
    if not found:
        raise UserError(f"unknown dataset {dataset!r}")
    return found


def choose_setting(dataset: str, argv: Sequence[str]) -> Setting:
    versions = settings_of(dataset)
    if len(versions) == 1:
        return next(iter(versions.values()))
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--zero_version", default=next(iter(versions)))
    known, _ = pre.parse_known_args(argv)
    if known.zero_version not in versions:
        raise UserError(f"--zero_version {known.zero_version!r} is not one of {', '.join(versions)}")
    return versions[known.zero_version]


def build_train_parser(setting: Setting, dataset: str) -> ArgumentParser:
    p = ArgumentParser(description=f"Train SBKA on {setting.name}. With no flags this is the released code's run.")
    versions = settings_of(dataset)
    if len(versions) > 1:
        p.add_argument("--zero_version", choices=list(versions), default=setting.split_dir,
                       help="which zero-shot split")
    p.add_argument("--data_root", default=None if setting.custom else "datasets",
                   help=setting.data_root_help + (" (no default: required, except that --resume takes the run's)"
                                                  if setting.custom else ""))
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="weights of student and teacher: a file (the official ConvNeXt-V2 checkpoint, or a timm-format "
                        "state dict, loaded strictly), 'timm' (timm's own pretrained weights of --model, from its "
                        "cache or the Hugging Face Hub), or 'none' for random weights (smoke runs only)")
    p.add_argument("--teacher_pretrained", default=None,
                   help="the teacher's weights when they differ from --pretrained (a file, 'timm' or 'none'; "
                        "default: --pretrained)")
    p.add_argument("--savedir", default=setting.checkpoint_dir, help="run directory (checkpoints, log)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="the student: any timm ImageNet-1k classifier (e.g. convnextv2_tiny, convnext_tiny, "
                        "vit_small_patch16_224; a tag such as convnextv2_tiny.fcmae_ft_in1k picks --pretrained timm's "
                        "weights)")
    p.add_argument("--teacher_model", default=None,
                   help="the teacher, a timm classifier of the 1000 ImageNet classes (default: --model)")
    p.add_argument("--img_size", type=int, default=224, help="input size")
    p.add_argument("--epochs", type=int, default=setting.epochs, help="training epochs, warm-up included")
    p.add_argument("--warmup_epochs", type=int, default=setting.warmup_epochs,
                   help="epochs 0..N-1 train the student only")
    p.add_argument("--batch_size", type=int, default=setting.batch_size,
                   help=f"global batch B of sketches + photos: {batch_rule(setting)}, so B is at least "
                        f"{setting.sketch_divisor}")
    p.add_argument("--lr", type=float, default=setting.lr, help="student learning rate")
    p.add_argument("--teacher_lr", type=float, default=None,
                   help=f"teacher-head learning rate (default: lr x {setting.teacher_lr_scale})")
    p.add_argument("--lr_decay", type=float, default=LR_DECAY,
                   help="lr(e) = lr * lr_decay ** (e / epochs); the released schedule uses 0.001")
    p.add_argument("--augment", choices=("released", "none"), default="released",
                   help="training augmentation: the released flip/scale/rotation/translation, or none (the demo's "
                        "choice: from random weights on a few thousand images it learns several times faster)")
    p.add_argument("--weight_decay", type=float, default=setting.weight_decay, help="Adam L2 weight decay")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers per process, split between the sketch and photo loaders in proportion to "
                        "their share of the batch (default: the cores this process may use -- its affinity and "
                        "cgroup quota -- shared by the processes of this machine, one kept for each, at most 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--channels_last", action="store_true", help="channels-last memory format")
    p.add_argument("--gpu_normalize", action="store_true",
                   help="loaders send uint8; ToTensor/Normalize run on the device (same values, same draws)")
    p.add_argument("--compile", nargs="?", const=COMPILE_BACKEND, default=None, metavar="BACKEND",
                   help=f"torch.compile the student's and the teacher's forward passes (backend {COMPILE_BACKEND} "
                        "unless named); a batch of another size than the first (the epoch's last, shorter one) "
                        "runs eagerly instead of compiling again")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels on CUDA (cudnn.benchmark off, cudnn.deterministic, "
                        "torch.use_deterministic_algorithms; slower): two runs on the same machine give the same "
                        "weights, except where NCCL's reductions are not deterministic")
    p.add_argument("--checkin_every", type=int, default=CHECKIN_EVERY,
                   help="steps between two check-ins of the processes of a multi-process run (an error or a "
                        "non-finite loss on any process stops all of them there)")
    p.add_argument("--force_process_group", action="store_true",
                   help="a process group, DistributedDataParallel and the gradient averaging even for one process "
                        "(checks the multi-process path on one GPU; the same results as without)")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run in <savedir>/{LAST_CHECKPOINT_FILE} with the flags it was started with; "
                        f"only {', '.join('--' + f for f in MACHINE_FLAGS[:5] + MOVABLE_FLAGS)} may be given anew")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a --savedir that holds another run; that run's files are removed once "
                        "this run has written its first checkpoint")
    smoke = smoke_preset(setting)
    p.add_argument("--smoke", action="store_true",
                   help="a few minutes on a CPU: " + ", ".join(f"--{k} {v}" for k, v in smoke.items())
                        + " (random weights: it checks the machinery, not the method; flags given win)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling, augmentation, prior noise")
    p.add_argument("--max_steps_per_epoch", type=int, default=None, help="cap steps per epoch (smoke runs)")
    p.add_argument("--max_val_images", type=int, default=None,
                   help="validate on this many sketches spread over the validation list (smoke runs; default: all)")
    p.add_argument("--classifier_init_std", type=float, default=CLASSIFIER_INIT_STD,
                   help="std of the new seen-class classifier's truncated-normal init (released: 2e-5; a "
                        "from-scratch run learns much faster with 0.02)")
    p.add_argument("--val_fraction", type=float, default=setting.val_fraction,
                   help="per-class hold-out of training sketches when the split has no *_test list"
                   if setting.val_list_by_default else   # QuickDraw: the released run validates on nothing
                   f"hold out this fraction of each class's training sketches for validation and keep the best "
                   f"epoch (e.g. {VAL_FRACTION}); 0: no validation, all training sketches train and the last "
                   f"epoch is {BEST_CHECKPOINT_FILE}, as in the released run")
    if not setting.val_list_by_default:
        p.add_argument("--val_list", action="store_true",
                       help="validate on the split's sketch_test-role list (sketch_filelist_test.txt, "
                            "sketch_test.txt or sketch_tx_..._filelist_test.txt) and keep the best epoch")
    p.add_argument("--prior_weight", type=float, default=PRIOR_WEIGHT,
                   help=f"weight of the Gaussian-prior KL term in the student objective (released: {PRIOR_WEIGHT:g}; "
                        "0: no prior)")
    p.add_argument("--semantic_bias", type=float, default=SEMANTIC_BIAS,
                   help=f"weight of the cid_mask row added to both distillation targets (released: "
                        f"{SEMANTIC_BIAS:g}; 0: no semantic bias)")
    p.add_argument("--detach_reverse_target", action="store_true",
                   help="variant: the reverse loss L_kd(t<-s) does not push the student")
    p.add_argument("--no_figures", action="store_true", help=f"do not write {TRAINING_CURVES_FILE} (and its PDF)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def check_train_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "img_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.warmup_epochs < 0:
        raise UserError(f"--warmup_epochs must be 0 or more, got {args.warmup_epochs}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    for flag in ("max_steps_per_epoch", "max_val_images", "checkin_every"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if not 0 < args.lr_decay <= 1:
        raise UserError(f"--lr_decay must be in (0, 1], got {args.lr_decay}")
    for flag in ("lr", "weight_decay", "prior_weight", "semantic_bias"):
        if not math.isfinite(getattr(args, flag)) or getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be a non-negative number, got {getattr(args, flag)}")


# ----------------------------------------------------------------------------------------------- test
def _default_said(text: str) -> str:
    """Help that states its own default: the formatter appends ``(default: ...)`` only to help without
    ``%(default)``, and ``%(default).0s`` prints nothing, so the default is shown once, in words."""
    return text + "%(default).0s"


def build_test_parser(setting: Setting) -> ArgumentParser:
    p = ArgumentParser(
        description=f"Zero-shot sketch-based image retrieval test on {setting.name} (SBKA). With no flags "
                    "this is the released test script (mode 2: one-to-many cluster matching).")
    p.add_argument("--resume_dir", default=setting.checkpoint_dir,
                   help=f"holds {FEATURES_FILE}, {BEST_CHECKPOINT_FILE} and receives the results")
    p.add_argument("--data_root", default=None,
                   help=_default_said(f"{setting.data_root_help} (default: the one stored in the checkpoint when "
                                      f"that folder still exists" + ("" if setting.custom else
                                                                     f", else {DEFAULT_DATA_ROOT}") + ")"))
    p.add_argument("--checkpoint", default=None,
                   help=_default_said(f"student checkpoint (default: <resume_dir>/{BEST_CHECKPOINT_FILE})"))
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
                   help=_default_said("fit the codewords on a seeded sample of this many gallery items "
                                      "(default: all of them)"))
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of the codeword fit, the seen-class draw and the example queries")
    p.add_argument("--val_max_queries", type=int, default=2000, help="cap on seen-class validation sketches")
    p.add_argument("--val_max_gallery", type=int, default=20000, help="cap on seen-class validation photos")
    p.add_argument("--batch_size", type=int, default=80, help="images per extraction batch")
    p.add_argument("--workers", type=int, default=min(4, usable_cores()), help="image loader workers")
    p.add_argument("--device", default=None,
                   help=_default_said("cpu, cuda, cuda:N (default: cuda when present, else cpu)"))
    p.add_argument("--amp", action="store_true", help="bf16 autocast for extraction on CUDA")
    p.add_argument("--channels_last", action="store_true", help="channels-last memory format for extraction")
    p.add_argument("--gpu_normalize", action="store_true",
                   help="image loaders send uint8; ToTensor/Normalize run on the device (the same values)")
    p.add_argument("--chunk", type=int, default=1024, help="queries per distance block (bounds memory)")
    p.add_argument("--label", default=None,
                   help=_default_said("name shown in the reports and figure titles (default: the setting, "
                                      f"{setting.name})"))
    p.add_argument("--kind", choices=RESULT_KINDS, default="run",
                   help=f"what {RESULTS_FILE} scores: a real run (counted by python -m retrieval.tables), or `make "
                        "demo`'s run / its untrained baseline (left out of the tables)")
    p.add_argument("--no_figures", action="store_true",
                   help=f"do not write {PR_CURVE_FILE} / {EXAMPLES_FILE} (nor their PDFs)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def check_test_args(args: argparse.Namespace) -> None:
    for flag in ("batch_size", "chunk", "val_max_queries", "val_max_gallery"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.gmm_max_samples is not None and args.gmm_max_samples < 2:
        raise UserError(f"--gmm_max_samples must be at least 2, got {args.gmm_max_samples}")

