"""``python -m engine.reproduce`` (``make reproduce``): the paper's table in one command, resumable, on every GPU.

One folder per (setting, seed), ``<runs>/<dataset>_<split>/seed<N>``. For each, the run-folder rules that the
scripts already follow decide what is left to do:

- training (``train_*.py`` as a subprocess): a fresh run when the folder has no checkpoint; ``--resume`` when
  it holds an unfinished run; nothing when the run is finished. A folder made with other flags is refused;
- testing (``test_*.py``): skipped when ``results.json`` is current, i.e. it scored features of the weights in
  ``model_best.pth.tar`` on the present zero lists with the test flags asked for now (engine.folder_checks);
- then ``retrieval.tables`` over every ``results.json`` under ``--runs``, with the published rows.

Independent runs go in parallel, one per GPU group (``--gpus``, ``--gpus_per_run``; ``CUDA_VISIBLE_DEVICES``
per run), one at a time on a CPU unless ``--jobs`` says otherwise. Each step's output goes to the run's
``reproduce.log``; the terminal gets a few lines per run and a summary. A failing run does not stop the others.
Rerunning the same command after any interruption continues where it stopped.
"""
from __future__ import annotations

import argparse
import math
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from data.registry import Setting, get_setting, published_settings, resolve_paths
from engine.folder_checks import previous_results, read_checkpoint, stale_reason, zero_lists
from engine.runs import MACHINE_FLAGS, MOVABLE_FLAGS, _shown, claim_savedir, cpu_cost, duration_text
from utils.checkpoint import load_checkpoint
from utils.cli import ArgumentParser
from utils.cpus import usable_cores
from utils.errors import UserError, run_cli
from utils.provenance import file_sha256, list_fingerprint, sidecar_path
from utils.run_files import BEST_CHECKPOINT_FILE, FEATURES_FILE, LAST_CHECKPOINT_FILE, RESULTS_FILE

ROOT = Path(__file__).resolve().parent.parent
LOG_FILE = "reproduce.log"
DEFAULT_RUNS = "checkpoint/reproduce"
# Flags this command sets for every run: typed as pass-through flags they would break the folder layout.
MANAGED = {"seed": "--seeds", "savedir": "--runs", "resume_dir": "--runs", "resume": "(decided per folder)",
           "overwrite": "(delete the folder to start it afresh)", "data_root": "--data_root",
           "zero_version": "--settings", "smoke": "--smoke", "device": "--gpus", "checkpoint": "(model_best)"}
# Flags both scripts have with different meanings: only through --train_args / --test_args.
AMBIGUOUS = ("batch_size",)
SMOKE_TEST_ARGS = ("--mode", "1")     # smoke data are too small for the released K sweep


# ----------------------------------------------------------------------------------------------- arguments
def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m engine.reproduce",
        description="Train and test every (setting, seed), resuming what is unfinished and skipping what is "
                    "done, then write the paper's table. Flags after `--` go to the training and/or test "
                    "scripts that have them (e.g. `-- --amp --channels_last --workers 8`).")
    published = [s.name for s in published_settings()]
    p.add_argument("--settings", nargs="+", default=published, metavar="SETTING",
                   help=f"settings to run: {', '.join(published)} (or sketchy_zeroshot1, ...; custom/zeroshot "
                        f"too); default: the paper's four")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds, one run folder each")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="folder of the run folders and of table.csv/.md/.tex")
    p.add_argument("--data_root", default="datasets", help="folder holding Sketchy/, TUBerlin/, QuickDraw/")
    p.add_argument("--gpus", default=None,
                   help="GPUs to use, e.g. 0,1,2,3, or 'cpu' (default: every visible GPU; the CPU when none)")
    p.add_argument("--gpus_per_run", type=int, default=1,
                   help="GPUs of one run; more than 1 runs each training under torchrun --nproc_per_node N")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (default: one per GPU group; on the CPU, 1)")
    p.add_argument("--smoke", action="store_true",
                   help="every training uses the --smoke preset (minutes on a CPU) and every test --mode 1; "
                        "flags passed through win")
    p.add_argument("--train_args", default="", metavar="'FLAGS'",
                   help="flags for every training command, in one quoted string (e.g. '--batch_size 420')")
    p.add_argument("--test_args", default="", metavar="'FLAGS'",
                   help="flags for every test command, in one quoted string (e.g. '--batch_size 256')")
    p.add_argument("--dry_run", action="store_true", help="print the plan (what each run will do and why), run nothing")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def setting_of(name: str) -> Setting:
    return get_setting(name.replace("_", "/", 1) if "/" not in name else name)


