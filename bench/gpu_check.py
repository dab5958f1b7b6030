"""One prepared GPU check: training steps, numerics, loaders, end to end, extraction and evaluation, measured.

    python bench/gpu_check.py --out gpu_run            # on one H100/H200: <= 8 minutes, no network
    python bench/gpu_check.py --out /tmp/smoke --smoke # CPU, tiny sizes (what CI runs)

Writes ``gpu_report.json`` and ``gpu_report.md`` into ``--out`` after every section; a failing section is
recorded and the next one runs. Every loop is sized by a time budget (``--budget_s`` for the whole run), so
the run ends in time on any card. It generates its own data (a public-layout Sketchy tree of 256-px JPEG
photos and PNG sketches, list lines repeated up to the real zeroshot1 sizes) and uses random weights unless
``--pretrained`` names the official checkpoint. The rows reuse the project's code: ``engine.train``
(losses, loaders, the trainer through torchrun), ``engine.extract``, ``retrieval`` (RetrievalProblem,
metrics, codeword fit) and ``bench/bench_train.py`` / ``bench/bench_metrics.py``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import utils  # noqa: E402, F401 - sets OpenMP up before torch loads (utils/runtime.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_metrics import class_structured  # noqa: E402
from bench_train import TrainStep, sync, synthetic_batch, time_steps  # noqa: E402
from gpu_report import Report, Section  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.cpus import usable_cores  # noqa: E402
from utils.precision import allow_tf32, exact_float32, restore_tf32, tf32_flags, tf32_off  # noqa: E402

SETTING = "sketchy/zeroshot1"
# METHOD.md section 1 (Sketchy Ext, zeroshot1) and section 4 (20 epochs, warm-up epochs 0..9, 489 steps of 210)
REAL_LISTS = {"sketch_train": 55_252, "photo_train": 68_401, "sketch_test": 5_000,
              "sketch_zero": 15_229, "photo_zero": 17_101}
RELEASED_RUN = {"epochs": 20, "warmup_epochs": 10, "steps": 489, "batch": 210}
QUICKDRAW = (92_291, 54_151, 30)
GOAL_SPEEDUP, GOAL_LOSS_REL, GOAL_RUN_MIN, GOAL_EXTRACT, GOAL_EVAL_S, GOAL_EVAL_DIFF = 2.5, 0.01, 20.0, 5000, 5.0, 1e-6


@dataclass
class Plan:
    """Sizes and time budgets (seconds) of one run."""

    model: str = "convnextv2_tiny"
    img_size: int = 224
    n_sketch: int = 70
    n_photo: int = 140
    n_seen: int = 100
    image_px: int = 256                 # generated images
    per_class: int = 100                # generated images per class and modality
    lists: dict = field(default_factory=lambda: dict(REAL_LISTS))
    train_warmup: int = 3
    train_min_steps: int = 2
    train_s: float = 10.0
    compile_backend: str = "inductor"
    compile_timeout_s: float = 90.0
    profile_steps: int = 3
    loader_s: float = 10.0
    per_core_s: float = 3.0
    e2e_steps_s: float = 40.0            # both epochs' training steps together
    e2e_timeout_s: float = 120.0
    extract_s: float = 10.0
    extract_batch: int = 256
    eval_sizes: tuple = QUICKDRAW
    eval_dim: int = 768
    eval_chunks: tuple = (1024, 4096)
    eval_cpu_s: float = 20.0
    eval_cpu_piece: int = 1024
    pq: tuple = (2, 30)
    fit_timeout_s: float = 40.0
    fit_fallback_samples: int = 10_000
    eval_mode2_cpu_s: float = 10.0
    total_s: float = 420.0


def batch_holder(sketch_loader, photo_loader, device: torch.device, gpu_normalize: bool,
                 sketch_sizes: list[int], photo_sizes: list[int]) -> SimpleNamespace:
    """What ``Trainer.batches`` reads from a one-process trainer: its two loaders with their global batch sizes,
    device, memory format and flag."""
    from utils.distributed import DistInfo

    from engine.train import Trainer

    holder = SimpleNamespace(sketch_loader=sketch_loader, photo_loader=photo_loader, device=device,
                             sketch_sampler=SimpleNamespace(global_sizes=lambda: sketch_sizes),
                             photo_sampler=SimpleNamespace(global_sizes=lambda: photo_sizes), info=DistInfo(),
                             memory_format=torch.channels_last, args=SimpleNamespace(gpu_normalize=gpu_normalize))
    holder.device_batches = lambda: Trainer.device_batches(holder)
    holder.empty_half = lambda: Trainer.empty_half(holder)
    return holder


def smoke_plan() -> Plan:
    return Plan(model="convnextv2_atto", img_size=32, n_sketch=3, n_photo=6, n_seen=8, image_px=64, per_class=4,
                lists={"sketch_train": 40, "photo_train": 60, "sketch_test": 9, "sketch_zero": 20, "photo_zero": 24},
                train_warmup=0, train_min_steps=1, train_s=0.3, compile_backend="eager", compile_timeout_s=60.0, profile_steps=1,
                loader_s=0.5, per_core_s=0.3, e2e_steps_s=1.0, e2e_timeout_s=90.0, extract_s=1.0, extract_batch=8,
                eval_sizes=(300, 400, 6), eval_dim=32, eval_chunks=(64,), eval_cpu_s=1.0, eval_cpu_piece=128,
                pq=(2, 3), fit_timeout_s=30.0, fit_fallback_samples=200, eval_mode2_cpu_s=1.0, total_s=600.0)


class Budget:
    """The run's deadline; ``cap`` trims a planned budget to what is left after a reserve for later work."""

    def __init__(self, total_s: float):
        self.end = time.perf_counter() + total_s

    def left(self) -> float:
        return self.end - time.perf_counter()

    def cap(self, planned: float, reserve: float = 0.0) -> float:
        return max(0.0, min(planned, self.left() - reserve))


