"""Training img/s on a CPU, idle and beside a competing CPU load, with OpenMP's idle threads spinning or sleeping.

    python bench/bench_load.py                      # the demo's configuration, about 4 minutes on 2 cores
    python bench/bench_load.py --workload demo      # the demo's real training loop, loader workers included

Each case runs in a fresh process (OMP_WAIT_POLICY is read once, when torch's OpenMP starts): the training step of
``bench/bench_train.py`` (student + teacher, bidirectional phase, synthetic images) for ``--seconds`` after a
warm-up. A loaded case first starts ``--load_procs`` processes that each spin one core for the case's duration
(the "other job" of a shared machine), and stops them after. Cases run in rounds, interleaved, and the median
per case is reported, with the machine's load average (which includes whatever else runs there) before each.

``--workload demo`` times the training script itself instead (``train_sketchy_ext.py`` with the demo's flags on a
small generated demo tree, its 2 loader worker processes decoding beside the training threads): the epochs'
img/s after ``--demo_steps`` steps each, the second epoch's reported (the first warms up).

``--policies``: "unset" is OpenMP's own default (GNU OpenMP: spin a while, then sleep); "auto" is what the
project's entry points do (utils/runtime.py: PASSIVE when other threads are runnable at start, else OpenMP's
default), chosen in the case's process before torch loads, beside that case's load. ``--threads`` adds loaded cases with that many torch threads.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def project_choice() -> None:
    """Case "auto": the project's own choice, made as every entry point makes it (importing a project package
    first). Other cases load torch with the environment the parent gave."""
    sys.path.insert(0, str(ROOT))
    if os.environ.get("BENCH_LOAD_AUTO") == "1":
        import utils  # noqa: F401  (utils/runtime.py chooses here)


def child(args: list[str]) -> None:
    """One case: torch loads here first, with the OMP_WAIT_POLICY the parent chose (the project's set-up is not
    imported before it, so "unset" stays unset)."""
    model, img_size, batch_size, seconds, threads = args[0], int(args[1]), int(args[2]), float(args[3]), int(args[4])
    project_choice()
    import torch

    if threads:
        torch.set_num_threads(threads)
    from bench.bench_train import TrainStep, synthetic_batch, time_steps

    device = torch.device("cpu")
    step = TrainStep(model, 8, device)
    n_sketch = batch_size // 3
    batch = synthetic_batch(n_sketch, batch_size - n_sketch, img_size, 8, device)
    timing = time_steps(lambda: step.step(batch, True), device, warmup=2, min_steps=3, budget_s=seconds)
    print(json.dumps({"img_s": timing["steps"] * batch_size / timing["seconds"], "threads": torch.get_num_threads(),
                      "steps": timing["steps"]}))


DEMO_FLAGS = ["--pretrained", "none", "--model", "convnextv2_atto", "--img_size", "64", "--batch_size", "30",
              "--lr", "3e-4", "--lr_decay", "1.0", "--augment", "none", "--classifier_init_std", "0.02",
              "--epochs", "2", "--warmup_epochs", "0", "--workers", "2", "--max_val_images", "30", "--no_figures"]


def demo_child(args: list[str]) -> None:
    """One demo-workload case: torch first (with the parent's OpenMP setting), then the training script's main."""
    data_root, steps, threads = args[0], int(args[1]), int(args[2])
    import tempfile

    project_choice()
    import torch

    if threads:
        torch.set_num_threads(threads)
    import contextlib
    import io

    from engine.train import main
    from utils.run_files import LOG_FILE

    with tempfile.TemporaryDirectory() as savedir, contextlib.redirect_stdout(io.StringIO()):
        main("sketchy", ["--data_root", data_root, "--savedir", savedir, "--max_steps_per_epoch", str(steps),
                         *DEMO_FLAGS])
        epochs = [json.loads(line) for line in (Path(savedir) / LOG_FILE).read_text().splitlines() if line.strip()]
    print(json.dumps({"img_s": epochs[-1]["images_per_s"], "threads": torch.get_num_threads(),
                      "steps": epochs[-1]["steps"]}))


def label(policy: Optional[str]) -> str:
    if policy == "auto":
        return "auto (the project's choice)"
    return "OMP_WAIT_POLICY unset" if policy is None else policy if "=" in policy else f"OMP_WAIT_POLICY={policy}"


def run_case(policy: Optional[str], load_procs: int, threads: int, opts) -> dict:
    """``policy``: None (OpenMP's default), a value of OMP_WAIT_POLICY, or NAME=VALUE settings joined by commas."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "SBKA_OPENMP_AUTO")}
    if policy == "auto":
        env["BENCH_LOAD_AUTO"] = "1"
    elif policy and "=" in policy:
        env.update(item.split("=", 1) for item in policy.split(","))
    elif policy:
        env["OMP_WAIT_POLICY"] = policy
    load_before = os.getloadavg()[0]
    budget = opts.seconds + 900          # loading torch takes a minute on a busy machine; spinners die with the case
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN, str(budget)]) for _ in range(load_procs)]
    time.sleep(0.3 if spinners else 0)       # the other work is running when the case starts
    try:
        child_args = ["--demo_child", opts.data_root, str(opts.demo_steps), str(threads)] \
            if opts.workload == "demo" else ["--child", opts.model, str(opts.img_size), str(opts.batch_size),
                                             str(opts.seconds), str(threads)]
        proc = subprocess.run([sys.executable, __file__, *child_args],
                              env=env, capture_output=True, text=True, timeout=budget)
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    if proc.returncode != 0:
        raise SystemExit(f"error: a benchmark case failed:\n{proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": load_before}


