"""Tiny datasets in the exact public layouts, generated on the fly for tests."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from data.registry import QUICKDRAW_AUTHORS_NAMES, QUICKDRAW_PUBLIC_NAMES, SAKE_NAMES, TUBERLIN_NAMES, get_setting

# role -> (image folder under the dataset root, extension) per layout
LAYOUTS = {
    "sketchy": {"sketch": ("256x256/sketch/tx_000000000000_ready", "png"),
                "photo": ("256x256/photo/tx_000000000000_ready", "jpg"), "names": SAKE_NAMES},
    "tuberlin": {"sketch": ("png_ready", "png"), "photo": ("ImageResized_ready", "JPEG"), "names": TUBERLIN_NAMES},
    "quickdraw": {"sketch": ("sketches", "png"), "photo": ("images", "jpg"), "names": QUICKDRAW_PUBLIC_NAMES},
    "quickdraw_sake": {"sketch": ("sketches", "png"), "photo": ("images", "jpg"), "names": SAKE_NAMES},
    "quickdraw_authors": {"sketch": ("sketches", "png"), "photo": ("images", "jpg"), "names": QUICKDRAW_AUTHORS_NAMES},
}
SETTING_OF = {"sketchy": "sketchy/zeroshot1", "tuberlin": "tuberlin/zeroshot", "quickdraw": "quickdraw/zeroshot",
              "quickdraw_sake": "quickdraw/zeroshot", "quickdraw_authors": "quickdraw/zeroshot"}


def _image(rng: np.random.Generator, label: int, size: int, photo: bool) -> Image.Image:
    """A class-dependent pattern plus noise, so a network can learn something."""
    base = np.full((size, size, 3), 255 if not photo else 128, dtype=np.float32)
    k = label + 1
    base[:, (np.arange(size) * k // size) % 2 == 0] = 40.0 if not photo else 30.0 * k % 255
    base += rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def make_tree(data_root: Path, layout: str = "sketchy", split_dir: str | None = None, n_seen: int = 3,
              n_unseen: int = 2, sketches: int = 6, photos: int = 6, size: int = 32, test_list: bool = True,
              cid_mask: bool = True, seed: int = 0) -> Path:
    """Write a tiny tree under ``data_root``; returns the split dir. Class names contain spaces."""
    spec = LAYOUTS[layout]
    setting = get_setting(SETTING_OF[layout])
    root = data_root / setting.dataset_dir
    split = root / (split_dir or setting.split_dir)
    split.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seen = [f"seen class {i}" for i in range(n_seen)]
    unseen = [f"unseen class {i}" for i in range(n_unseen)]
    (split / "cname_cid.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(seen)))
    (split / "cname_cid_zero.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(unseen)))
    lists: dict[str, list[str]] = {r: [] for r in spec["names"]}
    for modality, count in (("sketch", sketches), ("photo", photos)):
        folder, ext = spec[modality]
        for names, zero in ((seen, False), (unseen, True)):
            for label, cname in enumerate(names):
                d = root / folder / cname
                d.mkdir(parents=True, exist_ok=True)
                for j in range(count):
                    rel = f"{folder}/{cname}/{j}.{ext}"
                    _image(rng, label + (n_seen if zero else 0), size, modality == "photo").save(
                        root / rel, format="PNG" if ext == "png" else "JPEG")
                    if zero:
                        role = f"{modality}_zero"
                    elif modality == "sketch" and test_list and j == count - 1:
                        role = "sketch_test"
                    else:
                        role = f"{modality}_train"
                    lists[role].append(f"{rel} {label}\n")
    for role, fname in spec["names"].items():
        if lists.get(role):
            (split / fname).write_text("".join(lists[role]))
    if cid_mask:
        mask = {i: rng.random(1000).astype(np.float64) for i in range(n_seen)}
        (split / "cid_mask.pickle").write_bytes(pickle.dumps(mask, protocol=2))
    return split


def make_class_folders(root: Path, classes: Sequence[str], sketches: int = 4, photos: int = 4, size: int = 32,
                       seed: int = 0) -> Path:
    """``root/sketches/<class>/`` and ``root/photos/<class>/`` of demo-generator drawings (data/demo.py), as a
    user would arrange their own images for data.from_folders; file names contain spaces."""
    from data.demo import draw_photo, draw_sketch, image_rng

    for name in classes:
        for modality, draw, code, count, ext in (("sketches", draw_sketch, 0, sketches, "png"),
                                                 ("photos", draw_photo, 1, photos, "jpg")):
            folder = root / modality / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(name, image_rng(seed, code, name, i), size).save(folder / f"{modality[:-1]} {i}.{ext}")
    return root