# ----------------------------------------------------------------------------------------------- helpers
def cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def sync(device: torch.device) -> None:
    if cuda(device):
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if cuda(device):
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if cuda(device) else None


def release(device: torch.device) -> None:
    gc.collect()
    if cuda(device):
        torch.cuda.empty_cache()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


@contextmanager
def one_thread():
    """Per-image work as a DataLoader worker does it: torch on one thread (workers get 1 intra-op thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- data
def repeat_list(path: Path, n: int) -> int:
    """Rewrite a list file with its lines cycled to ``n`` lines (same images, real list length)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    path.write_text("".join(lines[i % len(lines)] + "\n" for i in range(n)))
    return len(lines)


def make_tree(work: Path, plan: Plan) -> tuple[Path, dict]:
    """The generated Sketchy tree (data root) and what it holds."""
    from data.demo import generate_demo_dataset
    from data.registry import get_setting, resolve_paths

    data_root = work / "data"
    start = time.perf_counter()
    generate_demo_dataset(data_root, seed=0, sketches_per_class=plan.per_class + max(2, plan.per_class // 5),
                          photos_per_class=plan.per_class, size=plan.image_px, force=True,
                          zero_per_class=plan.per_class, workers=usable_cores())
    paths = resolve_paths(get_setting(SETTING), data_root)
    info = {"generate_s": time.perf_counter() - start, "image_px": plan.image_px}
    for role, n in plan.lists.items():
        info[f"{role}_distinct"] = repeat_list(paths.list_file(role), n)
        info[f"{role}_lines"] = n
    return data_root, info


def real_images(data_root: Path, plan: Plan) -> torch.Tensor:
    """``n_sketch`` training sketches then ``n_photo`` photos through the released augmentation."""
    from data.dataset import ListDataset
    from data.registry import get_setting, resolve_paths
    from data.transforms import train_transform

    paths = resolve_paths(get_setting(SETTING), data_root)
    tf = train_transform(plan.img_size)
    torch.manual_seed(0)
    out = []
    for role, n in (("sketch_train", plan.n_sketch), ("photo_train", plan.n_photo)):
        ds = ListDataset.from_list(paths.root, paths.list_file(role), transform=tf)
        with one_thread():
            out += [ds[i % len(ds)][0] for i in range(n)]
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------- train
TRAIN_CONFIGS = {
    "fp32 (released recipe)": dict(amp=False, channels_last=False, compile=False),
    "bf16 autocast (--amp)": dict(amp=True, channels_last=False, compile=False),
    "bf16 + channels_last": dict(amp=True, channels_last=True, compile=False),
    "bf16 + channels_last + torch.compile": dict(amp=True, channels_last=True, compile=True),
}


def train_row(name: str, cfg: dict, plan: Plan, images: torch.Tensor, device: torch.device, budget_s: float,
              pretrained: Optional[str]) -> dict[str, Any]:
    """Throughput of the bidirectional step under one configuration (warm-up steps excluded)."""
    release(device)
    reset_peak(device)
    ts = TrainStep(plan.model, plan.n_seen, device, cfg["amp"], cfg["channels_last"],
                   plan.compile_backend if cfg["compile"] else None, pretrained)
    batch = synthetic_batch(plan.n_sketch, plan.n_photo, plan.img_size, plan.n_seen, device, images=images)
    timing = time_steps(lambda: ts.step(batch, True), device, plan.train_warmup, plan.train_min_steps, budget_s)
    row = {"config": name, "img_s": timing["steps"] * len(batch) / timing["seconds"],
           "ms_step": timing["ms_per_step"], "peak_gib": peak_gib(device), "steps": timing["steps"],
           "warmup_s": timing["warmup_s"]}
    if cfg["compile"]:
        row["compile_backend"] = plan.compile_backend
    del ts, batch
    release(device)
    return row


def run_child(args: argparse.Namespace, kind: str, spec: dict, timeout_s: float) -> dict[str, Any]:
    """Run one row in a fresh process of this script (a hard timeout; a crash cannot take the report)."""
    result = Path(args.out) / "work" / f"child_{kind}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--child", kind,
           "--child_spec", json.dumps(spec), "--device", str(args.device)] + (["--smoke"] if args.smoke else [])
    if args.pretrained:
        cmd += ["--pretrained", args.pretrained]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{kind} did not finish within {timeout_s:.0f} s (the time budget)") from None
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{kind} exited with {proc.returncode}: {' / '.join(tail)}")
    return json.loads(result.read_text())


def child_main(args: argparse.Namespace, plan: Plan, device: torch.device) -> None:
    spec = json.loads(args.child_spec)
    if args.child == "train_row":
        images = real_images(Path(spec["data_root"]), plan)
        out = train_row(spec["name"], TRAIN_CONFIGS[spec["name"]], plan, images, device, spec["budget_s"],
                        args.pretrained)
    elif args.child == "fit":
        from retrieval.cluster_matching import fit_codebook

        gallery = np.load(spec["gallery"])
        cb = fit_codebook(gallery, spec["m"], spec["k"], max_samples=spec.get("max_samples"))
        np.save(spec["codewords"], cb.codewords)
        out = {"converged": cb.converged}
    else:
        raise SystemExit(f"unknown --child {args.child}")
    (Path(args.out) / "work" / f"child_{args.child}.json").write_text(json.dumps(out))


