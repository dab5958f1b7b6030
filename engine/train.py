"""SBKA training: warm-up (student only) then bidirectional teacher-student alignment (METHOD.md 3-4).

``main(dataset, argv)`` is what the three ``train_*.py`` scripts call; every default comes from the
setting's registry entry, so no flags reproduce the released code's run.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from data.cid_mask import load_cid_mask
from data.dataset import ListDataset, SeededAugmentation, holdout_indices
from data.lists import read_class_file
from data.registry import Setting, SettingPaths, get_setting, resolve_paths
from data.transforms import test_transform, to_model_input, train_transform
from engine.flags import (CHECKIN_EVERY, LR_DECAY, build_train_parser, check_train_args, choose_setting, settings_of,
                          smoke_preset)
from engine.runs import (TRAINING_LIST_ROLES, batch_message, claim_savedir, cpu_estimate, restore_run_args,
                         resume_command, stored_args, student_checkpoint, student_config, write_args_file)
from engine.training_curves import plot_training_curves
from losses import LOSS_TERM_LABELS, SBKAObjective
from models import SBKAStudent, SBKATeacher, build_student, build_teacher, check_model_name
from models.sbka import warn_random_weights, weights_source
from utils.checkpoint import atomic_save, atomic_write, load_checkpoint
from utils.cli import explicit_flags
from utils.cpus import affinity_text, loader_workers
from utils.distributed import (DeferredFailure, DistInfo, GlobalBatchSampler, SharedFailure, all_reduce_sum,
                               average_gradients, cleanup, collate_or_none, explain_failure, init_distributed)
from utils import precision
from utils.errors import UserError
from utils.progress import progress, shows_soon
from utils.streams import on_side_stream
from utils.provenance import list_fingerprint, new_run_id, project_version, state_dict_sha256
from utils.run_files import BEST_CHECKPOINT_FILE, LAST_CHECKPOINT_FILE, LOG_FILE, TRAINING_CURVES_FILE


# ----------------------------------------------------------------------------------------------- arguments
def parse_run_args(dataset: str, argv: Sequence[str]) -> tuple[Setting, argparse.Namespace, dict[str, Any]]:
    """The flags of a run: defaults, then ``--smoke``'s preset, then (``--resume``) the run's own flags, with
    what was typed winning where it may. Also returns the typed flags (``{dest: value}``)."""
    setting = choose_setting(dataset, argv)
    parser = build_train_parser(setting, dataset)
    args = parser.parse_args(argv)
    explicit = explicit_flags(parser, argv)
    if args.smoke:
        for key, value in smoke_preset(setting).items():
            if key not in explicit:
                setattr(args, key, value)
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --savedir and --overwrite replaces it: give only one")
    if args.resume:
        restore_run_args(args, explicit, parser)
        if hasattr(args, "zero_version"):   # the run's own split
            setting = settings_of(dataset)[args.zero_version]
    if args.data_root is None:
        raise UserError(f"--data_root ROOT is needed for {setting.name}: {setting.data_root_help}")
    check_train_args(args)
    check_model_name(args.model, "--model")
    if args.teacher_model is not None:
        check_model_name(args.teacher_model, "--teacher_model")
    return setting, args, explicit


def lr_at(base: float, epoch: int, epochs: int, decay: float = LR_DECAY) -> float:
    """The released schedule: ``base * 0.001 ** (epoch / epochs)``, set at the start of each epoch."""
    return base * decay ** (epoch / epochs)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class TrainData:
    sketches: Dataset
    photos: Dataset
    val: Optional[Dataset]
    val_source: str
    n_seen: int
    class_names: list[str]


def build_data(setting: Setting, paths: SettingPaths, img_size: int, val_fraction: float,
               augment: str = "released", val_list: bool = False, normalize: bool = True) -> TrainData:
    """Training sketches/photos and the validation sketches of one setting.

    Validation: the split's sketch_test-role list when the setting uses it by default (Sketchy, TU-Berlin)
    or ``val_list`` asks for it (QuickDraw, ``--val_list``); else a per-class hold-out of ``val_fraction``
    of the training sketches; with 0, none (QuickDraw's default, the released run: the last epoch is the model).
    ``augment``: ``released`` (the original code's flip/scale/rotation/translation) or ``none``.
    """
    names = read_class_file(paths.class_file)
    n_seen = len(names)
    cls_file = paths.class_file
    tf = train_transform(img_size, normalize) if augment == "released" else test_transform(img_size, normalize)
    sketches = ListDataset.from_list(paths.root, paths.list_file("sketch_train"), n_seen, tf, cls_file)
    photos = ListDataset.from_list(paths.root, paths.list_file("photo_train"), n_seen, tf, cls_file)
    test_list = paths.list_file("sketch_test")
    if val_list and val_fraction > 0:
        raise UserError(f"--val_list and --val_fraction {val_fraction:g} name two validation sets: give one of them")
    if val_list and test_list is None:
        names_tried = ", ".join(scheme["sketch_test"] for scheme in setting.naming_schemes)
        raise UserError(f"--val_list: {paths.split} has no sketch_test-role list (looked for {names_tried}); "
                        "drop --val_list, or use --val_fraction 0.05 for a hold-out of the training sketches")
    if test_list is not None and (setting.val_list_by_default or val_list):
        val = ListDataset.from_list(paths.root, test_list, n_seen, test_transform(img_size, normalize), cls_file)
        source = f"{test_list.name} ({len(val)} seen-class sketches)"
    elif val_fraction > 0:
        keep, held = holdout_indices(sketches.labels, val_fraction)
        val = sketches.subset(held)
        val.transform = test_transform(img_size, normalize)
        sketches = sketches.subset(keep)
        why = "the split has no *_test list" if setting.val_list_by_default else "--val_fraction"
        source = f"per-class hold-out of {val_fraction:.0%} of the training sketches ({len(val)} sketches; {why})"
    else:
        unused = f"; {test_list.name} is not used without --val_list" if test_list is not None else ""
        val, source = None, f"none (--val_fraction 0): all training sketches train, the last epoch is the model{unused}"
    return TrainData(sketches, photos, val, source, n_seen, names)


def make_loader(ds: Dataset, global_batch: int, info: DistInfo, seed: int, workers: int, pin: bool,
                shuffle: bool = True) -> tuple[DataLoader, GlobalBatchSampler]:
    """Shuffled loader of this process's share of each global batch (GlobalBatchSampler: one process draws the
    released batches; several split each of them). An empty share comes as None.

    Each image's augmentation in an epoch draws from its own generator (SeededAugmentation, seeded from
    ``seed``, the epoch and the image), so the workers live across epochs (``persistent_workers``: no fork per
    epoch) and the draws depend neither on the worker count nor on the process count."""
    sampler = GlobalBatchSampler(len(ds), global_batch, info.world_size, info.rank, seed, shuffle, keyed=True)
    loader = DataLoader(SeededAugmentation(ds, seed), batch_sampler=sampler, num_workers=workers, pin_memory=pin,
                        collate_fn=collate_or_none, persistent_workers=workers > 0)
    return loader, sampler


# ----------------------------------------------------------------------------------------------- state
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a checkpoint's generators; CUDA ones only for the devices this machine has.

    A run saved on an 8-GPU node holds 8 CUDA states; on a machine with fewer (or none) the extra ones are
    skipped. Nothing is lost: a run resumes at an epoch boundary, and :func:`seed_epoch` reseeds every
    generator (CPU and all CUDA devices) from (seed, epoch, rank) before the epoch's first draw.
    """
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Every random draw of an epoch follows from (seed, epoch, rank), so a resumed run matches."""
    s = (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63)
    torch.manual_seed(s)
    random.seed(s)


def copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as source:
        atomic_write(dst, lambda fh: shutil.copyfileobj(source, fh))


def rewrite_log(log_path: Path, keep_before_epoch: int) -> None:
    """On resume, drop log lines of epochs that will be run again."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) < keep_before_epoch:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    atomic_write(log_path, lambda fh: fh.write("".join(k + "\n" for k in kept).encode("utf-8")))


