"""``python -m data.from_folders ROOT``: your own sketches and photos, one folder per class, as a zero-shot split.

``ROOT/sketches/<class>/*`` and ``ROOT/photos/<class>/*`` become the public list-file layout every loader
reads (METHOD.md section 1), in ``ROOT/zeroshot/`` with Sketchy's (SAKE-style) file names: the training,
validation (a seeded per-class share of the seen classes' sketches) and zero lists, ``cname_cid.txt``,
``cname_cid_zero.txt`` and ``from_folders.json`` (how the split was made). Train and test it with the
``custom/zeroshot`` setting: ``python train_custom.py --data_root ROOT``. No ``cid_mask.pickle`` is written:
the semantic bias needs each class's relatedness to the 1000 ImageNet classes, which a custom set does not
have, so training runs without it, as QuickDraw's does.

The split depends only on the class folders, the file names and ``--seed``: classes and files are taken in
sorted order, and every image is decoded once with the training reader (data/images.py); an unreadable one
is left out of the lists and named.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import tempfile
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from data.lists import list_can_hold, list_text
from data.registry import SAKE_NAMES, get_setting
from utils.cli import ArgumentParser
from utils.cpus import usable_cores
from utils.errors import UserError, run_cli

SETTING_NAME = "custom/zeroshot"
SKETCHES, PHOTOS = "sketches", "photos"
RECORD_FILE = "from_folders.json"         # also marks a split folder this tool may replace
CLASS_FILE, ZERO_CLASS_FILE = "cname_cid.txt", "cname_cid_zero.txt"
WRITTEN = (*SAKE_NAMES.values(), CLASS_FILE, ZERO_CLASS_FILE, RECORD_FILE)
# File name endings taken as images (Pillow reads them all); other files are left out and named.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
DEFAULT_UNSEEN_FRACTION = 0.25
DEFAULT_VAL_FRACTION = 0.1
MAX_NAMED = 10                            # files named in one message, then a count


def _named(items: Sequence[str], limit: int = MAX_NAMED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------- reading
@dataclass
class Tree:
    """The class folders of ROOT: class -> image paths relative to ROOT (sorted), per modality."""

    root: Path
    images: dict = field(default_factory=lambda: {SKETCHES: {}, PHOTOS: {}})
    ignored: list = field(default_factory=list)     # files without an image ending (relative paths)

    @property
    def classes(self) -> list[str]:
        return sorted(self.images[SKETCHES])


def check_class_name(name: str, folder: Path) -> None:
    """A class name must survive a class file's line (``<name> <id>``) unchanged."""
    if not list_can_hold(name):
        raise UserError(f"class folder {folder} has a name the list files cannot hold ({name!r}: a line break, "
                        "a leading or trailing space, or bytes that are not UTF-8): rename the folder")