def section_train(sec: Section, args, plan: Plan, device, budget: Budget, images, ctx: dict) -> None:
    rows = {}
    for name, cfg in TRAIN_CONFIGS.items():
        try:
            if cfg["compile"] and cuda(device):
                spec = {"name": name, "data_root": str(ctx["data_root"]), "budget_s": plan.train_s}
                row = run_child(args, "train_row", spec, budget.cap(plan.compile_timeout_s, reserve=240))
                row["note"] = "own process (compile time excluded from img/s)"
            else:
                row = train_row(name, cfg, plan, images, device, budget.cap(plan.train_s, reserve=300),
                                args.pretrained)
        except Exception as exc:  # noqa: BLE001 - one failing configuration keeps the others
            row = {"config": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        rows[name] = sec.row(**row)
    base = rows["fp32 (released recipe)"].get("img_s")
    for r in rows.values():
        if base and r.get("img_s"):
            r["x_fp32"] = r["img_s"] / base
    measured = {n: r for n, r in rows.items() if r.get("img_s")}
    best = max(measured, key=lambda n: measured[n]["img_s"]) if measured else None
    ctx["best_train"] = measured.get(best)
    compiled = rows["bf16 + channels_last + torch.compile"]
    if compiled.get("img_s") and rows["bf16 + channels_last"].get("img_s"):
        gain = compiled["img_s"] / rows["bf16 + channels_last"]["img_s"]
        ctx["compile_faster"] = gain > 1.0
        sec.note(f"torch.compile vs eager bf16 + channels_last: {gain:.2f}x (compile warm-up "
                 f"{compiled.get('warmup_s', 0):.0f} s, paid once per run): the end-to-end row "
                 f"{'uses' if gain > 1.0 else 'does not use'} the trainer's --compile")
    sec.note(f"{plan.model} at {plan.img_size} px, batch {plan.n_sketch} sketches + {plan.n_photo} photos "
             f"(real augmented images of the generated tree), bidirectional step as the trainer runs it "
             f"(student forward/backward, teacher forward with its head trainable, both Adam steps); "
             f"{plan.train_warmup} warm-up steps excluded; weights: {args.pretrained or 'random'}")
    if best and base:
        speedup = measured[best]["img_s"] / base
        ctx["train_speedup"] = speedup
        report_goal(ctx, "best training config vs fp32 img/s", f">= {GOAL_SPEEDUP}x", f"{speedup:.2f}x ({best})",
                    speedup >= GOAL_SPEEDUP, "training")


def report_goal(ctx: dict, text: str, target: str, measured: Any, met: Optional[bool], where: str) -> None:
    ctx["report"].goal(text, target, measured, None if ctx["smoke"] else met, where)


# ----------------------------------------------------------------------------------------------- numerics
def grad_norm(module: torch.nn.Module) -> float:
    sq = [p.grad.detach().float().pow(2).sum() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def evaluator_precision_check(device: torch.device, work: Path) -> dict[str, Any]:
    """Run the test scripts' evaluator (engine.evaluate.main) with TF32 switched ON beforehand for both
    matmuls and cuDNN convolutions, and read the flags it leaves: it must have turned both off."""
    import contextlib
    import io

    from engine.evaluate import main as evaluate_main
    from retrieval.feature_io import save_features
    from utils.run_files import FEATURES_FILE

    before = tf32_flags()
    run_dir = work / "evaluator_check"
    save_features(class_structured(40, 60, 4, 16), run_dir / FEATURES_FILE)
    allow_tf32()                                          # TF32 on, as a user's earlier code might leave it
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluate_main(["--resume_dir", str(run_dir), "--mode", "1", "--no_figures", "--device", str(device)],
                          setting_name=SETTING)
        after = tf32_flags()
    finally:
        restore_tf32(before)
    after["tf32_off"] = tf32_off(after)
    return after


def matmul_error(device: torch.device, precision: str, n_query: int, n_gallery: int, dim: int) -> float:
    """Largest |q.g| error of a float32 product under ``precision`` against float64 (unit features)."""
    f = class_structured(n_query, n_gallery, 10, dim, seed=1)
    q, g = torch.from_numpy(f.query).to(device), torch.from_numpy(f.gallery).to(device)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        got = (q @ g.T).double()
    finally:
        torch.set_float32_matmul_precision(before)
    return float((got - q.double() @ g.double().T).abs().max())


def section_numerics(sec: Section, args, plan: Plan, device, images, ctx: dict) -> None:
    ts = TrainStep(plan.model, plan.n_seen, device, False, False, None, args.pretrained)
    batch = synthetic_batch(plan.n_sketch, plan.n_photo, plan.img_size, plan.n_seen, device, images=images)
    results = {}
    for label, amp in (("fp32", False), ("bf16", True)):
        ts.amp = amp
        torch.manual_seed(123)                            # the same prior noise z in both runs
        total, terms = ts.losses(batch, True)
        ts.opt_s.zero_grad(set_to_none=True)
        ts.opt_t.zero_grad(set_to_none=True)
        total.backward()
        results[label] = {**{k: float(v.detach()) for k, v in terms.items()}, "loss_total": float(total.detach()),
                          "student_grad_norm": grad_norm(ts.student), "teacher_head_grad_norm": grad_norm(ts.teacher)}
    worst = 0.0
    for key in results["fp32"]:
        a, b = results["fp32"][key], results["bf16"][key]
        rd = rel_diff(a, b)
        if key.startswith("loss_"):
            worst = max(worst, rd)
        sec.row(quantity=key, fp32=a, bf16=b, rel_diff=rd)
    sec.note(f"the same batch and weights, one backward each (no optimiser step); bf16 = torch.autocast "
             f"on {device.type}; weights: {args.pretrained or 'random'} "
             "(with random weights the loss terms are larger and flatter than in a real run)")
    report_goal(ctx, "loss terms bf16 vs fp32 (same batch)", f"within {GOAL_LOSS_REL:.0%}", f"{worst:.2%}",
                worst <= GOAL_LOSS_REL, "numerics")
    del ts, batch
    release(device)
    check = evaluator_precision_check(device, Path(args.out) / "work")
    sec.extra["evaluator_precision"] = check
    sec.row(quantity=f"evaluator leaves CUDA matmuls at ({check['api']})", fp32=check["cuda_matmul"], bf16=None,
            rel_diff=None)
    sec.row(quantity=f"evaluator leaves cuDNN convolutions at ({check['api']})", fp32=check["cudnn_conv"], bf16=None,
            rel_diff=None)
    n_q, n_g, _ = plan.eval_sizes
    for precision in ("highest", "high"):
        err = matmul_error(device, precision, min(n_q, 1024), n_g, plan.eval_dim)
        sec.row(quantity=f"max |q.g| error vs float64, precision '{precision}'", fp32=err, bf16=None, rel_diff=None)
    sec.note("TF32 ('high') applies on CUDA only; on a CPU both rows are plain float32. The evaluator set TF32 "
             f"off for matmuls and convolutions: {check['tf32_off']}. The trainer keeps the released run's cuDNN "
             "defaults (TF32 convolutions allowed, cudnn.benchmark on); matmuls stay float32")
    if not check["tf32_off"]:
        raise RuntimeError("the evaluator left TF32 on (matmuls or cuDNN convolutions): rankings would depend on "
                           "the card")


# ----------------------------------------------------------------------------------------------- profile
def section_profile(sec: Section, args, plan: Plan, device, images) -> None:
    from torch.profiler import ProfilerActivity, profile

    ts = TrainStep(plan.model, plan.n_seen, device, True, True, None, args.pretrained)
    batch = synthetic_batch(plan.n_sketch, plan.n_photo, plan.img_size, plan.n_seen, device, images=images)
    for _ in range(max(1, plan.train_warmup)):
        ts.step(batch, True)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda(device) else [])
    with profile(activities=activities) as prof:
        for _ in range(plan.profile_steps):
            ts.step(batch, True)
        sync(device)
    events = prof.key_averages()

    def device_us(e) -> float:
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(e, attr):
                return float(getattr(e, attr))
        return 0.0

    key = device_us if cuda(device) else (lambda e: float(e.self_cpu_time_total))
    total = sum(key(e) for e in events) or 1.0
    top = sorted(events, key=key, reverse=True)[:15]
    sec.extra["top_ops"] = [{"op": e.key[:60], "calls": e.count, "self_ms_per_step": key(e) / 1000 / plan.profile_steps,
                             "share": key(e) / total} for e in top]
    sec.row(config="bf16 + channels_last", steps=plan.profile_steps,
            ms_per_step_profiled=total / 1000 / plan.profile_steps,
            timeline="self device time" if cuda(device) else "self CPU time")
    del ts, batch
    release(device)


# ----------------------------------------------------------------------------------------------- loader
def section_loader(sec: Section, args, plan: Plan, device, budget: Budget, ctx: dict) -> None:
    from data.dataset import ListDataset
    from data.registry import VAL_FRACTION, get_setting, resolve_paths
    from data.transforms import train_transform
    from engine.train import Trainer, build_data, make_loader
    from utils.cpus import loader_workers
    from utils.distributed import DistInfo

    setting = get_setting(SETTING)
    paths = resolve_paths(setting, ctx["data_root"])
    # one core: load + the released augmentation, per image, in this process
    for normalize in (True, False):
        tf = train_transform(plan.img_size, normalize)
        for role in ("sketch_train", "photo_train"):
            ds = ListDataset.from_list(paths.root, paths.list_file(role), transform=tf)
            n, t0 = 0, time.perf_counter()
            with one_thread():
                while n < 4 or time.perf_counter() - t0 < budget.cap(plan.per_core_s, reserve=200):
                    ds[n % len(ds)]
                    n += 1
            sec.row(pipeline=f"one core, {role.split('_')[0].replace('sketch', 'sketche')}s, {'float32 normalised' if normalize else 'uint8'}",
                    workers=0, img_s=n / (time.perf_counter() - t0), images=n)
    n_sk, n_ph = plan.n_sketch, plan.n_photo
    workers = loader_workers(n_sk, n_ph, 1)         # the trainer's default split of one process's workers
    # the trainer's main process alone: Trainer.batches copies each half to the device, then concatenates,
    # shuffles and (with --gpu_normalize) normalises there
    for dtype in (torch.float32, torch.uint8):
        shape = (3, plan.img_size, plan.img_size)
        sk = (torch.zeros(n_sk, *shape, dtype=dtype), torch.zeros(n_sk, dtype=torch.long))
        ph = (torch.zeros(n_ph, *shape, dtype=dtype), torch.zeros(n_ph, dtype=torch.long))
        if cuda(device):
            sk, ph = tuple(t.pin_memory() for t in sk), tuple(t.pin_memory() for t in ph)
        holder = batch_holder([sk] * 10, [ph] * 10, device, dtype == torch.uint8, [n_sk] * 10, [n_ph] * 10)
        t0 = time.perf_counter()
        n = 0
        for x, *_ in Trainer.batches(holder):
            sync(device)
            n += len(x)
        sec.row(pipeline=f"main process only: Trainer.batches + copy to {device.type}, {str(dtype)[6:]} "
                         "(a ceiling)", workers=0, img_s=n / (time.perf_counter() - t0), images=n)
    rates = {}
    for normalize in (True, False):
        data = build_data(setting, paths, plan.img_size, VAL_FRACTION, "released", normalize=normalize)
        sk, sk_sampler = make_loader(data.sketches, n_sk, DistInfo(), 0, workers.sketches, cuda(device))
        ph, ph_sampler = make_loader(data.photos, n_ph, DistInfo(), 1, workers.photos, cuda(device))
        torch.manual_seed(0)
        holder = batch_holder(sk, ph, device, not normalize, sk_sampler.global_sizes(), ph_sampler.global_sizes())
        t0 = time.perf_counter()
        first = None
        images = batches = 0
        limit = budget.cap(plan.loader_s, reserve=200)
        for x, *_ in Trainer.batches(holder):               # the trainer's own pairing, device copy, shuffle
            sync(device)
            if first is None:
                first = time.perf_counter()
            else:
                images += len(x)
                batches += 1
            if batches >= 2 and time.perf_counter() - first > limit:
                break
        label = "float32, normalised in workers (released)" if normalize else "uint8, normalised on the device (--gpu_normalize)"
        rate = images / max(time.perf_counter() - first, 1e-9) if batches else float("nan")
        rates[normalize] = rate
        sec.row(pipeline=f"train loaders: {label}", workers=f"{workers.sketches} + {workers.photos}", img_s=rate,
                images=images,
                first_batch_s=first - t0)
        del sk, ph, holder
    best_loader = max(r for r in rates.values() if r == r)
    ctx["gpu_normalize"] = rates[False] > rates[True]
    ctx["loader_img_s"] = best_loader
    train = ctx.get("best_train")
    sec.note(f"{usable_cores()} usable CPU cores; batches of {n_sk} sketches + {n_ph} photos through Trainer.batches "
             f"(concatenate + shuffle on the CPU), copied to {device} as channels_last and synchronised; the first "
             "batch (worker start-up) is reported apart")
    if train:
        verdict = "NOT the bottleneck" if best_loader >= train["img_s"] else "THE BOTTLENECK"
        sec.note(f"best loader {best_loader:.0f} img/s vs best training step {train['img_s']:.0f} img/s "
                 f"({train['config']}): the loader is {verdict}")
        ctx["loader_ok"] = best_loader >= train["img_s"]


# ----------------------------------------------------------------------------------------------- process group
def process_group_check(device: torch.device) -> dict[str, Any]:
    """One-rank process group on this machine's backend (NCCL on CUDA), one all-reduce."""
    import torch.distributed as dist

    backend = "nccl" if cuda(device) else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        return {"backend": backend, "ok": False, "why": "not built into this PyTorch"}
    t0 = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        t = torch.ones(4, device=device)
        dist.all_reduce(t)
        sync(device)
        ok = bool(t.sum().item() == 4)
    finally:
        dist.destroy_process_group()
    return {"backend": backend, "ok": ok, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------- end to end
class LineTimer(threading.Thread):
    """Reads a child's output and timestamps the lines that mark start-up and epoch ends."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.marks, self.tail = stream, {}, []

    def run(self) -> None:
        for line in self.stream:
            now = time.perf_counter()
            self.tail = (self.tail + [line.rstrip()[-300:]])[-20:]
            if "SBKA training on" in line:
                self.marks.setdefault("ready", now)
            m = re.search(r"epoch (\d+): loss", line)
            if m:
                self.marks[f"epoch{m.group(1)}"] = now


def run_training(args, plan: Plan, device, ctx: dict, nproc: int, steps: int, epochs: int, flags: list[str],
                 timeout: float, name: str) -> dict[str, Any]:
    """``torchrun --nproc_per_node nproc train_sketchy_ext.py`` on the generated tree: return code (None: stopped
    at ``timeout``), the run's log.jsonl, the output's time marks and tail, wall seconds, the command."""
    from utils.run_files import LOG_FILE

    run_dir = Path(args.out) / "work" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "train_sketchy_ext.py", "--data_root", str(ctx["data_root"]), "--savedir", str(run_dir),
           "--pretrained", args.pretrained or "none", "--model", plan.model, "--img_size", str(plan.img_size),
           "--batch_size", str(plan.n_sketch + plan.n_photo), "--epochs", str(epochs), "--warmup_epochs", "1",
           "--max_steps_per_epoch", str(steps), "--no_figures", "--device", str(device), *flags]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    reader = LineTimer(proc.stdout)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 15)
        proc.wait()
        rc = None
    reader.join(5)
    log_file = run_dir / LOG_FILE
    log = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.is_file() else []
    return {"rc": rc, "log": log, "marks": reader.marks, "tail": reader.tail, "t0": t0,
            "wall": time.perf_counter() - t0, "cmd": cmd}


def section_e2e(sec: Section, args, plan: Plan, device, budget: Budget, ctx: dict) -> None:
    """The trainer itself through torchrun, on the multi-process path: one process with --force_process_group
    (DDP, NCCL with device_id, the gloo control group, the teacher-head averaging, the check-ins), then two
    processes when two GPUs are visible; with --compile when the training section found it faster."""
    pg = process_group_check(device)
    sec.row(run="one-rank process group + all_reduce", backend=pg["backend"], ok=pg["ok"], seconds=pg.get("seconds"))
    step = ctx.get("best_train") or {}
    batch = plan.n_sketch + plan.n_photo
    step_s = max((step.get("ms_step") or 1000.0) / 1000, batch / (ctx.get("loader_img_s") or math.inf))
    compiled = bool(ctx.get("compile_faster")) or args.smoke      # the smoke run always exercises the flag
    epochs = 3 if compiled else 2                                 # compiled: epoch 2 is the steady state
    steps = int(max(3, min(RELEASED_RUN["steps"], plan.e2e_steps_s / epochs / step_s)))
    flags = ["--amp", "--channels_last", "--force_process_group"]
    flags += ["--gpu_normalize"] if ctx.get("gpu_normalize", True) else []
    flags += ["--compile", plan.compile_backend] if compiled else []
    timeout = max(5.0, budget.cap(plan.e2e_timeout_s, reserve=90))
    run = run_training(args, plan, device, ctx, 1, steps, epochs, flags, timeout, "e2e_run")
    log, marks = run["log"], run["marks"]
    if run["rc"] is None:
        sec.status = "partial"
        sec.note(f"stopped at the time budget ({timeout:.0f} s) after {len(log)} epoch(s); last output: "
                 f"{' / '.join(run['tail'][-3:])}")
    elif run["rc"] != 0:
        raise RuntimeError(f"train_sketchy_ext.py exited with {run['rc']}: {' / '.join(run['tail'][-5:])}")
    if not log:
        raise TimeoutError("no epoch finished within the time budget")
    t0 = run["t0"]
    startup = marks.get("ready", t0) - t0
    prev = marks.get("ready", t0)
    per_phase, per_epoch = {}, {}
    for rec in log:
        end = marks.get(f"epoch{rec['epoch']}")
        epoch_wall = (end - prev) if end else None
        overhead = (epoch_wall - rec["time_s"]) if epoch_wall else None
        prev = end or prev
        per_epoch[rec["epoch"]] = rec["time_s"] / rec["steps"]
        per_phase[rec["phase"]] = {"step_s": rec["time_s"] / rec["steps"], "overhead_s": overhead or 0.0}
        sec.row(run=f"epoch {rec['epoch']} ({rec['phase']})", backend=None, ok=True, steps=rec["steps"],
                img_s=rec["images_per_s"], train_s=rec["time_s"], validate_save_s=overhead)
    r = RELEASED_RUN
    scale = r["batch"] / batch
    full = startup
    compile_s = 0.0
    if compiled and 2 in per_epoch:                      # epochs 0 and 1 compile; epoch 2 runs compiled code
        steady = per_epoch[2]
        compile_s = sum(max(0.0, (per_epoch[e] - steady) * log[e]["steps"]) for e in (0, 1))
        overhead = per_phase["bidirectional"]["overhead_s"]
        full += compile_s + r["epochs"] * (r["steps"] * steady * scale + overhead)
    else:
        for phase, n_epochs in (("warmup", r["warmup_epochs"]), ("bidirectional", r["epochs"] - r["warmup_epochs"])):
            ph = per_phase.get(phase) or per_phase.get("bidirectional") or next(iter(per_phase.values()))
            full += n_epochs * (r["steps"] * ph["step_s"] * scale + ph["overhead_s"])
    sec.row(run="extrapolated: released Sketchy run (20 epochs x 489 steps of 210)", backend=None, ok=True,
            minutes=full / 60, startup_s=startup, compile_s=compile_s if compiled else None, wall_s=run["wall"])
    sec.extra["command"] = " ".join(run["cmd"])
    sec.note(f"`torchrun --nproc_per_node 1 train_sketchy_ext.py {' '.join(flags)}` on the generated tree, "
             f"{steps} steps per epoch, {epochs} epochs (one warm-up), validation on {plan.lists['sketch_test']} "
             "sketches each epoch; --force_process_group runs the multi-process path with one process: DDP, "
             f"{'NCCL' if cuda(device) else 'gloo'} (with device_id on CUDA), the gloo control group and its "
             "check-ins, the teacher-head averaging; extrapolated = start-up + per phase 10 x (489 x seconds per "
             "step + validation/checkpoint seconds)"
             + (", compiled: the compile seconds of epochs 0-1 once + 20 epochs at epoch 2's step time" if compiled
                else "")
             + f"; each epoch's loader start-up is spread over {steps} steps instead of 489, so the figure is "
               "pessimistic")
    report_goal(ctx, "full released Sketchy run on one GPU", f"<= {GOAL_RUN_MIN:.0f} min", f"{full / 60:.1f} min",
                full / 60 <= GOAL_RUN_MIN, "end to end")
    gpus = torch.cuda.device_count() if cuda(device) else 0
    if gpus < 2:
        sec.note(f"{gpus} GPU(s) visible: the 2-process row needs 2")
        return
    timeout2 = budget.cap(plan.e2e_timeout_s, reserve=90)
    if timeout2 < 20:
        sec.note("2-process row skipped: time budget")
        return
    two = run_training(args, plan, device, ctx, 2, steps, epochs, [f for f in flags if f != "--force_process_group"],
                       timeout2, "e2e_run_2")
    if two["rc"] != 0:
        sec.note(f"2 processes: exited with {two['rc']}: {' / '.join(two['tail'][-5:])}")
    for rec in two["log"]:
        sec.row(run=f"2 processes, epoch {rec['epoch']} ({rec['phase']})", backend="nccl", ok=two["rc"] == 0,
                steps=rec["steps"], img_s=rec["images_per_s"], train_s=rec["time_s"])


# ----------------------------------------------------------------------------------------------- extraction
def section_extraction(sec: Section, args, plan: Plan, device, budget: Budget, ctx: dict) -> None:
    from data.dataset import ListDataset
    from data.lists import read_class_file
    from data.registry import get_setting, resolve_paths
    from data.transforms import test_transform
    from engine.extract import iter_embeddings
    from models import build_student

    paths = resolve_paths(get_setting(SETTING), ctx["data_root"])
    n_unseen = len(read_class_file(paths.zero_class_file))
    cores = usable_cores()
    configs = [
        ("test script defaults: fp32, batch 80", dict(amp=False, batch=80, workers=min(4, cores), cl=False, dev_norm=False)),
        (f"fp32, batch {plan.extract_batch}", dict(amp=False, batch=plan.extract_batch, workers=cores, cl=False, dev_norm=False)),
        (f"bf16 + channels_last + uint8/device-normalise, batch {plan.extract_batch}",
         dict(amp=True, batch=plan.extract_batch, workers=cores, cl=True, dev_norm=True)),
    ]
    torch.manual_seed(0)
    student = build_student(plan.model, plan.n_seen, args.pretrained).to(device).eval()
    best = 0.0
    for name, c in configs:
        fmt = torch.channels_last if c["cl"] else torch.contiguous_format
        student.to(memory_format=fmt)
        reset_peak(device)
        limit = budget.cap(plan.extract_s, reserve=100)
        done, total = 0, plan.lists["photo_zero"] + plan.lists["sketch_zero"]
        t0 = time.perf_counter()
        for role in ("photo_zero", "sketch_zero"):           # gallery then queries, as the test script does
            ds = ListDataset.from_list(paths.root, paths.list_file(role), n_unseen,
                                       test_transform(plan.img_size, not c["dev_norm"]), paths.zero_class_file)
            gen = iter_embeddings(student, ds, device, c["batch"], c["workers"], c["amp"], desc=role,
                                  on_device_normalize=c["dev_norm"], memory_format=fmt)
            for feats, _ in gen:
                done += len(feats)
                if time.perf_counter() - t0 > limit:
                    break
            gen.close()
            if time.perf_counter() - t0 > limit:
                break
        sync(device)                                         # the features stay on the device: wait for them
        seconds = time.perf_counter() - t0
        rate = done / seconds
        best = max(best, rate)
        sec.row(config=name, workers=c["workers"], images=done, of=total, complete=done == total, seconds=seconds,
                img_s=rate, peak_gib=peak_gib(device))
    sec.note(f"zero set: {plan.lists['photo_zero']} photos + {plan.lists['sketch_zero']} sketches (list lines of "
             "the generated tree repeated), engine.extract (the test scripts' extraction) with loader start-up "
             "included; a row stops at its time budget (complete = no) and reports the rate so far")
    report_goal(ctx, "feature extraction", f">= {GOAL_EXTRACT} img/s", f"{best:.0f} img/s", best >= GOAL_EXTRACT,
                "extraction")
    del student
    release(device)


# ----------------------------------------------------------------------------------------------- evaluation
def metric_diffs(a, b, idx: np.ndarray) -> dict[str, float]:
    """Largest |a - b| per metric over the queries ``idx`` (a: full-size QueryMetrics, b: of those queries)."""
    out = {}
    for name, values in a.values.items():
        x, y = values[idx], b.values[name]
        both_nan = np.isnan(x) & np.isnan(y)
        d = np.abs(x - y)
        d[both_nan] = 0.0
        out[name] = float(np.nanmax(np.where(np.isnan(d), np.inf, d))) if len(d) else 0.0
    return out


def cpu_subset(features, reference, budget_s: float, piece: int, codebook=None) -> tuple[dict, int, float]:
    """The CPU evaluator on seeded random query pieces until ``budget_s``; the largest per-query difference
    of every metric from ``reference`` (the device run on all queries), queries compared, seconds."""
    from retrieval.feature_io import FeatureSet
    from retrieval.search import RetrievalProblem

    order = np.random.default_rng(0).permutation(len(features.query))
    worst = {}
    t0 = time.perf_counter()
    n = 0
    while n < len(order) and (n == 0 or time.perf_counter() - t0 < budget_s):
        idx = np.sort(order[n:n + piece])
        sub = FeatureSet(features.gallery, features.gallery_labels, features.query[idx], features.query_labels[idx])
        got = RetrievalProblem(sub, torch.device("cpu"), 1024).evaluate(codebook)
        for k, v in metric_diffs(reference, got, idx).items():
            worst[k] = max(worst.get(k, 0.0), v)
        n += len(idx)
    return worst, n, time.perf_counter() - t0


def fit_codebook_timed(args, plan: Plan, features, budget: Budget, sec: Section):
    """The released codeword fit (GaussianMixture, full covariance, all gallery items), timed; under the time
    budget in its own process, falling back to a fit on a sample when it runs out."""
    from retrieval.cluster_matching import Codebook, fit_codebook

    m, k = plan.pq
    if args.smoke:
        t0 = time.perf_counter()
        cb = fit_codebook(features.gallery, m, k)
        return cb, time.perf_counter() - t0, "all gallery items"
    work = Path(args.out) / "work"
    np.save(work / "gallery.npy", features.gallery)
    for samples in (None, plan.fit_fallback_samples):
        spec = {"gallery": str(work / "gallery.npy"), "m": m, "k": k, "max_samples": samples,
                "codewords": str(work / "codewords.npy")}
        t0 = time.perf_counter()
        try:
            out = run_child(args, "fit", spec, budget.cap(plan.fit_timeout_s, reserve=15))
        except TimeoutError as exc:
            sec.note(f"codeword fit on {'all gallery items' if samples is None else samples}: {exc}")
            continue
        seconds = time.perf_counter() - t0
        cb = Codebook(np.load(work / "codewords.npy"), bool(out["converged"]))
        return cb, seconds, "all gallery items" if samples is None else f"a seeded sample of {samples} items (fallback)"
    raise TimeoutError("no codeword fit finished within the time budget")


def section_evaluation(sec: Section, args, plan: Plan, device, budget: Budget, ctx: dict) -> None:
    from retrieval.search import RetrievalProblem

    exact_float32()                                       # as engine.evaluate.main does (checked in numerics)
    nq, ng, nc = plan.eval_sizes
    t0 = time.perf_counter()
    features = class_structured(nq, ng, nc, plan.eval_dim)
    sec.note(f"{nq} queries x {ng} gallery, {plan.eval_dim}-d, {nc} classes, class-structured synthetic unit "
             f"features (bench_metrics.class_structured), made in {time.perf_counter() - t0:.1f} s")
    # kernel warm-up on a small problem, so the timed runs do not pay first-call costs
    from retrieval.feature_io import FeatureSet
    warm = FeatureSet(features.gallery, features.gallery_labels, features.query[:256], features.query_labels[:256])
    RetrievalProblem(warm, device, 256).evaluate()
    reference = None
    best_s = math.inf
    for chunk in plan.eval_chunks:
        if reference is not None and budget.left() < 100:
            sec.note(f"chunk {chunk} skipped: time budget")
            continue
        reset_peak(device)
        t0 = time.perf_counter()
        problem = RetrievalProblem(features, device, chunk)
        sync(device)
        t1 = time.perf_counter()
        result = problem.evaluate()
        sync(device)
        seconds = time.perf_counter() - t1
        avg = result.averaged()
        sec.row(mode="one-to-one", device=str(device), chunk=chunk, seconds=seconds, transfer_s=t1 - t0,
                peak_gib=peak_gib(device), **{f"class {k}": v for k, v in avg["per_class"].items()})
        if seconds < best_s:
            best_s, reference, best_problem = seconds, result, problem
    report_goal(ctx, "QuickDraw one-to-one (4 metrics) on the device", f"<= {GOAL_EVAL_S:.0f} s", f"{best_s:.2f} s",
                best_s <= GOAL_EVAL_S, "evaluation")
    worst, n, seconds = cpu_subset(features, reference, budget.cap(plan.eval_cpu_s, reserve=45), plan.eval_cpu_piece)
    sec.row(mode="one-to-one: CPU evaluator on the same features", device="cpu", queries_compared=n, seconds=seconds,
            **{f"max diff {k}": v for k, v in worst.items()})
    max_diff = max(worst.values())
    subset = "all" if n == nq else f"a seeded random {n} of {nq}"
    sec.note(f"CPU comparison on {subset} queries (per-query metrics, so a subset compares exactly the same "
             "numbers); the CPU run at full QuickDraw size takes minutes")
    report_goal(ctx, "QuickDraw metrics, device vs CPU evaluator", f"max diff <= {GOAL_EVAL_DIFF:g}",
                f"{max_diff:.2e} ({subset} queries)", max_diff <= GOAL_EVAL_DIFF, "evaluation")
    # one-to-many for one (M, K): the fit timed apart
    m, k = plan.pq
    codebook, fit_s, fitted_on = fit_codebook_timed(args, plan, features, budget, sec)
    sync(device)
    t0 = time.perf_counter()
    result2 = best_problem.evaluate(codebook)
    sync(device)
    seconds2 = time.perf_counter() - t0
    avg2 = result2.averaged()
    sec.row(mode=f"one-to-many M={m} K={k}: matching + metrics", device=str(device), chunk=best_problem.chunk,
            seconds=seconds2, peak_gib=peak_gib(device), **{f"class {kk}": v for kk, v in avg2["per_class"].items()})
    sec.row(mode=f"one-to-many M={m} K={k}: codeword fit (GaussianMixture, full covariance, CPU)", device="cpu",
            seconds=fit_s, fitted_on=fitted_on, converged=codebook.converged)
    worst2, n2, s2 = cpu_subset(features, result2, budget.cap(plan.eval_mode2_cpu_s, reserve=20), plan.eval_cpu_piece,
                                codebook)
    sec.row(mode=f"one-to-many M={m} K={k}: CPU evaluator on the same codebook", device="cpu", queries_compared=n2,
            seconds=s2, **{f"max diff {kk}": v for kk, v in worst2.items()})


# ----------------------------------------------------------------------------------------------- main
SECTIONS = ("train", "numerics", "profile", "loader", "e2e", "extraction", "evaluation")
TITLES = {"data": "Generated data", "train": "1. Training-step throughput", "numerics": "2. Numerics (fp32 vs bf16, TF32)",
          "profile": "Profile of the training step (torch.profiler)", "loader": "3. Loader throughput",
          "e2e": "4. End to end (train_sketchy_ext.py through torchrun)", "extraction": "5. Feature extraction",
          "evaluation": "6. Evaluation at QuickDraw size"}
MIN_LEFT = {"train": 60, "numerics": 10, "profile": 10, "loader": 20, "e2e": 40, "extraction": 15, "evaluation": 40}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_report.json / gpu_report.md (and work files)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device (CI): checks the script, measures nothing")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--budget_s", type=float, default=None, help="time budget of the whole run (default: 420 full, 600 smoke)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="which sections to run")
    p.add_argument("--profile", action="store_true", help="add a torch.profiler summary (top ops) of the training step")
    p.add_argument("--pretrained", default=None,
                   help="official ConvNeXt-V2 checkpoint (default: random weights; timing does not depend on them)")
    p.add_argument("--keep_work", action="store_true", help="keep <out>/work (generated data, run dir)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child_spec", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> Report:
    args = build_parser().parse_args(argv)
    from utils.distributed import select_device

    device = select_device(args.device)
    args.device = str(device)                          # children get the resolved device
    plan = smoke_plan() if args.smoke else Plan()
    if args.smoke:
        # Tiny tensors gain nothing from threads, and on a busy CI machine OpenMP's spinning threads make
        # each op many times slower; children (torchrun, fits) inherit the environment.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    if args.budget_s:
        plan = replace(plan, total_s=args.budget_s)
    if args.child:
        child_main(args, plan, device)
        return None
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    budget = Budget(plan.total_s)
    import timm

    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda(device) else "CPU",
            "torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count(), "smoke": args.smoke, "plan": asdict(plan),
            "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "defaults": {"cudnn.benchmark": torch.backends.cudnn.benchmark, **tf32_flags()}}
    if Path("/dev/shm").is_dir():                      # DataLoader workers pass batches through it
        meta["dev_shm_gib"] = shutil.disk_usage("/dev/shm").total / 2**30
    if cuda(device):
        props = torch.cuda.get_device_properties(device)
        meta["gpu_memory_gib"] = props.total_memory / 2**30
    report = Report(out, meta)
    ctx: dict[str, Any] = {"report": report, "smoke": args.smoke}
    if not cuda(device) and not args.smoke:
        print("[gpu_check] warning: no CUDA device; the full sizes on a CPU will mostly run out of time budget",
              flush=True)
    images = None
    with report.section("data", TITLES["data"]) as sec:
        ctx["data_root"], info = make_tree(work, plan)
        images = real_images(ctx["data_root"], plan)
        sec.row(**info)
    if images is None:
        return report
    order = [s for s in SECTIONS if s in args.sections and (s != "profile" or args.profile)]
    runners: dict[str, Callable[[Section], None]] = {
        "train": lambda s: section_train(s, args, plan, device, budget, images, ctx),
        "numerics": lambda s: section_numerics(s, args, plan, device, images, ctx),
        "profile": lambda s: section_profile(s, args, plan, device, images),
        "loader": lambda s: section_loader(s, args, plan, device, budget, ctx),
        "e2e": lambda s: section_e2e(s, args, plan, device, budget, ctx),
        "extraction": lambda s: section_extraction(s, args, plan, device, budget, ctx),
        "evaluation": lambda s: section_evaluation(s, args, plan, device, budget, ctx),
    }
    for name in order:
        if budget.left() < (MIN_LEFT[name] if not args.smoke else 0):
            report.skip(name, TITLES[name], f"time budget: {budget.left():.0f} s left")
            continue
        with report.section(name, TITLES[name]) as sec:
            runners[name](sec)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    report.write()
    print(f"[gpu_check] report: {out / 'gpu_report.md'} ({report.as_dict()['meta']['elapsed_s']:.0f} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
