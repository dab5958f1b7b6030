"""A run folder holds one run: what a run writes, how ``--resume`` restores it exactly, what ``--overwrite``
replaces and when, the ``--smoke`` preset, and what a run tells before it starts (batch split, CPU estimate).

The training loop (engine/train.py) calls these; they decide nothing about the method.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from data.registry import Setting, train_script_of
from engine.flags import MACHINE_FLAGS, MOVABLE_FLAGS, batch_rule
from models.defaults import DEFAULT_MODEL
from utils.checkpoint import atomic_write, load_checkpoint
from utils.errors import UserError
from utils.provenance import project_version
from utils.run_files import ARGS_FILE, LAST_CHECKPOINT_FILE, RUN_FILE_PATTERNS, RUN_FILES

if TYPE_CHECKING:   # annotations only: --resume's planning (engine/reproduce.py) runs without torch
    from utils.distributed import DistInfo

TRAINING_LIST_ROLES = ("sketch_train", "photo_train", "sketch_test")   # the lists a run reads (fingerprinted)
# The CPU estimate (cpu_estimate). ConvNeXt-V2 GFLOPs at 224 px (the ConvNeXt-V2 paper). Measured on this
# project's shared 2-core machine, in CPU seconds (other jobs inflate those less than wall time):
# - one training step image of convnextv2_tiny at 224 px: 3.0 CPU s (bench/bench_train.py --device cpu
#   --batch_size 4, 1 vs 3 steps per phase); peak RSS 2.33 GB at batch 4, 4.47 GB at batch 12;
# - a floor per image that does not shrink with the model (decoding, augmentation, Python): 0.25 CPU s
#   (the --smoke run on the demo tree: 95 CPU s for 240 training + 48 validation images, start-up removed).
CPU_GFLOPS = {"convnextv2_atto": 0.55, "convnextv2_femto": 0.78, "convnextv2_pico": 1.37, "convnextv2_nano": 2.45,
              "convnextv2_tiny": 4.47, "convnextv2_base": 15.4, "convnextv2_large": 34.4, "convnextv2_huge": 115.0}
CPU_S_PER_IMAGE = 3.0
CPU_S_PER_IMAGE_FLOOR = 0.25
CPU_GB_PER_IMAGE = 0.26
CPU_BASE_GB = 1.3


# ----------------------------------------------------------------------------------------------- presets and messages
def batch_message(setting: Setting, batch_size: int) -> str:
    """``batch 20 -> 6 sketches + 12 photos; 2 images unused: Sketchy takes B//3 sketches and 2*(B//3) photos``."""
    n_sk, n_ph = setting.split_batch(batch_size)
    unused = batch_size - n_sk - n_ph
    rest = f"; {unused} image{'s' if unused > 1 else ''} unused" if unused else ""
    return f"batch {batch_size} -> {n_sk} sketches + {n_ph} photos{rest}: {batch_rule(setting)}"


def cpu_cost(model: str, img_size: int, batch_size: int, steps: int, epochs: int, n_val: int,
             threads: int) -> tuple[float, float, float]:
    """(seconds, GB of memory, seconds per image) of a CPU run, roughly (see ``cpu_estimate``)."""
    area = (img_size / 224) ** 2
    flops = CPU_GFLOPS.get(model.split(".")[0], CPU_GFLOPS[DEFAULT_MODEL]) / CPU_GFLOPS[DEFAULT_MODEL]
    per_image = (CPU_S_PER_IMAGE * flops * area + CPU_S_PER_IMAGE_FLOOR) / max(1, threads)
    seconds = per_image * (steps * batch_size + n_val / 3) * epochs
    memory_gb = CPU_BASE_GB * max(flops, 0.25) + CPU_GB_PER_IMAGE * flops * area * batch_size
    return seconds, memory_gb, per_image


def duration_text(seconds: float) -> str:
    """``12 min``, ``2.5 h``, ``40 h``."""
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours >= 10 else f"{hours:.1f} h" if hours >= 1 else f"{max(1, round(seconds / 60))} min"


def cpu_estimate(model: str, img_size: int, batch_size: int, steps: int, epochs: int, n_val: int,
                 threads: int) -> str:
    """A rough time and memory estimate of a CPU run (a ``warning:`` line when it is long or large).

    Time: images (steps x batch x epochs, plus validation at a third of a training image) x a per-image cost:
    the CPU seconds measured for convnextv2_tiny at 224 px scaled by the model's GFLOPs and the input area, plus
    a fixed floor, spread over the threads. Memory: the measured peak-RSS growth per image of the batch, scaled
    the same way, plus a fixed part. Constants and how they were measured: above ``CPU_GFLOPS``.
    """
    seconds, memory_gb, per_image = cpu_cost(model, img_size, batch_size, steps, epochs, n_val, threads)
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        ram_gb = float("inf")
    text = (f"on CPU: {steps} steps x batch {batch_size} x {epochs} epoch(s) at ~{per_image:.2g} s/image on "
            f"{threads} thread(s) -> about {duration_text(seconds)}, about {memory_gb:.1f} GB of memory (rough: "
            f"per-image costs measured for {DEFAULT_MODEL} at 224 px, scaled by GFLOPs and input area)")
    if seconds / 3600 > 0.5 or memory_gb > 0.8 * ram_gb:
        ram = f"; this machine has {ram_gb:.0f} GB" if ram_gb != float("inf") else ""
        return (f"warning: this is a long or large run {text}{ram}; use a GPU, or try --smoke first "
                f"(Ctrl-C stops it and prints how to resume)")
    return f"estimate {text}"


