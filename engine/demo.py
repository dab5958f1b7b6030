"""``make demo``: the whole pipeline on the generated demo dataset, on a CPU, in minutes.

1. generate ``datasets/Demo`` (Sketchy layout, 8 seen + 4 unseen shape classes);
2. score the *untrained* network (same seed, same initial weights) on the unseen classes: the baseline, in
   ``<savedir>_untrained`` beside the run;
3. train with the real Sketchy engine (warm-up, then bidirectional) from random weights;
4. test with the real Sketchy test engine in mode 2 and print the table;
5. print the before/after unseen-class mAP@all and where the results and pictures are.

``python -m engine.demo --help`` lists the few knobs; the defaults are what the README describes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


from data.demo import MARKER_FILE, generate_demo_dataset
from data.lists import read_class_file
from data.registry import get_setting
from retrieval.result_kinds import BASELINE_LABEL, DEMO_LABEL
from utils.cli import ArgumentParser
from utils.errors import UserError, run_cli
from utils.run_files import (BEST_CHECKPOINT_FILE, EXAMPLES_FILE, PR_CURVE_FILE, RESULTS_FILE, RESULTS_MARKDOWN_FILE,
                             TRAINING_CURVES_FILE)

SETTING = "sketchy/zeroshot1"
DEMO_MODEL = "convnextv2_atto"
ABOUT = (f"The demo: SBKA's whole pipeline on generated shapes, trained from random weights ({DEMO_MODEL}, no "
         "download) on this CPU in minutes. It shows the code runs and learns features that carry over to unseen "
         "classes; its numbers are not Sketchy's.")
DEMO_MARKER = ".demo-run"      # a folder holding it is the demo's: the next demo may replace it
DEMO_PQ_K = ("2", "3", "4", "5", "6")
# From random weights the released 2e-5 init of the seen-class classifier starves the backbone of gradient
# for a few hundred steps; the demo uses timm's usual head init so that learning shows within minutes.
DEMO_CLASSIFIER_STD = 0.02


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m engine.demo", description=__doc__.splitlines()[0])
    p.add_argument("--data_root", default="datasets/Demo", help="where the demo dataset is generated")
    p.add_argument("--savedir", default="checkpoint/demo",
                   help="run directory (replaced on every demo; the untrained baseline is scored beside it, in "
                        "<savedir>_untrained)")
    p.add_argument("--img_size", type=int, default=64, help="input size")
    p.add_argument("--epochs", type=int, default=7, help="training epochs (warm-up included)")
    p.add_argument("--warmup_epochs", type=int, default=4, help="epochs 0..N-1 train the student only")
    p.add_argument("--batch_size", type=int, default=30, help="10 sketches + 20 photos, the Sketchy split")
    p.add_argument("--lr", type=float, default=3e-4, help="student and teacher-head learning rate")
    p.add_argument("--lr_decay", type=float, default=1.0, help="lr(e) = lr * lr_decay ** (e / epochs)")
    p.add_argument("--augment", choices=("released", "none"), default="none",
                   help="training augmentation (the released one slows learning from random weights)")
    p.add_argument("--sketches_per_class", type=int, default=360, help="per seen class (20%% become validation)")
    p.add_argument("--photos_per_class", type=int, default=320, help="per seen class")
    p.add_argument("--zero_per_class", type=int, default=100, help="sketches and photos per unseen class")
    p.add_argument("--workers", type=int, default=2, help="image drawing processes and loader workers")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset, the weights and the test")
    p.add_argument("--mode", type=int, choices=(1, 2), default=2, help="test mode (2 = with one-to-many)")
    p.add_argument("--no_figures", action="store_true", help="do not draw the pictures")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _unseen_map(resume_dir: Path) -> float:
    results = json.loads((resume_dir / RESULTS_FILE).read_text())
    return float(results["one_to_one"]["per_class"]["mAP@all"])


def baseline_dir_of(savedir: Path) -> Path:
    """Where the untrained baseline is scored: beside the demo run (``checkpoint/demo_untrained``), not inside it,
    so that no folder of the demo looks like a second run of it."""
    return savedir.with_name(f"{savedir.name}_untrained")


def untrained_baseline(args: argparse.Namespace, split_dir: Path, out: Path) -> float:
    """Unseen-class mAP@all (one-to-one, per class) of the network the training starts from."""
    from engine import evaluate, train
    from engine.runs import student_checkpoint, student_config
    from utils.checkpoint import atomic_save

    n_seen = len(read_class_file(split_dir / "cname_cid.txt"))
    student = train.initial_student(DEMO_MODEL, n_seen, None, DEMO_CLASSIFIER_STD, args.seed)
    config = student_config(get_setting(SETTING), DEMO_MODEL, n_seen, args.img_size, student.feature_dim)
    atomic_save(student_checkpoint(student.state_dict(), config, epoch=0), out / BEST_CHECKPOINT_FILE)
    evaluate.main(["--data_root", args.data_root, "--resume_dir", str(out), "--mode", "1", "--no_figures",
                   "--workers", str(args.workers), "--label", BASELINE_LABEL, "--kind", "baseline"], SETTING)
    return _unseen_map(out)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Run the demo; returns the unseen-class mAP@all before and after training."""
    args = parse(list(sys.argv[1:] if argv is None else argv))
    from engine import evaluate, train      # torch loads here, after the flags were read (a typo answers at once)

    start = time.perf_counter()
    print(ABOUT, flush=True)
    data_root, savedir = Path(args.data_root), Path(args.savedir)
    baseline_dir = baseline_dir_of(savedir)
    for folder in (savedir, baseline_dir):      # both refused before either is replaced
        if folder.exists() and not (folder / DEMO_MARKER).exists() and any(folder.iterdir()):
            raise UserError(f"{folder} exists and is not a demo run directory; pass another --savedir")
    for folder in (savedir, baseline_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / DEMO_MARKER).write_text("written by `make demo`; replaced by the next demo\n")
    force = (data_root / "Sketchy" / MARKER_FILE).exists()
    print(f"[1/4] generating the demo dataset in {data_root}", flush=True)
    split_dir = generate_demo_dataset(data_root, seed=args.seed, sketches_per_class=args.sketches_per_class,
                                      photos_per_class=args.photos_per_class, force=force,
                                      zero_per_class=args.zero_per_class, workers=max(1, args.workers)) / "zeroshot1"

    print("[2/4] scoring the untrained network on the unseen classes (the baseline)", flush=True)
    baseline = untrained_baseline(args, split_dir, baseline_dir)

    print(f"[3/4] training SBKA from random weights: {DEMO_MODEL}, {args.img_size}px, batch {args.batch_size}, "
          f"lr {args.lr:g}, {args.epochs} epochs ({args.warmup_epochs} warm-up), augmentation {args.augment}", flush=True)
    common = ["--data_root", str(data_root), "--seed", str(args.seed),
              "--workers", str(args.workers)] + (["--no_figures"] if args.no_figures else [])
    train.main("sketchy", demo=True, argv=[
                           "--savedir", str(savedir), "--pretrained", "none", "--model", DEMO_MODEL,
                           "--img_size", str(args.img_size), "--epochs", str(args.epochs),
                           "--warmup_epochs", str(args.warmup_epochs), "--batch_size", str(args.batch_size),
                           "--lr", str(args.lr), "--lr_decay", str(args.lr_decay), "--augment", args.augment,
                           "--classifier_init_std", str(DEMO_CLASSIFIER_STD),
                           *common])

    print(f"[4/4] testing (mode {args.mode}{': one-to-one and one-to-many cluster matching' if args.mode == 2 else ''})",
          flush=True)
    evaluate.main(["--resume_dir", str(savedir), "--mode", str(args.mode), "--pq_m", "2", "4", "--pq_k", *DEMO_PQ_K,
                   "--extract", "--label", DEMO_LABEL, "--kind", "demo", *common], SETTING)

    trained = _unseen_map(savedir)
    minutes = (time.perf_counter() - start) / 60
    print()
    print(f"unseen-class mAP@all (one-to-one, per class): untrained {baseline:.4f} -> trained {trained:.4f} "
          f"({trained - baseline:+.4f})")
    print(f"demo finished in {minutes:.1f} min. Results: {savedir / RESULTS_FILE}, {savedir / RESULTS_MARKDOWN_FILE} "
          f"(the untrained network's: {baseline_dir / RESULTS_FILE})")
    if not args.no_figures:
        print(f"Pictures (each with a vector PDF beside it): {savedir / TRAINING_CURVES_FILE}, "
              f"{savedir / EXAMPLES_FILE}, {savedir / PR_CURVE_FILE}")
    return {"untrained": baseline, "trained": trained}


if __name__ == "__main__":
    run_cli(main)
