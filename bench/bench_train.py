"""Training-step throughput of SBKA (student + teacher, both phases) on synthetic input.

Measures the model compute of one optimisation step as the trainer runs it (no data loading), e.g. on a GPU:

    python bench/bench_train.py --device cuda --batch_size 210                      # fp32
    python bench/bench_train.py --device cuda --batch_size 210 --amp --channels_last

and on a CPU for a quick check: ``python bench/bench_train.py --device cpu --model convnextv2_atto
--batch_size 12 --img_size 64 --steps 3``. Prints images/s per phase.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.train import sbka_losses  # noqa: E402
from models import build_student, build_teacher  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def bench(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    student = build_student(args.model, args.n_seen).to(device, memory_format=fmt).train()
    teacher = build_teacher(args.model).to(device, memory_format=fmt).eval()
    opt_s = torch.optim.Adam(student.parameters(), lr=1e-4, weight_decay=5e-4)
    opt_t = torch.optim.Adam(teacher.head_parameters(), lr=1e-4, weight_decay=5e-4)
    b = args.batch_size
    x = torch.randn(b, 3, args.img_size, args.img_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, args.n_seen, (b,), device=device)
    is_photo = (torch.arange(b, device=device) % 3 != 0).float()
    mask = torch.rand(b, 1000, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()

    def step(bidirectional: bool) -> None:
        total, _ = sbka_losses(student, teacher, x, y, is_photo, mask, bidirectional, False, autocast)
        opt_s.zero_grad(set_to_none=True)
        opt_t.zero_grad(set_to_none=True)
        total.backward()
        opt_s.step()
        if bidirectional:
            opt_t.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = {}
    for phase, bidirectional in (("warm-up", False), ("bidirectional", True)):
        for _ in range(args.warmup_steps):
            step(bidirectional)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(bidirectional)
        sync()
        out[phase] = args.steps * b / (time.perf_counter() - t0)
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--model", default="convnextv2_tiny", help="timm model name")
    p.add_argument("--batch_size", type=int, default=210, help="images per step")
    p.add_argument("--img_size", type=int, default=224, help="input size")
    p.add_argument("--n_seen", type=int, default=100, help="seen classes of the student's classifier")
    p.add_argument("--steps", type=int, default=20, help="timed steps per phase")
    p.add_argument("--warmup_steps", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels_last", action="store_true", help="channels-last memory format")
    args = p.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    res = bench(args)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{args.model} batch {args.batch_size} @ {args.img_size}px on {name}, amp={args.amp}, "
          f"channels_last={args.channels_last}")
    for k, v in res.items():
        print(f"  {k}: {v:.1f}" + (" images/s" if k != "peak_memory_gib" else " GiB"))


if __name__ == "__main__":
    main()