# ----------------------------------------------------------------------------------------------- resume and run folders
def stored_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of a run as the checkpoint stores them (``args``) and ``args.json`` shows them."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}


def write_args_file(savedir: Path, setting: Setting, args: argparse.Namespace) -> None:
    """``args.json``: the resolved flags, the setting and the project version, sorted, one per line."""
    record = {"setting": setting.name, "version": project_version(), "args": stored_args(args)}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(savedir / ARGS_FILE, lambda fh: fh.write(text.encode("utf-8")))


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "unset" if value is None else str(value)


def restore_run_args(args: argparse.Namespace, explicit: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """``--resume``: every flag that shapes the run comes from its checkpoint's ``args``; a flag typed now that
    differs is refused, naming every difference."""
    path = Path(args.savedir) / LAST_CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"--resume: {path} does not exist (nothing to resume; drop --resume to start afresh)")
    stored = load_checkpoint(path).get("args") or {}
    differences = []
    for dest, value in stored.items():
        if dest in MACHINE_FLAGS or not hasattr(args, dest):
            continue
        if dest not in explicit:
            setattr(args, dest, value)
        elif explicit[dest] != value and dest not in MOVABLE_FLAGS:
            differences.append(f"--{dest} {_shown(explicit[dest])} (the run has {_shown(value)})")
    for dest, value in explicit.items():   # flags newer than the checkpoint: the run had their default
        if dest not in stored and dest not in MACHINE_FLAGS + MOVABLE_FLAGS and value != parser.get_default(dest):
            differences.append(f"--{dest} {_shown(value)} (the run has {_shown(parser.get_default(dest))})")
    if differences:
        changeable = ", ".join("--" + f for f in MACHINE_FLAGS[:5] + MOVABLE_FLAGS)
        raise UserError(f"--resume: the run in {path} was started with other flags: {'; '.join(differences)}; "
                        f"drop them to continue it exactly as it began (only {changeable} may change), or "
                        f"start a new run in another --savedir")


def resume_command(dataset: str, args: argparse.Namespace, explicit: dict[str, Any], info: DistInfo) -> str:
    """The command that continues this run (the run's own flags come back from its checkpoint), launched as it
    was: python, torchrun on one machine, or torchrun on every machine of a multi-node run."""
    if info.world_size == 1:
        launcher = ["python"]
    elif info.nnodes == 1:
        launcher = ["torchrun", "--standalone", f"--nproc_per_node={info.local_world_size}"]
    else:
        launcher = ["torchrun", f"--nnodes={info.nnodes}", f"--nproc_per_node={info.local_world_size}",
                    "--rdzv_backend=c10d", "--rdzv_endpoint=HOST:PORT"]
    cmd = [*launcher, train_script_of(dataset), "--resume", "--savedir", str(args.savedir)]
    for dest in ("data_root", "device", "workers", "amp", "channels_last", "no_figures", "force_process_group"):
        if dest in explicit:
            value = explicit[dest]
            if value is True:
                cmd.append(f"--{dest}")
            elif value is not False:
                cmd += [f"--{dest}", str(value)]
    where = (" (on every machine, with the rendezvous HOST:PORT the run was started with)" if info.nnodes > 1
             else "")
    return shlex.join(cmd) + where


def earlier_run_files(savedir: Path) -> list[Path]:
    """The files of an earlier run (and of testing it) in ``savedir``."""
    found = [savedir / name for name in RUN_FILES if (savedir / name).is_file()]
    for pattern in RUN_FILE_PATTERNS:
        found += sorted(savedir.glob(pattern))
    return found


def claim_savedir(savedir: Path, overwrite: bool) -> list[Path]:
    """A fresh run's folder must not hold another run's files, unless ``--overwrite``: then they are returned,
    to be removed once the new run has written its first checkpoint (nothing is deleted before)."""
    found = earlier_run_files(savedir)
    if found and not overwrite:
        raise UserError(f"--savedir {savedir} already holds another run's files ({', '.join(p.name for p in found)}): "
                        f"continue that run with --resume, replace it with --overwrite (its files are removed only "
                        f"once the new run has written its first checkpoint), or choose another --savedir")
    return found


# ----------------------------------------------------------------------------------------------- checkpoint layout
def student_config(setting: Setting, model: str, n_seen: int, img_size: int, feature_dim: int,
                   teacher_model: Optional[str] = None) -> dict[str, Any]:
    """A checkpoint's ``config``: what rebuilds its student (models.student_from_checkpoint) and what it was for."""
    return {"setting": setting.name, "model": model, "teacher_model": teacher_model or model, "n_seen": n_seen,
            "img_size": img_size, "feature_dim": feature_dim}


def student_checkpoint(state_dict: dict, config: dict[str, Any], epoch: int, best_acc1: float = 0.0) -> dict[str, Any]:
    """The part of every checkpoint that the test scripts and the app read; training adds its optimiser, RNG,
    flags and provenance to it. ``epoch`` is the epoch a resumed run starts with."""
    return {"epoch": epoch, "state_dict": state_dict, "best_acc1": best_acc1, "config": config}
