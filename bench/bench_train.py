"""Training-step throughput of SBKA (student + teacher, both phases) on synthetic input.

Measures the model compute of one optimisation step as the trainer runs it (no data loading), e.g. on a GPU:

    python bench/bench_train.py --device cuda --batch_size 210                      # fp32
    python bench/bench_train.py --device cuda --batch_size 210 --amp --channels_last

and on a CPU for a quick check: ``python bench/bench_train.py --device cpu --model convnextv2_atto
--batch_size 12 --img_size 64 --steps 3``. Prints images/s per phase. The step builder and the timed loop
are shared with ``bench/gpu_check.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import utils  # noqa: E402, F401 - sets OpenMP up before torch loads (utils/runtime.py)
import torch  # noqa: E402

from engine.train import compile_forward, step_losses  # noqa: E402
from losses import SBKAObjective  # noqa: E402
from models import build_student, build_teacher  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.precision import AMP_DTYPE, released_training_numerics  # noqa: E402


@dataclass
class Batch:
    """One training batch on the device: images, seen labels, photo flags, the cid_mask (a row per seen class)."""

    x: torch.Tensor
    y: torch.Tensor
    is_photo: torch.Tensor
    cid_mask: Optional[torch.Tensor]
    photo_rows: torch.Tensor            # the teacher runs on these rows only, as in the trainer

    def __len__(self) -> int:
        return len(self.x)


def synthetic_batch(n_sketch: int, n_photo: int, img_size: int, n_seen: int, device: torch.device,
                    seed: int = 0, images: Optional[torch.Tensor] = None) -> Batch:
    """A batch of ``n_sketch`` sketches and ``n_photo`` photos (random images unless ``images`` is given),
    shuffled as the trainer shuffles them; labels and the cid_mask are random, seeded."""
    g = torch.Generator().manual_seed(seed)
    b = n_sketch + n_photo
    x = images if images is not None else torch.randn(b, 3, img_size, img_size, generator=g)
    is_photo = torch.cat([torch.zeros(n_sketch), torch.ones(n_photo)])
    perm = torch.randperm(b, generator=g)
    y = torch.randint(0, n_seen, (b,), generator=g)
    cid_mask = torch.rand(n_seen, 1000, generator=g, dtype=torch.float32)
    return Batch(x[perm].to(device), y.to(device), is_photo[perm].to(device), cid_mask.to(device),
                 torch.nonzero(is_photo[perm]).squeeze(1).to(device))


class TrainStep:
    """Student, teacher and both Adam optimisers of the trainer; ``step(bidirectional)`` is one optimisation
    step exactly as ``Trainer.train_one_epoch`` does it (losses with the teacher on the photo rows, one backward,
    student step, teacher step), with the trainer's numerics on CUDA (``cudnn.benchmark`` on) and its
    ``--compile`` (``compile_backend``)."""

    def __init__(self, model: str, n_seen: int, device: torch.device, amp: bool = False,
                 channels_last: bool = False, compile_backend: Optional[str] = None,
                 pretrained: Optional[str] = None, seed: int = 0):
        self.device = device
        if device.type == "cuda":
            released_training_numerics()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(seed)
        self.student = build_student(model, n_seen, pretrained).to(device, memory_format=self.memory_format).train()
        self.teacher = build_teacher(model, pretrained).to(device, memory_format=self.memory_format).eval()
        self.opt_s = torch.optim.Adam(self.student.parameters(), lr=1e-4, weight_decay=5e-4)
        self.opt_t = torch.optim.Adam(self.teacher.head_parameters(), lr=1e-4, weight_decay=5e-4)
        self.amp = amp
        self.run_student: Callable = self.student
        self.run_teacher: Callable = self.teacher
        if compile_backend:
            self.run_student = compile_forward(self.student, compile_backend)
            self.run_teacher = compile_forward(self.teacher, compile_backend)

    def autocast(self):
        # the project's --amp dtype; here on the CPU too, so the CPU smoke of the GPU check compares bf16 with fp32
        return torch.autocast(self.device.type, dtype=AMP_DTYPE) if self.amp else nullcontext()

    def losses(self, batch: Batch, bidirectional: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch.x.contiguous(memory_format=self.memory_format)
        return step_losses(self.run_student, self.run_teacher, SBKAObjective(), x, batch.y, batch.is_photo,
                           batch.cid_mask, bidirectional, self.autocast(), photo_rows=batch.photo_rows)

    def step(self, batch: Batch, bidirectional: bool = True) -> dict[str, torch.Tensor]:
        total, terms = self.losses(batch, bidirectional)
        self.opt_s.zero_grad(set_to_none=True)
        self.opt_t.zero_grad(set_to_none=True)
        total.backward()
        self.opt_s.step()
        if bidirectional:
            self.opt_t.step()
        return terms


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(run: Callable[[], object], device: torch.device, warmup: int, min_steps: int,
               budget_s: float, max_steps: Optional[int] = None) -> dict[str, float]:
    """Run ``warmup`` untimed calls, then timed calls until ``budget_s`` is spent (at least ``min_steps``,
    at most ``max_steps``): steps, seconds, ms per step, warm-up seconds."""
    start = time.perf_counter()
    for _ in range(warmup):
        run()
    sync(device)
    t0 = time.perf_counter()
    steps = 0
    while steps < min_steps or (time.perf_counter() - t0 < budget_s and (max_steps is None or steps < max_steps)):
        run()
        steps += 1
        if steps >= min_steps and steps % 5 == 0:
            sync(device)                  # keep the deadline honest on an asynchronous device
    sync(device)
    seconds = time.perf_counter() - t0
    return {"steps": steps, "seconds": seconds, "ms_per_step": 1000.0 * seconds / steps, "warmup_s": t0 - start}


def bench(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    ts = TrainStep(args.model, args.n_seen, device, args.amp, args.channels_last)
    n_sketch = args.batch_size // 3
    batch = synthetic_batch(n_sketch, args.batch_size - n_sketch, args.img_size, args.n_seen, device)
    out = {}
    for phase, bidirectional in (("warm-up", False), ("bidirectional", True)):
        timing = time_steps(lambda: ts.step(batch, bidirectional), device, args.warmup_steps, args.steps, 0.0,
                            args.steps)
        out[phase] = timing["steps"] * len(batch) / timing["seconds"]
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
    res = bench(args)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{args.model} batch {args.batch_size} @ {args.img_size}px on {name}, amp={args.amp}, "
          f"channels_last={args.channels_last}")
    for k, v in res.items():
        print(f"  {k}: {v:.1f}" + (" images/s" if k != "peak_memory_gib" else " GiB"))


if __name__ == "__main__":
    main()