# ----------------------------------------------------------------------------------------------- steps
@dataclass
class StepResult:
    total: float
    terms: dict[str, float]


class NonFiniteLoss(UserError):
    pass


class FiniteWatch:
    """Notes the first step of an epoch whose loss is not finite, without waiting for the device.

    ``record`` keeps, on the device, the step and the loss terms of the first non-finite total; ``check``
    reads them (one synchronisation) and stops the run. The trainer checks at its check-ins (every
    ``--checkin_every`` steps and at the end of the epoch) instead of after each forward pass, so the GPU is
    not drained every step; the steps in between only change the weights in memory: checkpoints are written
    after the epoch, so the last good one on disk is kept either way.
    """

    def __init__(self, checkpoint: Path):
        self.checkpoint = checkpoint
        self.first_bad: Optional[torch.Tensor] = None
        self.bad_terms: Optional[torch.Tensor] = None
        self.names: list[str] = []

    def record(self, step: int, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in terms.values()])
        if self.first_bad is None:                          # one watch per epoch: one set of terms
            self.names = list(terms)
            self.first_bad = torch.full((), -1, dtype=torch.long, device=total.device)
            self.bad_terms = torch.zeros_like(values)
        newly_bad = (self.first_bad < 0) & ~torch.isfinite(total.detach())
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_terms = torch.where(newly_bad, values, self.bad_terms)

    def check(self, epoch: int) -> None:
        if self.first_bad is None or int(self.first_bad) < 0:
            return
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.names, self.bad_terms.tolist()))
        raise NonFiniteLoss(
            f"non-finite loss at epoch {epoch}, step {int(self.first_bad)} ({values}); training stopped and "
            f"{self.checkpoint} (the last good state) was kept: lower --lr or check the data")


@dataclass(frozen=True)
class BatchShare:
    """The global batch a process's share belongs to.

    Every loss term is a sum over the process's images divided by a GLOBAL count (all images for L_ce and
    L_prior, all photos for the two L_kd) over ``world_size``, because DDP averages gradients over processes:
    the mean over processes is then the term on the whole batch, whatever each process's share.
    """
    images: int               # sketches + photos of the global batch
    photos: int
    world_size: int = 1

    def denominators(self) -> dict[str, float]:
        return {"samples": self.images / self.world_size, "photos": self.photos / self.world_size}