def folder_name(setting: Setting) -> str:
    return setting.name.replace("/", "_")


def flag_groups(tokens: Sequence[str], what: str) -> list[list[str]]:
    """``--a 1 2 --b`` -> ``[["--a", "1", "2"], ["--b"]]``."""
    groups: list[list[str]] = []
    for token in tokens:
        if token.startswith("--"):
            groups.append([token])
        elif groups:
            groups[-1].append(token)
        else:
            raise UserError(f"{what}: {token!r} is not a flag (flags start with --)")
    return groups


def dest_of(flag: str) -> str:
    return flag.split("=", 1)[0][2:]


def check_managed(groups: list[list[str]], what: str) -> None:
    for group in groups:
        dest = dest_of(group[0])
        if dest in MANAGED:
            raise UserError(f"{what}: {group[0].split('=', 1)[0]} is set by engine.reproduce for each run; use "
                            f"{MANAGED[dest]}")


@dataclass
class PassThrough:
    """The flags each script gets beyond the ones this command sets."""

    common: list[list[str]]    # after `--`: to whichever script has the flag
    train: list[str]
    test: list[str]

    used: set = field(default_factory=set)    # the flags after `--` that some script took

    def for_script(self, parser: ArgumentParser, extra: list[str]) -> list[str]:
        known = set(parser.option_strings())
        taken = [g for g in self.common if g[0].split("=", 1)[0] in known]
        self.used.update(g[0].split("=", 1)[0] for g in taken)
        return [t for g in taken for t in g] + extra

    def check_all_used(self, parsers: list[ArgumentParser]) -> None:
        for group in self.common:
            flag = group[0].split("=", 1)[0]
            if flag not in self.used:
                near = next((n for p in parsers if (n := p.suggest(flag))), None)
                hint = f" (did you mean {near}?)" if near else ""
                raise UserError(f"the flags after --: {flag} is not a flag of the training or test scripts of "
                                f"the settings asked for{hint}")


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, PassThrough]:
    argv = list(argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    groups = flag_groups(common, "the flags after --")
    check_managed(groups, "the flags after --")
    for group in groups:
        if dest_of(group[0]) in AMBIGUOUS:
            raise UserError(f"the flags after --: {group[0]} means one thing to the training scripts and another "
                            f"to the test scripts; give it in --train_args or --test_args")
    passed = PassThrough(groups, shlex.split(args.train_args), shlex.split(args.test_args))
    for flag, tokens in (("--train_args", passed.train), ("--test_args", passed.test)):
        check_managed(flag_groups(tokens, flag), flag)
    if args.gpus_per_run < 1:
        raise UserError(f"--gpus_per_run must be at least 1, got {args.gpus_per_run}")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))} names a seed twice")
    args.settings = list(dict.fromkeys(setting_of(s).name for s in args.settings))
    return args, passed


# ----------------------------------------------------------------------------------------------- devices
def visible_gpus() -> list[str]:
    """What ``CUDA_VISIBLE_DEVICES`` entries address every GPU this process sees."""
    import torch

    n = torch.cuda.device_count()
    inherited = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return inherited[:n] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(n)]