def class_images(root: Path, folder: Path) -> tuple[list[str], list[str]]:
    """(image paths, other files) under one class folder, relative to ``root``, sorted; hidden files skipped."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            (images if Path(name).suffix.lower() in IMAGE_SUFFIXES else others).append(rel)
    for rel in images:
        if not list_can_hold(rel):
            raise UserError(f"image {root / rel} has a path the list files cannot hold ({rel!r}: a line break, a "
                            "leading or trailing space, or bytes that are not UTF-8): rename it")
    return sorted(images), sorted(others)


def read_tree(root: Path) -> Tree:
    """Every class folder of ROOT/sketches and ROOT/photos; one sentence for each thing that is wrong."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: pass the folder that holds {SKETCHES}/ and {PHOTOS}/")
    missing = [m for m in (SKETCHES, PHOTOS) if not (root / m).is_dir()]
    if missing:
        raise UserError(f"{root} has no {' and no '.join(m + '/' for m in missing)} folder: put the sketches in "
                        f"{root / SKETCHES}/<class>/ and the photos in {root / PHOTOS}/<class>/")
    tree = Tree(root)
    for modality in (SKETCHES, PHOTOS):
        for entry in sorted(os.scandir(root / modality), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                tree.ignored.append(f"{modality}/{entry.name}")
                continue
            folder = root / modality / entry.name
            check_class_name(entry.name, folder)
            images, others = class_images(root, folder)
            tree.ignored += others
            if not images:
                what = f" (only {_named(others, 3)}, which are not images by their name)" if others else ""
                raise UserError(f"class folder {folder} has no images{what}: add its {modality} or remove the folder")
            tree.images[modality][entry.name] = images
    for have, lack in ((SKETCHES, PHOTOS), (PHOTOS, SKETCHES)):
        only = sorted(set(tree.images[have]) - set(tree.images[lack]))
        if only:
            raise UserError(f"{len(only)} class(es) have {have} but no {lack} folder: "
                            f"{_named([repr(c) for c in only])}; add {root / lack}/<class>/ for each, or remove "
                            f"their {have} folder")
    if not tree.classes:
        raise UserError(f"{root / SKETCHES} holds no class folders: put each class's sketches in "
                        f"{root / SKETCHES}/<class>/")
    return tree


def drop_unreadable(tree: Tree, workers: int) -> list[str]:
    """Decode every image with the training reader; unreadable ones leave the tree. Returns their messages."""
    from data.check import decode_all

    files = [str(tree.root / rel) for modality in tree.images.values() for rels in modality.values() for rel in rels]
    outcome = decode_all(files, workers, desc="decode images")
    problems = []
    for modality, by_class in tree.images.items():
        for name, rels in by_class.items():
            keep = []
            for rel in rels:
                why = outcome[str(tree.root / rel)]
                if why is None:
                    keep.append(rel)
                else:
                    problems.append(f"{tree.root / rel} {why}")
            if not keep:
                raise UserError(f"class folder {tree.root / modality / name} has no readable images (every one "
                                f"of its {len(rels)} files cannot be decoded, e.g. {problems[-1]}): fix or remove it")
            by_class[name] = keep
    return problems


# ----------------------------------------------------------------------------------------------- the split
def choose_unseen(classes: list[str], unseen: Optional[Sequence[str]], fraction: Optional[float],
                  seed: int) -> list[str]:
    """The unseen classes: those named, or a seeded draw of ``fraction`` of them (at least one)."""
    if len(classes) < 3:
        raise UserError(f"{len(classes)} class folder(s) ({_named(classes)}): a zero-shot split needs at least three, "
                        "two seen classes to train on and one unseen class to test on")
    if unseen:
        known = set(classes)
        for name in unseen:
            if name not in known:
                close = difflib.get_close_matches(name, classes, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; the classes are {_named(classes)}"
                raise UserError(f"--unseen: {name!r} is not a class folder of both {SKETCHES}/ and {PHOTOS}/{hint}")
        chosen = sorted(set(unseen))
    else:
        fraction = DEFAULT_UNSEEN_FRACTION if fraction is None else fraction
        if not 0 < fraction < 1:
            raise UserError(f"--unseen_fraction must be between 0 and 1 (exclusive), got {fraction}")
        n_unseen = max(1, int(round(fraction * len(classes))))
        picked = np.random.default_rng(seed).choice(len(classes), size=min(n_unseen, len(classes)), replace=False)
        chosen = sorted(classes[i] for i in picked)
    n_seen = len(classes) - len(chosen)
    if n_seen < 2:
        raise UserError(f"{len(classes)} classes with {len(chosen)} unseen leave {n_seen} seen class(es): training "
                        "needs at least two seen classes (add class folders or name fewer --unseen classes)")
    return chosen


def validation_share(sketches: list[str], fraction: float, rng: np.random.Generator) -> set[str]:
    """A seeded ``fraction`` of one class's sketches (at least one when it has two or more, never all)."""
    if fraction <= 0 or len(sketches) < 2:
        return set()
    n = min(len(sketches) - 1, max(1, int(round(fraction * len(sketches)))))
    return {sketches[i] for i in rng.choice(len(sketches), size=n, replace=False)}


def build_lists(tree: Tree, unseen: list[str], val_fraction: float, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Role -> [(relative path, label)], in class then path order (seen and unseen labels each start at 0)."""
    unseen_set = set(unseen)
    seen_ids = {c: i for i, c in enumerate(c for c in tree.classes if c not in unseen_set)}
    zero_ids = {c: i for i, c in enumerate(unseen)}
    lists: dict[str, list[tuple[str, int]]] = {role: [] for role in SAKE_NAMES}
    rng = np.random.default_rng([seed, 1])             # a stream of its own: the unseen draw does not move it
    for name in tree.classes:
        sketches, photos = tree.images[SKETCHES][name], tree.images[PHOTOS][name]
        if name in unseen_set:
            lists["sketch_zero"] += [(p, zero_ids[name]) for p in sketches]
            lists["photo_zero"] += [(p, zero_ids[name]) for p in photos]
            continue
        held = validation_share(sketches, val_fraction, rng)
        lists["sketch_train"] += [(p, seen_ids[name]) for p in sketches if p not in held]
        lists["sketch_test"] += [(p, seen_ids[name]) for p in sketches if p in held]
        lists["photo_train"] += [(p, seen_ids[name]) for p in photos]
    if not lists["sketch_test"]:
        del lists["sketch_test"]
    lists[CLASS_FILE] = list(seen_ids.items())
    lists[ZERO_CLASS_FILE] = list(zero_ids.items())
    return lists


# ----------------------------------------------------------------------------------------------- writing
def previous_split(split: Path) -> Optional[dict]:
    """The record of a split this tool wrote earlier, None when there is none; refuses a folder it did not write."""
    if not split.exists():
        return None
    if not split.is_dir():
        raise UserError(f"{split} exists and is not a folder: move it away, then run again")
    record_file = split / RECORD_FILE
    if not record_file.is_file():
        raise UserError(f"{split} exists but was not written by data.from_folders (no {RECORD_FILE}): it may hold "
                        "lists of your own, so it is not replaced; move it away, then run again")
    foreign = sorted(p.name for p in split.iterdir() if p.name not in WRITTEN)
    if foreign:
        raise UserError(f"{split} holds files data.from_folders did not write ({_named(foreign)}): they would be "
                        "lost when the split is replaced; move them away, then run again")
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def write_split(split: Path, files: dict[str, str]) -> None:
    """Write every file into a temporary sibling folder, then swap it in for ``split`` (two renames)."""
    tmp = split.parent / f".{split.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()                                      # the umask's permissions, like any folder the user makes
    old = None
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if split.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{split.name}.", suffix=".old", dir=split.parent))
            os.replace(split, old / split.name)
        os.replace(tmp, split)
    except BaseException:
        if old is not None and (old / split.name).exists() and not split.exists():
            os.replace(old / split.name, split)          # put the earlier split back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def replaced_message(split: Path, record: dict, unseen: list[str], counts: dict[str, int]) -> str:
    """What re-running changed, said in one line."""
    before = record.get("unseen")
    same_unseen = "the same unseen classes" if before == unseen else (
        f"the unseen classes were {_named(before or [])}" if isinstance(before, list) else "unseen classes unknown")
    same_counts = "the same list sizes" if record.get("counts") == counts else "other list sizes"
    return f"replaced the earlier {split}/ ({same_unseen}, {same_counts})"


def make_split(root: Path, unseen: Optional[Sequence[str]] = None, unseen_fraction: Optional[float] = None,
               seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION, workers: int = 0) -> dict:
    """Write ROOT/zeroshot/ from ROOT's class folders; returns the record also written to from_folders.json."""
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction must be at least 0 and below 1, got {val_fraction}")
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    setting = get_setting(SETTING_NAME)
    split = root / setting.split_dir
    tree = read_tree(root)
    chosen = choose_unseen(tree.classes, unseen, unseen_fraction, seed)
    record_before = previous_split(split)
    unreadable = drop_unreadable(tree, workers)
    lists = build_lists(tree, chosen, val_fraction, seed)
    counts = {role: len(lists[role]) for role in SAKE_NAMES if role in lists}
    record = {"made_by": "python -m data.from_folders", "seed": seed, "val_fraction": val_fraction,
              "unseen_fraction": None if unseen else (DEFAULT_UNSEEN_FRACTION if unseen_fraction is None
                                                      else unseen_fraction),
              "seen": [name for name, _ in lists[CLASS_FILE]], "unseen": chosen, "counts": counts,
              "unreadable_left_out": unreadable, "ignored_files": tree.ignored}
    files = {SAKE_NAMES[role]: list_text(lists[role]) for role in counts}
    files[CLASS_FILE] = list_text(lists[CLASS_FILE])
    files[ZERO_CLASS_FILE] = list_text(lists[ZERO_CLASS_FILE])
    files[RECORD_FILE] = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    write_split(split, files)
    record["replaced"] = (replaced_message(split, record_before, chosen, counts)
                          if record_before is not None else None)
    return record


# ----------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m data.from_folders",
        description="Turn ROOT/sketches/<class>/* and ROOT/photos/<class>/* into a zero-shot split in ROOT/zeroshot/ "
                    "(the custom/zeroshot setting: python train_custom.py --data_root ROOT).")
    p.add_argument("root", type=Path, metavar="ROOT",
                   help="your dataset folder, holding sketches/<class>/ and photos/<class>/ (required: no default)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--unseen", nargs="+", metavar="CLASS", default=None,
                       help="the unseen (test) classes, by folder name (default: drawn, see --unseen_fraction)")
    which.add_argument("--unseen_fraction", type=float, default=None,
                       help=f"draw this fraction of the classes as unseen, at least one, with --seed "
                            f"(default when --unseen is not given: {DEFAULT_UNSEEN_FRACTION})")
    p.add_argument("--seed", type=int, default=0, help="seed of the unseen draw and of the validation share")
    p.add_argument("--val_fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="share of each seen class's sketches in the validation list (0: none; training then holds "
                        "out 5 %% of the training sketches itself)")
    p.add_argument("--workers", type=int, default=min(4, usable_cores()),
                   help="processes decoding the images (0: in this process)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    record = make_split(args.root, args.unseen, args.unseen_fraction, args.seed, args.val_fraction, args.workers)
    split = args.root / get_setting(SETTING_NAME).split_dir
    counts = record["counts"]
    if record["ignored_files"]:
        print(f"note: {len(record['ignored_files'])} file(s) that are not images by their name were left out: "
              f"{_named(record['ignored_files'])}")
    if record["unreadable_left_out"]:
        print(f"warning: {len(record['unreadable_left_out'])} unreadable image(s) were skipped (left out of the "
              f"lists, listed in {split / RECORD_FILE}): {_named(record['unreadable_left_out'], 5)}")
    if record["replaced"]:
        print(record["replaced"])
    print(f"{len(record['seen'])} seen classes: sketches {counts['sketch_train']} train / "
          f"{counts.get('sketch_test', 0)} validation, photos {counts['photo_train']}; "
          f"{len(record['unseen'])} unseen classes ({_named(record['unseen'])}): sketches {counts['sketch_zero']}, "
          f"photos {counts['photo_zero']}")
    print(f"written to {split}/ in {time.perf_counter() - started:.1f} s: "
          f"{', '.join(n for n in WRITTEN if (split / n).is_file())}")
    print("no cid_mask.pickle: the semantic bias needs each class's relatedness to the ImageNet classes, which a "
          "custom set does not have; training runs without it, as QuickDraw's does")
    root = shlex.quote(str(args.root))
    print(f"next: python -m data.check --setting {SETTING_NAME} --data_root {root}, then "
          f"python train_custom.py --data_root {root}")


if __name__ == "__main__":
    run_cli(main)