def step_losses(student: torch.nn.Module, teacher: SBKATeacher, objective: SBKAObjective, x: torch.Tensor,
                y: torch.Tensor, is_photo: torch.Tensor, cid_mask: Optional[torch.Tensor], bidirectional: bool,
                autocast, share: Optional[BatchShare] = None, photo_rows: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The forward passes of one step and the objective on them: (total, terms).

    Warm-up: the teacher runs without a graph (nothing of it learns); bidirectional: with one, so the
    objective's reverse term reaches its head. ``share``: the global batch ``x`` is a share of (the terms are
    normalised by its counts); None: ``x`` is the whole batch. ``photo_rows``: the rows of ``x`` that are
    photos; the teacher then runs on those only (both distillation terms use photos only; the sketch rows get
    logits 0, which their weight 0 removes), the same losses and gradients for about a third less teacher work
    on Sketchy.
    """
    with autocast:
        student_outputs = student(x)
        teacher_input = x if photo_rows is None else x.index_select(0, photo_rows)
        with torch.enable_grad() if bidirectional else torch.no_grad():
            teacher_logits = teacher(teacher_input)
    if photo_rows is not None:
        teacher_logits = teacher_logits.new_zeros(len(x), teacher_logits.shape[1]).index_copy(
            0, photo_rows, teacher_logits)
    return objective(student_outputs, teacher_logits, y, is_photo, cid_mask, bidirectional,
                     **(share.denominators() if share is not None else {}))


def compile_forward(module: torch.nn.Module, backend: str) -> Any:
    """``--compile``: ``module`` compiled for fixed shapes (the trainer runs other shapes eagerly)."""
    return torch.compile(module, backend=backend, dynamic=False)


def initial_student(model: str, n_seen: int, pretrained: Optional[str], classifier_std: float,
                    seed: int, img_size: int = 224) -> SBKAStudent:
    """The student a run starts from: its new classifier (and a random backbone) depend on ``seed`` only."""
    torch.manual_seed(seed)
    return build_student(model, n_seen, pretrained, classifier_std, img_size)


class Trainer:
    """Holds models, optimisers and loaders of one run; ``fit`` runs the epochs."""

    def __init__(self, args: argparse.Namespace, setting: Setting, info: DistInfo, device: torch.device,
                 demo: bool = False):
        self.args, self.setting, self.info, self.device = args, setting, info, device
        self.demo = demo        # the demo said what it is once: no warnings about its random weights or CPU time
        self.savedir = Path(args.savedir)
        self.is_main = info.is_main
        with SharedFailure(info):    # a missing file or a bad list on one machine stops every process
            student = self.build(args, setting, info, device)
        self.student_module: SBKAStudent = student
        self.student = self.distributed(student) if info.enabled else student
        self.compiled = self.compile() if getattr(args, "compile", None) else None
        self.compiled_shape: Optional[tuple[int, ...]] = None
        self.teacher_lr = args.teacher_lr if args.teacher_lr is not None else args.lr * setting.teacher_lr_scale
        self.opt_student = torch.optim.Adam(student.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.opt_teacher = torch.optim.Adam(self.teacher.head_parameters(), lr=self.teacher_lr,
                                            weight_decay=args.weight_decay)
        self.start_epoch, self.best_acc1 = 0, 0.0
        self.use_amp = bool(args.amp and device.type == "cuda")
        if device.type == "cuda":
            precision.released_training_numerics()
        if getattr(args, "deterministic", False):
            precision.deterministic_training()
        # steps between check-ins: errors of any process and non-finite losses (a small CPU all-reduce; on CUDA
        # reading the loss watch is a device synchronisation)
        self.checkin_every = getattr(args, "checkin_every", None) or CHECKIN_EVERY
        if args.amp and device.type != "cuda" and self.is_main:
            print("note: --amp has effect on CUDA only; running in fp32", file=sys.stderr)

    def distributed(self, student: SBKAStudent) -> DistributedDataParallel:
        """DDP around the student, built once it has its device and memory format. Its gradients are views of
        DDP's all-reduce buckets, in place from the first step (zeros given before DDP is built, kept by
        ``zero_grad(set_to_none=False)``): a convolution's weight gradient may come with other strides in its
        size-1 dimensions than the weight (depthwise ``[C, 1, 7, 7]``, pointwise ``[C, C', 1, 1]``), which DDP
        would otherwise copy into its bucket every step, with a warning."""
        for p in student.parameters():
            p.grad = torch.zeros_like(p)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=device_ids, gradient_as_bucket_view=True)

    def compile(self) -> tuple[Any, Any]:
        """``--compile``: the student's (DDP's, under several processes: DDP's graph breaks keep its all-reduce
        overlapping backward) and the teacher's forward compiled for the step's batch shape; a batch of another
        shape (the epoch's last, shorter one; an empty share) runs eagerly instead of compiling again."""
        return compile_forward(self.student, self.args.compile), compile_forward(self.teacher, self.args.compile)

    def forward_modules(self, x: torch.Tensor) -> tuple[Any, Any]:
        """(student, teacher) for a batch ``x``: compiled ones for the shape of the first batch, else eager."""
        if self.compiled is None or len(x) == 0:
            return self.student, self.teacher
        if self.compiled_shape is None:
            self.compiled_shape = tuple(x.shape)
        return self.compiled if tuple(x.shape) == self.compiled_shape else (self.student, self.teacher)

    def build(self, args: argparse.Namespace, setting: Setting, info: DistInfo, device: torch.device) -> SBKAStudent:
        """Data, loaders, student and teacher of the run (every process; nothing collective yet)."""
        # a fresh run: the earlier run's files, removed once this run has its first checkpoint (--overwrite)
        self.earlier_files = [] if args.resume else claim_savedir(self.savedir, args.overwrite)
        self.run_id = new_run_id()          # a resume takes the run's own id from its checkpoint
        self.epochs_done = 0
        paths = resolve_paths(setting, args.data_root)
        self.lists = {role: list_fingerprint(paths.list_file(role)) for role in TRAINING_LIST_ROLES
                      if paths.list_file(role) is not None}
        self.data = build_data(setting, paths, args.img_size, args.val_fraction, args.augment,
                               getattr(args, "val_list", False), normalize=not args.gpu_normalize)
        self.cid_mask = (load_cid_mask(paths.cid_mask_file, self.data.n_seen).to(device)
                         if setting.use_cid_mask else None)
        self.objective = SBKAObjective(args.prior_weight, args.semantic_bias, args.detach_reverse_target)

        # the released global batch on any process count: each process takes its share of every global batch
        n_sk, n_ph = setting.split_batch(args.batch_size)
        self.batch_split = (n_sk, n_ph)
        pin = device.type == "cuda"
        self.workers = loader_workers(n_sk, n_ph, info.local_world_size, args.workers)
        if self.is_main:
            print(self.workers.describe(chosen=args.workers is not None), flush=True)
        self.sketch_loader, self.sketch_sampler = make_loader(self.data.sketches, n_sk, info, args.seed,
                                                              self.workers.sketches, pin)
        self.photo_loader, self.photo_sampler = make_loader(self.data.photos, n_ph, info, args.seed + 1,
                                                            self.workers.photos, pin)
        self.val_loader, self.n_val = None, 0
        if self.data.val is not None:
            n_all = len(self.data.val)
            cap = min(n_all, args.max_val_images or n_all)
            chosen = [i * n_all // cap for i in range(cap)]      # evenly spread: every class keeps its share
            self.n_val = len(chosen)
            shard = Subset(self.data.val, chosen[info.rank::info.world_size])
            self.val_loader = DataLoader(shard, batch_size=max(1, n_ph // info.world_size),  # the loaders rest then
                                         num_workers=self.workers.total, pin_memory=pin,
                                         persistent_workers=self.workers.total > 0)

        teacher_pretrained = self.teacher_pretrained
        if "none" in (str(args.pretrained).lower(), str(teacher_pretrained).lower()) and not self.demo:
            warn_random_weights()
        student = initial_student(args.model, self.data.n_seen, args.pretrained, args.classifier_init_std, args.seed,
                                  args.img_size)
        torch.manual_seed(args.seed + 1)
        self.teacher = build_teacher(self.teacher_model, teacher_pretrained, args.img_size)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        student.to(device, memory_format=self.memory_format)
        self.teacher.to(device, memory_format=self.memory_format)
        self.teacher.eval()  # LayerNorm only and drop path 0: train/eval behave alike; eval keeps it explicit
        return student

    # -- checkpointing
    @property
    def teacher_model(self) -> str:
        return self.args.teacher_model or self.args.model

    @property
    def teacher_pretrained(self) -> str:
        return self.args.pretrained if self.args.teacher_pretrained is None else self.args.teacher_pretrained

    def config(self) -> dict[str, Any]:
        return student_config(self.setting, self.args.model, self.data.n_seen, self.args.img_size,
                              self.student_module.feature_dim, self.teacher_model)

    def provenance(self, next_epoch: int, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What made the checkpoint (utils/provenance.py): the contract the test scripts read."""
        a = self.args
        return {"run_id": self.run_id, "setting": self.setting.name, "model": a.model, "img_size": a.img_size,
                "n_seen": self.data.n_seen, "seed": a.seed, "epoch": next_epoch,
                "student_sha256": state_dict_sha256(state_dict), "lists": self.lists,
                "version": project_version()}

    def state(self, next_epoch: int) -> dict[str, Any]:
        state_dict = self.student_module.state_dict()
        return {
            **student_checkpoint(state_dict, self.config(), next_epoch, self.best_acc1),
            "teacher_head": self.teacher.head().state_dict(),
            "optimizer": self.opt_student.state_dict(),
            "optimizer_1": self.opt_teacher.state_dict(),
            "rng": rng_state(),
            "args": stored_args(self.args),
            "provenance": self.provenance(next_epoch, state_dict),
        }

    def resume(self) -> None:
        path = self.savedir / LAST_CHECKPOINT_FILE
        if not path.is_file():
            raise UserError(f"--resume: {path} does not exist (nothing to resume; drop --resume to start afresh)")
        ckpt = load_checkpoint(path)
        cfg = ckpt.get("config", {})
        mine = self.config()
        for key in ("setting", "model", "n_seen", "img_size"):
            if cfg.get(key) != mine[key]:
                raise UserError(f"--resume: {path} was written with {key}={cfg.get(key)!r}, this run has "
                                f"{mine[key]!r}; use another --savedir or the same flags")
        try:
            self.student_module.load_state_dict(ckpt["state_dict"])
            self.teacher.head().load_state_dict(ckpt["teacher_head"])
            self.opt_student.load_state_dict(ckpt["optimizer"])
            self.opt_teacher.load_state_dict(ckpt["optimizer_1"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"--resume: {path} does not match this model ({str(exc).splitlines()[0]})") from None
        provenance = ckpt.get("provenance") or {}
        changed = [f"{role} ({fp['file']}: {fp['lines']} lines, the run had {provenance['lists'][role]['lines']})"
                   for role, fp in self.lists.items()
                   if role in provenance.get("lists", {}) and fp["sha256"] != provenance["lists"][role]["sha256"]]
        if changed:
            raise UserError(f"--resume: the training lists differ from the ones the run in {path} began with: "
                            f"{', '.join(changed)}; resume it on its own data (--data_root) or start a new run")
        self.run_id = provenance.get("run_id", self.run_id)
        self.start_epoch = self.epochs_done = int(ckpt["epoch"])
        self.best_acc1 = float(ckpt.get("best_acc1", 0.0))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        if self.is_main:
            print(f"resumed from {path}: continuing at epoch {self.start_epoch}")
            rewrite_log(self.savedir / LOG_FILE, self.start_epoch)
            write_args_file(self.savedir, self.setting, self.args)

    def save(self, epoch: int, val_top1: Optional[float]) -> None:
        """Checkpoint after ``epoch``; copy it to model_best when top-1 beats every earlier epoch (warm-up
        epochs included, as in the released code) and the epoch is past warm-up. A run that ends without
        any model_best (warm-up held the best top-1) gets its last checkpoint as model_best."""
        bidirectional = epoch >= self.args.warmup_epochs
        improved = val_top1 is not None and val_top1 > self.best_acc1
        if improved:
            self.best_acc1 = val_top1
        improved = improved and bidirectional
        with SharedFailure(self.info):          # process 0 writes; a failed write stops every process
            if self.is_main:
                self.write_checkpoints(epoch, improved, bidirectional)
        self.epochs_done = epoch + 1

    def write_checkpoints(self, epoch: int, improved: bool, bidirectional: bool) -> None:
        """model_best first, then checkpoint.pth.tar: a run stopped between the two writes (a kill, a full disk)
        has the previous epoch as its last checkpoint and redoes this epoch on --resume, whereas the other order
        could leave a finished checkpoint beside a missing or stale model_best. An --overwrite run's first
        checkpoint is the exception: it comes first, as nothing of the earlier run goes before it."""
        ckpt, best = self.savedir / LAST_CHECKPOINT_FILE, self.savedir / BEST_CHECKPOINT_FILE
        last = epoch == self.args.epochs - 1
        earlier_best = any(f.name == BEST_CHECKPOINT_FILE for f in self.earlier_files)
        to_best = improved or (bidirectional and self.data.val is None)
        if not to_best and last and (earlier_best or not best.exists()):
            print(f"note: no epoch after warm-up beat the warm-up's best top-1; {BEST_CHECKPOINT_FILE} = the last "
                  "epoch")
            to_best = True
        if to_best and not self.earlier_files:
            atomic_save(self.state(epoch + 1), best)
            copy_atomic(best, ckpt)
        else:
            atomic_save(self.state(epoch + 1), ckpt)
            self.remove_earlier_run()
            if to_best:
                copy_atomic(ckpt, best)
        if epoch == self.start_epoch and not self.args.resume:   # --overwrite keeps the earlier run's till now
            write_args_file(self.savedir, self.setting, self.args)

    def ensure_best(self) -> None:
        """A finished run without model_best (stopped between an --overwrite run's first writes) gets its last
        checkpoint, the rule of a run whose warm-up held the best top-1."""
        ckpt, best = self.savedir / LAST_CHECKPOINT_FILE, self.savedir / BEST_CHECKPOINT_FILE
        if ckpt.is_file() and not best.exists():
            print(f"note: {best.name} was missing; it is the last epoch's checkpoint")
            copy_atomic(ckpt, best)

    def remove_earlier_run(self) -> None:
        """--overwrite: the earlier run's files go once this run has written its first checkpoint."""
        if not self.earlier_files:
            return
        for f in self.earlier_files:
            if f.name != LAST_CHECKPOINT_FILE:   # that one this run has just replaced
                f.unlink(missing_ok=True)
        print(f"note: --overwrite: this run has written its first checkpoint, so the earlier run's files in "
              f"{self.savedir} are gone ({', '.join(f.name for f in self.earlier_files)})")
        self.earlier_files = []

    # -- one epoch
    def set_lr(self, epoch: int) -> tuple[float, float]:
        a = self.args
        lr_s, lr_t = lr_at(a.lr, epoch, a.epochs, a.lr_decay), lr_at(self.teacher_lr, epoch, a.epochs, a.lr_decay)
        for g in self.opt_student.param_groups:
            g["lr"] = lr_s
        for g in self.opt_teacher.param_groups:
            g["lr"] = lr_t
        return lr_s, lr_t

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, BatchShare, torch.Tensor]]:
        """This process's share of each step's sketches and photos, concatenated and shuffled, with the global
        counts the loss terms are normalised by; ends with the shorter loader.

        Each half goes to the device as it comes from its loader (pinned memory on CUDA, so the copies are
        asynchronous), and the concatenation and shuffle run there: the main process never copies a whole
        batch on the CPU. The shuffle draws ``torch.randperm`` from the CPU generator, so a seed gives the same
        order on every device. With more processes than a half's global count, a share of it is empty. The
        rows that hold photos come last, found from the CPU permutation (no device synchronisation). On CUDA each
        batch is made on a side stream (utils/streams.py), so its copy overlaps the step before.
        """
        return on_side_stream(self.device_batches(), self.device)

    def device_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, BatchShare, torch.Tensor]]:
        sizes = zip(self.sketch_sampler.global_sizes(), self.photo_sampler.global_sizes())
        pinned = self.device.type == "cuda"

        def to_device(t: torch.Tensor) -> torch.Tensor:   # from pinned memory, so the copy does not wait
            return (t.pin_memory() if pinned else t).to(self.device, non_blocking=True)

        for sketches, photos, (n_sk, n_ph) in zip(self.sketch_loader, self.photo_loader, sizes):
            sk, sk_y = sketches if sketches is not None else self.empty_half()
            ph, ph_y = photos if photos is not None else self.empty_half()
            x = torch.cat([to_model_input(sk, self.device, torch.contiguous_format, self.args.gpu_normalize),
                           to_model_input(ph, self.device, torch.contiguous_format, self.args.gpu_normalize)])
            y = to_device(torch.cat([sk_y, ph_y]))
            is_photo = to_device(torch.cat([torch.zeros(len(sk)), torch.ones(len(ph))]))
            order = torch.randperm(len(x))
            photo_rows = to_device(torch.nonzero(order >= len(sk)).squeeze(1))
            perm = to_device(order)
            share = BatchShare(images=n_sk + n_ph, photos=n_ph, world_size=self.info.world_size)
            yield x[perm].contiguous(memory_format=self.memory_format), y[perm], is_photo[perm], share, photo_rows

    def empty_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BatchShare, torch.Tensor]:
        """The share of a process whose data or forward pass failed, until the next check-in: no images, so it
        adds nothing to any loss term or gradient but still meets the others' collectives."""
        size = self.args.img_size
        x = torch.empty(0, 3, size, size, device=self.device).contiguous(memory_format=self.memory_format)
        rows = torch.empty(0, dtype=torch.long, device=self.device)
        share = BatchShare(images=sum(self.batch_split), photos=self.batch_split[1], world_size=self.info.world_size)
        return x, rows, torch.empty(0, device=self.device), share, rows

    def empty_half(self) -> tuple[torch.Tensor, torch.Tensor]:
        """An empty share of one half, shaped as the loader's batches (uint8 with --gpu_normalize)."""
        size = self.args.img_size
        dtype = torch.uint8 if self.args.gpu_normalize else torch.float32
        return torch.empty(0, 3, size, size, dtype=dtype), torch.empty(0, dtype=torch.long)

    def steps_per_epoch(self) -> int:
        n = min(len(self.sketch_loader), len(self.photo_loader))
        return min(n, self.args.max_steps_per_epoch) if self.args.max_steps_per_epoch else n

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        args = self.args
        bidirectional = epoch >= args.warmup_epochs
        self.student.train()
        self.teacher.eval()
        n_steps = self.steps_per_epoch()
        if n_steps == 0:
            raise UserError("an epoch had no steps: a training list is empty")
        autocast = precision.autocast(self.device, self.use_amp)
        sums: dict[str, torch.Tensor] = {}
        images = 0
        start = time.perf_counter()
        bar = progress(total=n_steps, desc=f"epoch {epoch} {'bidirectional' if bidirectional else 'warm-up'}",
                       unit="step", disable=not self.is_main, file=sys.stdout)
        watch = FiniteWatch(self.savedir / LAST_CHECKPOINT_FILE)
        failure = DeferredFailure(self.info)
        batches = self.batches()
        for step in range(n_steps):
            if step and step % self.checkin_every == 0:
                self.check_in(watch, epoch, failure)
                self.show_postfix(bar, sums, step, images, start)
            batch = self.next_batch(batches, failure)
            total, terms = self.train_step(batch, bidirectional, autocast, failure)
            watch.record(step, total, terms)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            sums["loss_total"] = sums.get("loss_total", 0.0) + total.detach()
            images += batch[3].images
            if step == n_steps - 1:          # the epoch's last check-in, before the bar's last line
                self.check_in(watch, epoch, failure)
                self.show_postfix(bar, sums, step + 1, images, start)
            bar.update(1)
        bar.close()
        # each process's terms are world_size x its share of the global batch's terms: their mean is the term
        stats = torch.stack(list(sums.values())).float() / n_steps
        stats = all_reduce_sum(stats.to(self.device), self.info) / self.info.world_size
        elapsed = time.perf_counter() - start
        out = {k: float(v) for k, v in zip(sums.keys(), stats.tolist())}
        out.update(steps=n_steps, time_s=elapsed, images_per_s=images / max(elapsed, 1e-9))
        return out

    def check_in(self, watch: FiniteWatch, epoch: int, failure: DeferredFailure) -> None:
        """Every process meets here every ``--checkin_every`` steps and at the epoch's end: an error held by any
        process, or a non-finite loss on any, stops every process with its message."""
        with SharedFailure(self.info):
            failure.raise_held()
            watch.check(epoch)

    def show_postfix(self, bar: Any, sums: dict[str, torch.Tensor], steps: int, images: int, start: float) -> None:
        """The running mean of each loss term on the bar, read from the device (one synchronisation, right after
        a check-in) only when the bar will show it."""
        if not self.is_main or not sums or not shows_soon(bar, self.checkin_every):
            return
        means = (torch.stack(list(sums.values())).float() / steps).tolist()
        elapsed = time.perf_counter() - start
        bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in zip(sums, means)}
                        | {"img/s": f"{images / max(elapsed, 1e-9):.1f}"})

    def next_batch(self, batches: Iterator, failure: DeferredFailure) -> tuple:
        """The next share, or an empty one once this process has failed (its data may be what failed)."""
        if failure.error is not None:
            return self.empty_batch()
        try:
            return next(batches)
        except Exception as exc:  # noqa: BLE001 - held till the check-in (raised at once by a single process)
            failure.record(exc)
            return self.empty_batch()

    def train_step(self, batch: tuple, bidirectional: bool, autocast, failure: DeferredFailure
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimisation step on this process's share: losses, one backward, the student's step, and in the
        bidirectional phase the teacher head's averaged gradient and step.

        A forward pass that fails (e.g. out of memory) has run no collective yet: its error is held for the
        check-in and the step runs again on an empty share, so the others' gradient all-reduce is met. A failure
        later in the step (inside backward, whose all-reduces may be half done) cannot be met that way: it ends
        this process, which tells the others through the process group's store (see ``main``).
        """
        x, y, is_photo, share, photo_rows = batch
        student, teacher = self.forward_modules(x)
        try:
            total, terms = step_losses(student, teacher, self.objective, x, y, is_photo, self.cid_mask,
                                       bidirectional, autocast, share, photo_rows)
        except Exception as exc:  # noqa: BLE001 - held till the check-in (raised at once by a single process)
            failure.record(exc)
            x, y, is_photo, share, photo_rows = self.empty_batch()
            total, terms = step_losses(self.student, self.teacher, self.objective, x, y, is_photo, self.cid_mask,
                                       bidirectional, autocast, share, photo_rows)
        # under DDP the gradients are its buckets' views: zeroed in place, never dropped (see distributed)
        self.opt_student.zero_grad(set_to_none=not self.info.enabled)
        self.opt_teacher.zero_grad(set_to_none=True)
        total.backward()
        self.opt_student.step()
        if bidirectional:
            average_gradients(self.teacher.head_parameters(), self.info)
            self.opt_teacher.step()
        return total, terms

    @torch.no_grad()
    def validate(self) -> Optional[float]:
        """Top-1 (%) of the seen-class logits on the validation sketches, summed over ranks."""
        if self.val_loader is None:
            return None
        self.student.eval()
        counts = torch.zeros(2, device=self.device)
        autocast = precision.autocast(self.device, self.use_amp)
        with SharedFailure(self.info):          # an unreadable validation image on one process stops all
            for x, y in progress(self.val_loader, desc="validate", unit="batch", disable=not self.is_main,
                                 leave=False, file=sys.stdout):
                x = to_model_input(x, self.device, self.memory_format, self.args.gpu_normalize)
                y = y.to(self.device, non_blocking=True)
                with autocast:
                    seen_logits = self.student_module(x)[0]
                counts[0] += (seen_logits.argmax(1) == y).sum()
                counts[1] += len(y)
        all_reduce_sum(counts, self.info)
        return float(100.0 * counts[0] / counts[1].clamp_min(1))

    # -- the run
    def describe(self) -> None:
        sys.stdout.write(f"process {self.info.rank} of {self.info.world_size}: {affinity_text()}, device "
                         f"{self.device}\n")          # one write: the processes' lines do not interleave
        sys.stdout.flush()
        if not self.is_main:
            return
        a, d = self.args, self.data
        print(f"SBKA training on {self.setting.name}: {len(d.sketches)} sketches, {len(d.photos)} photos, "
              f"{d.n_seen} seen classes; {batch_message(self.setting, a.batch_size)}, over "
              f"{self.info.world_size} process(es); {self.steps_per_epoch()} steps/epoch")
        print(f"student {a.model} ({weights_source(a.model, a.pretrained)}), teacher {self.teacher_model} "
              f"({weights_source(self.teacher_model, self.teacher_pretrained)}), {self.student_module.feature_dim}-d "
              f"features, "
              f"{a.epochs} epochs, warm-up epochs 0..{a.warmup_epochs - 1}, lr {a.lr:g} (teacher {self.teacher_lr:g}), "
              f"device {self.device}{', bf16 autocast' if self.use_amp else ''}"
              f"{', channels_last' if a.channels_last else ''}; validation: {d.val_source}"
              f"{f', {self.n_val} of them used (--max_val_images)' if d.val is not None and self.n_val < len(d.val) else ''}"
              f"; run dir {self.savedir}")
        if self.device.type == "cpu" and not self.demo:
            estimate = cpu_estimate(a.model, a.img_size, a.batch_size, self.steps_per_epoch(),
                                    a.epochs - self.start_epoch, self.n_val, torch.get_num_threads())
            print(estimate, file=sys.stderr if estimate.startswith("warning") else sys.stdout, flush=True)

    def fit(self) -> None:
        args = self.args
        with SharedFailure(self.info):
            if self.is_main:
                self.savedir.mkdir(parents=True, exist_ok=True)
        if args.resume:
            with SharedFailure(self.info):      # e.g. a checkpoint missing on one machine's copy
                self.resume()
        self.describe()
        for epoch in range(self.start_epoch, args.epochs):
            seed_epoch(args.seed, epoch, self.info.rank)
            self.sketch_sampler.set_epoch(epoch)
            self.photo_sampler.set_epoch(epoch)
            lr_s, lr_t = self.set_lr(epoch)
            stats = self.train_one_epoch(epoch)
            top1 = self.validate()
            self.save(epoch, top1)
            with SharedFailure(self.info):      # also the end-of-epoch barrier
                if self.is_main:
                    self.log_epoch(epoch, lr_s, lr_t, stats, top1)
        if self.is_main:
            self.ensure_best()
            print(f"done: {self.savedir / LAST_CHECKPOINT_FILE}, {self.savedir / BEST_CHECKPOINT_FILE}, "
                  f"{self.savedir / LOG_FILE}")

    def log_epoch(self, epoch: int, lr_s: float, lr_t: float, stats: dict[str, float], top1: Optional[float]) -> None:
        record = {"epoch": epoch, "phase": "bidirectional" if epoch >= self.args.warmup_epochs else "warmup",
                  "lr": lr_s, "teacher_lr": lr_t, "loss_reverse": None, **stats, "val_top1_pct": top1,
                  "best_top1_pct": self.best_acc1}
        with open(self.savedir / LOG_FILE, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        top = f"{top1:.2f}%" if top1 is not None else "n/a"
        print(f"epoch {epoch}: loss {stats['loss_total']:.4f}, val top-1 {top}, "
              f"{stats['images_per_s']:.1f} img/s, {stats['time_s']:.1f}s", flush=True)
        self.figures()

    def figures(self) -> None:
        if self.args.no_figures:
            return
        plot_training_curves(self.savedir / LOG_FILE, self.savedir / TRAINING_CURVES_FILE,
                             self.objective.term_weights(), LOSS_TERM_LABELS, self.data.n_seen)


def interrupted_message(dataset: str, args: argparse.Namespace, explicit: dict[str, Any],
                        trainer: Optional[Trainer], info: DistInfo) -> str:
    """Ctrl-C: one line, with the exact command that continues the run when it has a checkpoint."""
    ckpt = Path(args.savedir) / LAST_CHECKPOINT_FILE
    if not args.resume and (trainer is None or trainer.epochs_done == 0):
        kept = " (the earlier run's files are untouched)" if args.overwrite else ""
        return (f"interrupted before this run's first checkpoint: nothing was written{kept}; "
                f"start it again with the same command")
    done = f" ({trainer.epochs_done} epoch(s) done)" if trainer is not None else ""
    return f"interrupted: {ckpt} holds the run{done}; resume it with: " + resume_command(
        dataset, args, explicit, info)


def main(dataset: str, argv: Optional[Sequence[str]] = None, *, demo: bool = False) -> None:
    """Entry point of ``train_<dataset>.py``. ``demo``: `make demo`'s run, which said at its start what it is
    (random weights, a CPU, minutes): no random-weights warning, no CPU estimate."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setting, args, explicit = parse_run_args(dataset, argv)
    info, device = init_distributed(args.device, force=args.force_process_group)
    trainer = None
    failed = True
    try:
        if not info.is_main:
            warnings.filterwarnings("ignore")
        trainer = Trainer(args, setting, info, device, demo=demo)
        trainer.fit()
        failed = False
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_message(dataset, args, explicit, trainer, info)) from None
    except Exception as exc:  # noqa: BLE001 - named after the peer whose failure broke this process's collectives
        explained = explain_failure(info, exc)
        if explained is exc:
            raise
        raise explained from None
    finally:
        cleanup(info, failed)      # after a failure: aborted, never a destroy that waits for a failed peer


__all__ = ["main", "lr_at", "step_losses", "Trainer", "get_setting"]
