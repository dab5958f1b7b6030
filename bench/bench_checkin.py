"""What the processes' check-in costs per training step, at every step (the old cadence) and every N steps.

    python bench/bench_checkin.py                      # W = 2, 4, 8 gloo processes on this machine
    python bench/bench_checkin.py --worlds 2 4 8 16 --calls 400 --every 50

A check-in (utils.distributed.raise_if_any_failed with nothing to report) is one small all-reduce on the CPU
group: latency-bound, a ring of 2(W-1) hops, so its cost grows with the processes while a step's compute per
process shrinks. For each W, W gloo processes (one thread each, 127.0.0.1) run ``--calls`` check-ins back to back
after a barrier, in ``--rounds`` rounds; the median round's mean is the cost of one. The denominator is one
training step of the smoke model (``--smoke``'s convnextv2_atto at 64 px, batch 12 = 4 sketches + 8 photos,
bidirectional: student and teacher forward, one backward, both Adam steps) in this process alone with torch's
default threads: the fastest step this machine makes, so the ratios are the pessimistic ones. Both are measured
in one run; the load average is printed with the numbers, since the machine may be shared.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import utils  # noqa: E402, F401 - sets OpenMP up before torch loads (utils/runtime.py)
import torch  # noqa: E402

from engine.flags import CHECKIN_EVERY  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def smoke_step_ms(steps: int, warmup: int) -> float:
    """Median milliseconds of one bidirectional step of the smoke model (one process)."""
    from bench_train import TrainStep, synthetic_batch

    ts = TrainStep("convnextv2_atto", 8, torch.device("cpu"))
    batch = synthetic_batch(4, 8, 64, 8, torch.device("cpu"))
    for _ in range(warmup):
        ts.step(batch, True)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        ts.step(batch, True)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def _worker(rank: int, world: int, init_file: str, calls: int, rounds: int, queue) -> None:
    import torch.distributed as dist

    from utils.distributed import DistInfo, raise_if_any_failed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    info = DistInfo(rank, world, rank, world)
    means = []
    try:
        for _ in range(3):                                   # connections warm
            raise_if_any_failed(info, None)
        for _ in range(rounds):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(calls):
                raise_if_any_failed(info, None)
            means.append(1000 * (time.perf_counter() - t0) / calls)
        if rank == 0:
            queue.put(means)
    finally:
        dist.destroy_process_group()


def checkin_ms(world: int, calls: int, rounds: int) -> float:
    """Median over rounds of the mean milliseconds of one check-in among ``world`` processes (rank 0's clock)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = str(Path(tmp) / "init")
        procs = [ctx.Process(target=_worker, args=(r, world, init, calls, rounds, queue)) for r in range(world)]
        for p in procs:
            p.start()
        means = queue.get(timeout=600)
        for p in procs:
            p.join(60)
    return statistics.median(means)


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8], help="process counts W")
    p.add_argument("--calls", type=int, default=200, help="check-ins per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per W (the median is reported)")
    p.add_argument("--every", type=int, default=CHECKIN_EVERY, help="the new cadence: steps between check-ins")
    p.add_argument("--steps", type=int, default=10, help="timed smoke steps (after 3 untimed)")
    args = p.parse_args()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    load_before = os.getloadavg()[0]
    step = smoke_step_ms(args.steps, 3)
    print(f"smoke step (convnextv2_atto, 64 px, 4 + 8 images, bidirectional, one process, "
          f"{torch.get_num_threads()} threads): {step:.1f} ms; {os.cpu_count()} cores, load average "
          f"{load_before:.2f} at start")
    print(f"{'W':>3} | {'check-in':>9} | {'every step: per step':>21} | {'every ' + str(args.every) + ': per step':>22}")
    for world in args.worlds:
        cost = checkin_ms(world, args.calls, args.rounds)
        new = cost / args.every
        print(f"{world:>3} | {cost:>6.3f} ms | {cost:>8.3f} ms = {100 * cost / step:>6.2f} % | "
              f"{new:>8.4f} ms = {100 * new / step:>6.3f} %", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