def main(argv: Optional[Sequence[str]] = None) -> None:
    sys.path.insert(0, str(ROOT))
    from utils.cli import ArgumentParser

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnextv2_atto", help="timm model (the demo's)")
    p.add_argument("--img_size", type=int, default=64, help="input size (the demo's)")
    p.add_argument("--batch_size", type=int, default=30, help="images per step (the demo's)")
    p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per case, after a 2-step warm-up")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all cases (median per case)")
    p.add_argument("--load_procs", type=int, default=1, help="processes spinning one core each in a loaded case")
    p.add_argument("--threads", type=int, nargs="*", default=[1],
                   help="extra cases with this many torch threads under load (0 = torch's default)")
    p.add_argument("--policies", nargs="+", default=["unset", "PASSIVE", "auto"],
                   help="settings compared: 'unset', 'auto' (the project's), an OMP_WAIT_POLICY value, or "
                        "NAME=VALUE[,NAME=VALUE] (e.g. GOMP_SPINCOUNT=10000)")
    p.add_argument("--workload", choices=("step", "demo"), default="step",
                   help="step: the training step on synthetic images; demo: the training script on a demo tree")
    p.add_argument("--demo_steps", type=int, default=40, help="steps per epoch of the demo workload")
    opts = p.parse_args(argv)
    if opts.workload == "demo":
        import tempfile

        from data.demo import generate_demo_dataset

        tmp = tempfile.TemporaryDirectory(prefix="bench_load_")
        opts.data_root = tmp.name
        generate_demo_dataset(Path(tmp.name), sketches_per_class=60, photos_per_class=60, zero_per_class=10,
                              workers=2)
    cores = os.cpu_count() or 1
    policies = [None if x == "unset" else x for x in opts.policies]
    cases = [(policy, load, 0) for load in (0, opts.load_procs) for policy in policies]
    cases += [(policy, opts.load_procs, t) for t in opts.threads if t for policy in policies]
    what = f"the demo's training script, {opts.demo_steps} steps per epoch" if opts.workload == "demo" else \
        f"{opts.model}, {opts.img_size}px, batch {opts.batch_size}, bidirectional step, {opts.seconds:g} s per case"
    print(f"{what}; {cores} cores; loaded = {opts.load_procs} process(es) spinning one core each; {opts.rounds} rounds",
          flush=True)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)", flush=True)
    results: dict[tuple, list[dict]] = {c: [] for c in cases}
    for r in range(opts.rounds):
        for case in cases:
            results[case].append(run_case(case[0], case[1], case[2], opts))
            policy, load, threads = case
            last = results[case][-1]
            print(f"  round {r + 1}: {label(policy):30s} load={load} threads={last['threads']}: "
                  f"{last['img_s']:6.1f} img/s (load average before: {last['load_before']:.2f})", flush=True)
    median = {c: statistics.median(x["img_s"] for x in v) for c, v in results.items()}
    idle = median[(policies[0], 0, 0)]
    print(f"\nmedian img/s (ratio to {opts.policies[0]}, idle):")
    for (policy, load, threads), value in median.items():
        where = "idle  " if not load else f"loaded ({load} spinning)"
        print(f"  {label(policy):30s} {where:22s} threads={results[(policy, load, threads)][0]['threads']}: "
              f"{value:6.1f} img/s  ({value / idle:.2f}x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--demo_child":
        demo_child(sys.argv[2:])
    else:
        main()
