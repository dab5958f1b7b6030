"""``python -m engine.check`` (the full check: the data checks plus the pretrained checkpoint) on a Sketchy tree of
the public list sizes (a benchmark, not a test).

The tree has both Sketchy splits with the line counts of METHOD.md section 1 (zeroshot1: 55,252 / 5,000 /
15,229 sketches, 68,401 / 17,101 photos; zeroshot2: 57,587 / 12,694 sketches, 72,949 / 12,553 photos). As in
the real package the two splits share one pool of images (75,481 sketches, 85,502 photos), here hard links
to one 256x256 PNG sketch and one 256x256 JPEG photo, so every line names its own file but the disk holds few
images (one copy per class folder: file systems cap the links per file; decoding is measured, reading from a
cold disk is not). The pretrained check loads a generated
convnextv2_tiny checkpoint in the official naming. Timed: the full check and ``--quick``.

    .venv/bin/python bench/bench_data_check.py --tree /tmp/sized_sketchy
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.registry import SAKE_NAMES  # noqa: E402
from utils.cli import ArgumentParser
from utils.cpus import usable_cores

SKETCHES, PHOTOS = 75_481, 85_502
SPLITS = {  # split -> (seen, unseen, {role: (first, last) index into the sketch / photo pool})
    "zeroshot1": (100, 25, {"sketch_train": (0, 55_252), "sketch_test": (55_252, 60_252),
                            "sketch_zero": (60_252, 75_481), "photo_train": (0, 68_401), "photo_zero": (68_401, 85_502)}),
    "zeroshot2": (104, 21, {"sketch_train": (0, 57_587), "sketch_zero": (57_587, 70_281),
                            "photo_train": (0, 72_949), "photo_zero": (72_949, 85_502)}),
}
FOLDERS = 125


def _seed_images(tmp: Path) -> tuple[Path, Path]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    sketch = Image.new("L", (256, 256), 255)
    draw = ImageDraw.Draw(sketch)
    for _ in range(40):
        draw.line([tuple(rng.integers(0, 256, 2)) for _ in range(2)], fill=0, width=2)
    photo = Image.fromarray(np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8)).resize((256, 256))
    tmp.mkdir(parents=True, exist_ok=True)
    sketch.convert("RGB").save(tmp / "sketch.png")
    photo.save(tmp / "photo.jpg", quality=90)
    return tmp / "sketch.png", tmp / "photo.jpg"


def build_tree(tree: Path) -> Path:
    root = tree / "datasets" / "Sketchy"
    if (root / "zeroshot2" / SAKE_NAMES["photo_zero"]).is_file():
        return tree / "datasets"
    sketch_src, photo_src = _seed_images(tree / "seed")
    pools = {}
    for modality, n, src, folder, ext in (("sketch", SKETCHES, sketch_src, "256x256/sketch/tx_000000000000_ready", "png"),
                                          ("photo", PHOTOS, photo_src, "256x256/photo/tx_000000000000_ready", "jpg")):
        rels = []
        for i in range(n):
            rel = f"{folder}/k{i % FOLDERS:03d}/{i}.{ext}"
            target = root / rel
            seed = src.with_name(f"{src.stem}_{i % FOLDERS}{src.suffix}")
            if i < FOLDERS:
                target.parent.mkdir(parents=True, exist_ok=True)
                seed.write_bytes(src.read_bytes())
            if not target.exists():
                os.link(seed, target)
            rels.append(rel)
        pools[modality] = rels
    for split, (n_seen, n_unseen, roles) in SPLITS.items():
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        (d / "cname_cid.txt").write_text("".join(f"class {i} {i}\n" for i in range(n_seen)))
        (d / "cname_cid_zero.txt").write_text("".join(f"unseen class {i} {i}\n" for i in range(n_unseen)))
        for role, (a, b) in roles.items():
            n_classes = n_unseen if role.endswith("_zero") else n_seen
            rels = pools[role.split("_")[0]][a:b]
            (d / SAKE_NAMES[role]).write_text("".join(f"{r} {i % n_classes}\n" for i, r in enumerate(rels)))
        rng = np.random.default_rng(1)
        (d / "cid_mask.pickle").write_bytes(pickle.dumps({i: rng.random(1000) for i in range(n_seen)}, protocol=2))
    return tree / "datasets"


def official_tiny(path: Path) -> Path:
    if not path.is_file():
        import torch

        from models.checkpoint_mapping import timm_to_official
        from models.sbka import _backbone

        torch.save({"model": timm_to_official(_backbone("convnextv2_tiny").state_dict())}, path)
    return path


def main() -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", required=True, help="where the generated tree goes (about 1 GB of directory entries)")
    p.add_argument("--workers", type=int, default=usable_cores())
    args = p.parse_args()
    tree = Path(args.tree)
    t0 = time.perf_counter()
    data_root = build_tree(tree)
    pretrained = official_tiny(tree / "convnextv2_tiny_1k_224_ema.pt")
    print(f"tree ready in {time.perf_counter() - t0:.1f} s: {data_root}")
    base = [sys.executable, "-m", "engine.check", "--data_root", str(data_root), "--runs", str(tree / "runs"),
            "--pretrained", str(pretrained), "--workers", str(args.workers)]
    for label, extra in (("full", []), ("--quick", ["--quick"])):
        t = time.perf_counter()
        proc = subprocess.run(base + extra, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
        print(f"{label}: {time.perf_counter() - t:.1f} s, exit {proc.returncode}")
        print("\n".join(proc.stdout.splitlines()[:4]))


if __name__ == "__main__":
    main()