def device_groups(args: argparse.Namespace) -> list[Optional[list[str]]]:
    """The slots runs go to: GPU groups of --gpus_per_run, or None per CPU job."""
    if args.gpus is None:
        gpus = visible_gpus()
    elif args.gpus.strip().lower() in ("cpu", "none", ""):
        gpus = []
    else:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if not gpus:
        if args.gpus_per_run > 1:
            raise UserError(f"--gpus_per_run {args.gpus_per_run} needs GPUs, and there are none (--gpus)")
        return [None] * (args.jobs or 1)
    if len(gpus) < args.gpus_per_run:
        raise UserError(f"--gpus_per_run {args.gpus_per_run} needs at least that many GPUs; --gpus gives "
                        f"{len(gpus)} ({','.join(gpus)})")
    n = len(gpus) // args.gpus_per_run
    groups: list[Optional[list[str]]] = [gpus[i * args.gpus_per_run:(i + 1) * args.gpus_per_run] for i in range(n)]
    return groups[:args.jobs] if args.jobs else groups


def describe_devices(group: Optional[list[str]]) -> str:
    if group is None:
        return "CPU"
    return f"GPU{'s' if len(group) > 1 else ''} {','.join(group)}"


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class Run:
    setting: Setting
    seed: int
    folder: Path
    train_cmd: list[str] = field(default_factory=list)
    test_cmd: list[str] = field(default_factory=list)
    train: Optional[str] = None        # "train", "resume" or None
    test: bool = False
    why: str = ""
    epochs_left: int = 0
    estimate: str = ""
    error: Optional[str] = None        # refused before anything ran
    status: str = "not run"
    done_steps: list[str] = field(default_factory=list)
    last_line: str = ""

    @property
    def name(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"

    @property
    def log(self) -> Path:
        return self.folder / LOG_FILE

    def action(self) -> str:
        if self.error:
            return "fail"
        steps = [{"train": "train", "resume": "resume", None: ""}[self.train], "test" if self.test else ""]
        return " + ".join(s for s in steps if s) or "skip"


def flag_differences(stored: dict, fresh: argparse.Namespace) -> list[str]:
    """Run-shaping flags of a checkpoint's run that differ from the ones this command would start it with."""
    out = []
    for dest, value in sorted(stored.items()):
        if dest in MACHINE_FLAGS or dest in MOVABLE_FLAGS or not hasattr(fresh, dest):
            continue
        if getattr(fresh, dest) != value:
            out.append(f"--{dest} {_shown(getattr(fresh, dest))} (the run has {_shown(value)})")
    return out


def plan_training(run: Run, train_argv: list[str]) -> tuple[argparse.Namespace, Optional[dict]]:
    """Decide train / resume / nothing for ``run``; returns the run's flags and its checkpoint (or None)."""
    from engine.train import parse_run_args

    dataset = run.setting.name.split("/")[0]
    _, fresh, _ = parse_run_args(dataset, train_argv)
    path = run.folder / LAST_CHECKPOINT_FILE
    if not path.is_file():
        claim_savedir(run.folder, overwrite=False)      # refuses a folder with another run's files
        run.train, run.why, run.epochs_left = "train", "no checkpoint yet", fresh.epochs
        return fresh, None
    ckpt = load_checkpoint(path)
    stored = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    differences = flag_differences(stored, fresh)
    if differences:
        raise UserError(f"{path} holds a run started with other flags than this command gives: "
                        f"{'; '.join(differences)}; give the same flags, or another --runs")
    done, epochs = int(ckpt.get("epoch", 0)), int(stored.get("epochs", fresh.epochs))
    if done < epochs:
        run.train, run.why, run.epochs_left = "resume", f"unfinished run: resume from epoch {done} of {epochs}", \
            epochs - done
    else:
        run.why = f"training finished ({epochs} epochs)"
    return fresh, ckpt


def results_outdated(run: Run, test_args: argparse.Namespace) -> Optional[str]:
    """Why the folder's ``results.json`` is not the score of its ``model_best`` with these test flags, or None."""
    results = previous_results(run.folder)
    if not results:
        return f"no {RESULTS_FILE}"
    best = run.folder / BEST_CHECKPOINT_FILE
    if not best.is_file():
        return f"no {BEST_CHECKPOINT_FILE}"
    provenance = results.get("provenance") if isinstance(results.get("provenance"), dict) else {}
    record = provenance.get("features")
    if results.get("setting") != run.setting.name or not isinstance(record, dict):
        return f"{RESULTS_FILE} does not record the features it scored"
    try:
        paths = resolve_paths(run.setting, test_args.data_root)
    except UserError:
        paths = None
    reason = stale_reason(record, read_checkpoint(best), zero_lists(paths) if paths else None,
                          f"the features scored in {RESULTS_FILE}")
    if reason:
        return reason
    features = run.folder / FEATURES_FILE
    if features.is_file() and file_sha256(features) != provenance.get("features_sha256"):
        return f"{FEATURES_FILE} changed after {RESULTS_FILE} was written"
    if (provenance.get("mode"), provenance.get("seed")) != (test_args.mode, test_args.seed):
        return f"{RESULTS_FILE} was made with --mode {provenance.get('mode')} --seed {provenance.get('seed')}"
    if test_args.mode == 2:
        otm = provenance.get("one_to_many") or {}
        asked = {"quantizer": {"quantizer": test_args.quantizer, "gmm_covariance": test_args.gmm_covariance,
                               "gmm_max_samples": test_args.gmm_max_samples}, "alpha": test_args.alpha,
                 "grid": [[m, k] for m in test_args.pq_m for k in test_args.pq_k]}
        if any(otm.get(k) != v for k, v in asked.items()):
            return f"{RESULTS_FILE}'s one-to-many sweep was made with other flags"
    return None


def training_estimate(run: Run, fresh: argparse.Namespace, on_cpu: bool, threads: int) -> str:
    """Epochs left, and on a CPU a time from engine.runs.cpu_cost (the list sizes give the steps)."""
    if not on_cpu:
        return f"{run.epochs_left} epoch(s) to train"
    paths = resolve_paths(run.setting, fresh.data_root)
    sketches = list_fingerprint(paths.list_file("sketch_train"))["lines"]
    photos = list_fingerprint(paths.list_file("photo_train"))["lines"]
    n_sk, n_ph = run.setting.split_batch(fresh.batch_size)
    steps = min(math.ceil(sketches / max(1, n_sk)), math.ceil(photos / max(1, n_ph)))
    if fresh.max_steps_per_epoch:
        steps = min(steps, fresh.max_steps_per_epoch)
    val = paths.list_file("sketch_test")
    n_val = list_fingerprint(val)["lines"] if val is not None and run.setting.val_list_by_default else \
        int(sketches * fresh.val_fraction)
    n_val = min(n_val, fresh.max_val_images or n_val)
    seconds, memory_gb, _ = cpu_cost(fresh.model, fresh.img_size, fresh.batch_size, steps, run.epochs_left, n_val,
                                     threads)
    return f"{run.epochs_left} epoch(s) of {steps} steps, about {duration_text(seconds)} and {memory_gb:.1f} GB on CPU"


def python_cmd(script: str, argv: list[str], gpus_per_run: int) -> list[str]:
    launcher = [sys.executable] if gpus_per_run == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                           "--standalone", f"--nproc_per_node={gpus_per_run}"]
    return [*launcher, str(ROOT / script), *argv]


def plan_run(args: argparse.Namespace, passed: PassThrough, setting: Setting, seed: int, on_cpu: bool,
             threads: int) -> Run:
    from engine.flags import build_test_parser as test_parser, build_train_parser as train_parser

    dataset, version = setting.name.split("/")
    run = Run(setting, seed, Path(args.runs) / folder_name(setting) / f"seed{seed}")
    trainer_flags = train_parser(setting, dataset)
    versions = ["--zero_version", version] if "--zero_version" in trainer_flags.option_strings() else []
    train_argv = [*versions, "--savedir", str(run.folder), "--seed", str(seed), "--data_root", args.data_root,
                  *(["--smoke"] if args.smoke else []), *passed.for_script(trainer_flags, passed.train)]
    test_argv = ["--resume_dir", str(run.folder), "--data_root", args.data_root,
                 *(SMOKE_TEST_ARGS if args.smoke else ()), *passed.for_script(test_parser(setting), passed.test)]
    try:
        resolve_paths(setting, args.data_root)
        fresh, _ = plan_training(run, train_argv)
        test_args = test_parser(setting).parse_args(test_argv)
        outdated = "after training" if run.train else results_outdated(run, test_args)
        run.test = outdated is not None
        run.why += f"; test: {outdated}" if outdated else f"; {RESULTS_FILE} is current"
        features = run.folder / FEATURES_FILE
        if run.test and features.is_file() and not sidecar_path(features).is_file():
            test_argv.append("--extract")   # a features file of unknown origin in a run folder: made again
        if run.train:
            run.estimate = training_estimate(run, fresh, on_cpu, threads)
    except UserError as exc:
        run.error = str(exc)
    run.train_cmd = python_cmd(setting.train_script, [*train_argv, *(["--resume"] if run.train == "resume" else [])],
                               args.gpus_per_run)
    run.test_cmd = python_cmd(setting.test_script, test_argv, 1)
    return run


def script_parsers(settings: list[str]) -> list[ArgumentParser]:
    from engine.flags import build_test_parser as test_parser, build_train_parser as train_parser

    return [p for s in map(get_setting, settings) for p in (train_parser(s, s.name.split("/")[0]), test_parser(s))]


def shown(cmd: list[str]) -> str:
    """A command as a user would type it (scripts relative to the repository when run from there)."""
    parts = ["python" if c == sys.executable else c for c in cmd]
    parts = [str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT) + os.sep) and Path.cwd() == ROOT else c
             for c in parts]
    if parts[:3] == ["python", "-m", "torch.distributed.run"]:
        parts = ["torchrun", *parts[3:]]
    return shlex.join(parts)


# ----------------------------------------------------------------------------------------------- running
class Console:
    """Lines from several runs at once, whole."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)


def last_line_of(text: str) -> str:
    text = text.rstrip("\n").rsplit("\n", 1)[-1]
    return text.rsplit("\r", 1)[-1].strip()


class Executor:
    def __init__(self, runs: list[Run], groups: list[Optional[list[str]]], console: Console):
        self.runs, self.console = runs, console
        self.free: queue.Queue = queue.Queue()
        for g in groups:
            self.free.put(g)
        self.n_slots = len(groups)
        self.on_cpu = groups[0] is None
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def env(self, group: Optional[list[str]]) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["CUDA_VISIBLE_DEVICES"] = "" if group is None else ",".join(group)
        if group is None and self.n_slots > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // self.n_slots))
        return env

    def step(self, run: Run, what: str, cmd: list[str], group: Optional[list[str]]) -> int:
        start = time.perf_counter()
        self.console.say(f"{run.name}: {what} started on {describe_devices(group)} (log: {run.log})")
        run.folder.mkdir(parents=True, exist_ok=True)
        with open(run.log, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {what} on {describe_devices(group)}: "
                      f"{shown(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=self.env(group), errors="replace")
            with self.lock:
                self.children.add(proc)
            for line in proc.stdout:
                log.write(line)
                log.flush()
                text = last_line_of(line)
                if text:
                    run.last_line = text
                if text.startswith("epoch ") and text.split(" ", 2)[1].rstrip(":").isdigit() and ": loss" in text:
                    self.console.say(f"{run.name}: {text}")
            rc = proc.wait()
            with self.lock:
                self.children.discard(proc)
            log.write(f"=== {what} ended with exit status {rc} after {time.perf_counter() - start:.0f} s\n")
        self.console.say(f"{run.name}: {what} {'finished' if rc == 0 else f'FAILED (exit status {rc})'} in "
                         f"{time.perf_counter() - start:.0f} s")
        return rc

    def execute(self, run: Run) -> None:
        if self.stopping:
            return
        group = self.free.get()
        try:
            steps = ([(run.train, run.train_cmd)] if run.train else []) + ([("test", run.test_cmd)] if run.test else [])
            for what, cmd in steps:
                if self.stopping:
                    return
                rc = self.step(run, what, cmd, group)
                if rc:
                    run.status = "interrupted" if self.stopping or rc in (130, -signal.SIGINT) else "failed"
                    return
                run.done_steps.append(what)
            run.status = "resumed" if run.train == "resume" else "done"
        finally:
            self.free.put(group)

    def run_all(self, runs: list[Run]) -> None:
        pool = ThreadPoolExecutor(max_workers=self.n_slots)
        futures = [pool.submit(self.execute, r) for r in runs]
        try:
            for f in futures:
                while not f.done():
                    time.sleep(0.2)
                f.result()
        except KeyboardInterrupt:
            self.stopping = True
            with self.lock:
                for proc in self.children:   # a terminal's Ctrl-C reached them already; a `kill -INT` did not
                    proc.send_signal(signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


# ----------------------------------------------------------------------------------------------- main
def print_plan(runs: list[Run], args: argparse.Namespace, groups: list[Optional[list[str]]], console: Console) -> None:
    where = (f"on the CPU, {len(groups)} at a time" if groups[0] is None else
             f"on GPUs {' | '.join(','.join(g) for g in groups)} ({len(groups)} at a time"
             f"{', torchrun per training' if args.gpus_per_run > 1 else ''})")
    console.say(f"plan: {len(runs)} run(s) into {args.runs}, {where}; then the table "
                f"({Path(args.runs) / 'table.csv'}, .md, .tex)")
    for run in runs:
        if run.error:
            console.say(f"  {run.name}: fail: {run.error}")
            continue
        estimate = f" [{run.estimate}]" if run.estimate else ""
        console.say(f"  {run.name}: {run.action()} ({run.why}){estimate}")
        if run.train:
            console.say(f"      {shown(run.train_cmd)}")
        if run.test:
            console.say(f"      {shown(run.test_cmd)}")


def summary_line(run: Run) -> str:
    if run.error:
        return f"{run.name}  failed   refused before running: {run.error}"
    if run.status == "done" and not run.train:
        status = "done (test only)"
    elif not run.train and not run.test:
        return f"{run.name}  skipped  {run.why}"
    else:
        status = run.status
    return f"{run.name}  {status}  {run.last_line or '(no output)'}  (log: {run.log})"


def write_table(runs_dir: Path, console: Console) -> bool:
    from retrieval import tables

    try:
        tables.main(["--runs", str(runs_dir), "--with_published"])
    except UserError as exc:
        console.say(f"table not written: {exc}")
        return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, passed = parse(list(sys.argv[1:] if argv is None else argv))
    groups = device_groups(args)
    on_cpu = groups[0] is None
    threads = max(1, usable_cores() // len(groups)) if on_cpu else 1
    if on_cpu and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    console = Console()
    runs = [plan_run(args, passed, get_setting(s), seed, on_cpu, threads) for s in args.settings for seed in args.seeds]
    passed.check_all_used(script_parsers(args.settings))
    print_plan(runs, args, groups, console)
    if args.dry_run:
        return 1 if any(r.error for r in runs) else 0
    work = [r for r in runs if not r.error and (r.train or r.test)]
    executor = Executor(runs, groups, console)
    interrupted = False
    try:
        executor.run_all(work)
    except KeyboardInterrupt:
        interrupted = True
    console.say("\nsummary:")
    for run in runs:
        if not run.error and (run.train or run.test) and run.status == "not run" and interrupted:
            run.status = "interrupted"
        console.say("  " + summary_line(run))
    if interrupted:
        console.say("interrupted: rerun the same command to continue where it stopped")
        return 130
    failed = [r for r in runs if r.error or r.status == "failed"]
    if not any(Path(args.runs).rglob(RESULTS_FILE)):
        console.say("table not written: no run has results yet")
    else:
        console.say("")
        write_table(Path(args.runs), console)
    if failed:
        console.say(f"{len(failed)} of {len(runs)} run(s) failed: see their lines above and their logs")
        return 1
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> None:
    code = main(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_cli(cli)
