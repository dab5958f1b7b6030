"""``python -m data.check``: is the unpacked data right, before any GPU hour is spent?

For every setting whose dataset folder exists under ``--data_root`` (or those named with ``--setting``) it
checks the list files (naming, every line, labels against the class files, counts against the public
package), decodes every listed image (``--quick``: a seeded 2 % sample per list) and the ``cid_mask.pickle``.
It prints one table (setting x check: ok / warning / error and the first message), then every message, and
exits 1 when any check is an error, 0 otherwise.

These are the data checks. The full check, ``python -m engine.check``, runs them with the checks that need the
layers above the data (the pretrained checkpoint, the feature files of the run folders) through ``extra``.
"""
from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from data.lists import parse_list_file, read_class_file
from data.registry import (REQUIRED_ROLES, SETTINGS, Setting, SettingPaths, get_setting, published_settings,
                           resolve_paths)
from utils.cpus import usable_cores
from utils.errors import UserError, run_cli
from utils.cli import ArgumentParser
from utils.progress import progress

# Line counts of the public packages' list files (METHOD.md section 1); None = not published exactly.
PUBLIC_LIST_SIZES: dict[str, dict[str, int]] = {
    "sketchy/zeroshot1": {"sketch_train": 55_252, "photo_train": 68_401, "sketch_test": 5_000,
                          "sketch_zero": 15_229, "photo_zero": 17_101},
    "sketchy/zeroshot2": {"sketch_train": 57_587, "photo_train": 72_949, "sketch_zero": 12_694,
                          "photo_zero": 12_553},
    "tuberlin/zeroshot": {"sketch_train": 15_400, "sketch_test": 2_200, "sketch_zero": 2_400,
                          "photo_zero": 27_989},
    "quickdraw/zeroshot": {"sketch_zero": 92_291, "photo_zero": 54_151},
}
DATA_CHECKS = ("lists", "counts", "images", "cid_mask")
FULL_CHECK = "python -m engine.check"
OK, WARNING, ERROR, SKIPPED = "ok", "warning", "error", "skipped"
MAX_LISTED = 20          # image problems listed per setting, then a count
QUICK_FRACTION = 0.02
CHUNK = 256              # images per pool task
ROLE_ORDER = ("sketch_train", "sketch_test", "sketch_zero", "photo_train", "photo_zero")


@dataclass
class Cell:
    """One check of one setting: its status and its messages (the first one goes into the table)."""

    status: str = OK
    messages: list = field(default_factory=list)

    def add(self, status: str, message: str) -> None:
        rank = (OK, SKIPPED, WARNING, ERROR)
        if rank.index(status) > rank.index(self.status):
            self.status = status
        self.messages.append(message)

    @property
    def first(self) -> str:
        return self.messages[0] if self.messages else ""


@dataclass
class SettingFacts:
    """What the data checks of one setting found, for the checks of the layers above (engine.check)."""

    setting: Setting
    n_unseen: int                     # from the zero class file when readable, else the paper's count
    list_sizes: dict[str, int]        # entries of each list file that parsed, by role


# A check defined above the data layer: given a setting's facts, its cell for that setting (the same Cell may
# serve every setting, e.g. the one pretrained checkpoint). Called after the image decoding.
ExtraCheck = Callable[[SettingFacts], "Cell"]


@dataclass
class ListInfo:
    """A parsed list file of one setting."""

    role: str
    file: Path
    paths: list
    labels: np.ndarray
    lines: list


# ----------------------------------------------------------------------------------------------- lists
def scheme_label(scheme: dict) -> str:
    """A list-file naming, whole: the file names of its required lists (the table cell shortens it, not this)."""
    return ", ".join(scheme[role] for role in REQUIRED_ROLES)


def complete_schemes(setting: Setting, split: Path) -> list[dict]:
    return [s for s in setting.naming_schemes if all((split / s[r]).is_file() for r in REQUIRED_ROLES)]


def folder_class_mismatch(rel: str, label: int, names: list[str], name_set: set[str]) -> Optional[str]:
    """The class the image's folder names when it is a class other than the label's, else None."""
    parts = rel.replace("\\", "/").split("/")
    folder = parts[-2] if len(parts) >= 2 else None
    if folder is None or folder not in name_set or folder == names[label]:
        return None
    return folder


def check_lists(setting: Setting, paths: SettingPaths, lists_cell: Cell, counts_cell: Cell) -> dict[str, ListInfo]:
    """Parse every list of the setting; fills the 'lists' and 'counts' cells, returns what parsed."""
    schemes = complete_schemes(setting, paths.split)
    used = next((s for s in schemes if all(paths.lists.get(r) == paths.split / s[r] for r in REQUIRED_ROLES)),
                schemes[0] if schemes else setting.naming_schemes[0])
    lists_cell.add(OK, f"naming {scheme_label(used)}")
    if len(schemes) > 1:
        others = "; ".join(scheme_label(s) for s in schemes if s is not used)
        lists_cell.add(WARNING, f"{paths.split} holds more than one complete naming; the loaders read "
                                f"{scheme_label(used)}; not {others}")
    try:
        seen = read_class_file(paths.class_file)
        unseen = read_class_file(paths.zero_class_file)
    except UserError as exc:
        lists_cell.add(ERROR, str(exc))
        counts_cell.add(SKIPPED, "needs readable class files")
        return {}
    for names, expected, what, f in ((seen, setting.n_seen, "seen", paths.class_file),
                                     (unseen, setting.n_unseen, "unseen", paths.zero_class_file)):
        if expected is not None and len(names) != expected:
            counts_cell.add(WARNING, f"{f.name} lists {len(names)} {what} classes, the paper's {setting.name} "
                                     f"{expected}")
    if "sketch_test" in PUBLIC_LIST_SIZES.get(setting.name, {}) and "sketch_test" not in paths.lists:
        lists_cell.add(WARNING, f"no validation list ({used['sketch_test']}) in {paths.split}: training "
                                "validates on a hold-out of the training sketches")
    parsed: dict[str, ListInfo] = {}
    public = PUBLIC_LIST_SIZES.get(setting.name, {})
    for role in ROLE_ORDER:
        f = paths.list_file(role)
        if f is None:
            continue
        names, class_file = (unseen, paths.zero_class_file) if role.endswith("_zero") else (seen, paths.class_file)
        try:
            rels, labels, lines = parse_list_file(f, len(names), class_file, with_line_numbers=True)
        except UserError as exc:
            lists_cell.add(ERROR, str(exc))
            continue
        name_set = set(names)
        for rel, label, line in zip(rels, labels, lines):
            folder = folder_class_mismatch(rel, int(label), names, name_set)
            if folder is not None:
                lists_cell.add(ERROR, f"{f}, line {line}: label {label} is class {names[label]!r} of {class_file}, "
                                      f"but the image lies in the folder of class {folder!r}")
                break
        parsed[role] = ListInfo(role, f, rels, labels, lines)
        n_labels = len(np.unique(labels))
        if n_labels < len(names) and role != "sketch_test":
            counts_cell.add(WARNING, f"{f.name} covers {n_labels} of the {len(names)} classes of {class_file.name}")
        want = public.get(role)
        if want is not None and want != len(rels):
            counts_cell.add(WARNING, f"{f.name} has {len(rels):,} entries, the public package's has {want:,}")
    if not counts_cell.messages and parsed:
        sizes = f"{len(seen)} seen / {len(unseen)} unseen classes; " + ", ".join(
            f"{r} {len(i.paths):,}" for r, i in parsed.items())
        if setting.custom:
            counts_cell.add(SKIPPED, f"a custom dataset has no published counts to compare with ({sizes})")
        else:
            counts_cell.add(OK, sizes)
    return parsed


# ----------------------------------------------------------------------------------------------- images
def decode_problem(path: str) -> Optional[str]:
    """None when the file exists and decodes completely (with the reader training uses), else why not."""
    from data.images import read_problem, read_rgb

    try:
        read_rgb(path)
        return None
    except Exception as exc:  # noqa: BLE001 - read_problem says which failures are the image's
        problem = read_problem(exc)
        if problem is None:
            raise
        what, detail = problem
        return f"{what}: {detail}" if detail else what


def _decode_chunk(paths: Sequence[str]) -> list[Optional[str]]:
    return [decode_problem(p) for p in paths]


def decode_all(files: list[str], workers: int, desc: str = "decode images") -> dict[str, Optional[str]]:
    """Decode each file once (in a process pool when ``workers`` > 0) with the project's progress (a bar on a
    terminal, plain lines in a log)."""
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    results: dict[str, Optional[str]] = {}
    with progress(total=len(files), desc=desc, unit="img", disable=not files) as bar:
        if workers <= 0 or len(chunks) <= 1:
            outcomes: Iterable = map(_decode_chunk, chunks)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            outcomes = pool.map(_decode_chunk, chunks)
        try:
            for chunk, problems in zip(chunks, outcomes):
                results.update(zip(chunk, problems))
                bar.update(len(chunk))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return results


def sample_indices(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A sorted seeded sample of ``ceil(fraction * n)`` indices (all of them when fraction >= 1)."""
    if fraction >= 1.0:
        return np.arange(n)
    return np.sort(rng.choice(n, size=min(n, max(1, math.ceil(fraction * n))), replace=False))


def image_jobs(root: Path, parsed: dict[str, ListInfo], fraction: float, seed: int) -> list[tuple[str, Path, int]]:
    """(image path, list file, line) for every image to decode; a seeded sample per list under --quick."""
    rng = np.random.default_rng(seed)
    jobs = []
    for info in parsed.values():
        for i in sample_indices(len(info.paths), fraction, rng):
            jobs.append((str(root / info.paths[i]), info.file, info.lines[i]))
    return jobs


def report_images(cell: Cell, jobs: list, outcome: dict[str, Optional[str]], fraction: float) -> None:
    bad = [(p, f, line, outcome[p]) for p, f, line in jobs if outcome[p] is not None]
    for p, f, line, why in bad[:MAX_LISTED]:
        cell.add(ERROR, f"image {p} ({f}, line {line}) {why}")
    if len(bad) > MAX_LISTED:
        cell.add(ERROR, f"and {len(bad) - MAX_LISTED} more images that do not exist or do not decode "
                        f"(the first {MAX_LISTED} are listed)")
    if not bad:
        what = "every listed image" if fraction >= 1.0 else f"a {fraction:.0%} sample per list"
        cell.add(OK, f"{len(jobs):,} images decode ({what})")


# ----------------------------------------------------------------------------------------------- cid_mask
def check_cid_mask(setting: Setting, paths: SettingPaths, n_seen: int, cell: Cell) -> None:
    from data.cid_mask import load_cid_mask
    from utils.safe_pickle import safe_load

    f = paths.cid_mask_file
    if not setting.use_cid_mask:
        cell.add(OK, "not used by this setting")
        return
    if not f.is_file():
        cell.add(WARNING, f"{f} not found: training would use a zero cid_mask (no semantic bias +0.3*mask)")
        return
    try:
        mask = load_cid_mask(f, n_seen)           # one row per key, each of 1000 values, keys in range
        keys = {int(k) for k in safe_load(f, what="cid_mask")}
    except UserError as exc:
        cell.add(ERROR, str(exc))
        return
    missing = sorted(set(range(n_seen)) - keys)
    if missing:
        cell.add(ERROR, f"cid_mask {f} has no row for {len(missing)} of the {n_seen} seen classes "
                        f"(first: class id {missing[0]})")
        return
    values = mask.numpy()
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        cell.add(WARNING, f"cid_mask {f} holds values outside [0, 1] (min {values.min():.3g}, max {values.max():.3g})")
        return
    cell.add(OK, f"{n_seen} rows x {values.shape[1]}")


# ----------------------------------------------------------------------------------------------- driver
def settings_to_check(names: Optional[list[str]], data_root: Path) -> list[Setting]:
    if names:
        return [get_setting(n) for n in names]
    published = published_settings()           # a dataset of your own is checked when named
    found = [s for s in published if (data_root / s.dataset_dir).is_dir()]
    if not found:
        folders = ", ".join(sorted({s.dataset_dir for s in published}))
        for s in published:
            if data_root.resolve().name == s.dataset_dir:
                resolve_paths(s, data_root)     # raises the error that names the parent folder
        nested = sorted({str(p.parent) for s in published for p in data_root.glob(f"*/{s.dataset_dir}")
                         if p.is_dir()})
        hint = f"; they are one level deeper: pass --data_root {nested[0]}" if nested else ""
        custom = [s for s in SETTINGS.values() if s.custom and (data_root / s.split_dir).is_dir()]
        if custom:
            hint = f"; {data_root} looks like a dataset of your own: add --setting {custom[0].name}"
        raise UserError(f"no dataset folder ({folders}) under {data_root}{hint} (README.md, section 'Datasets')")
    return found


def sibling_split_exists(setting: Setting, data_root: Path) -> bool:
    """Whether another split of the same dataset is there (then a missing split is only a warning)."""
    return any(s is not setting and s.dataset_dir == setting.dataset_dir
               and (data_root / s.dataset_dir / s.split_dir).is_dir() for s in SETTINGS.values())


def check_setting(setting: Setting, args: argparse.Namespace) -> tuple[dict[str, Cell], list, SettingFacts]:
    """The data checks of one setting but the image decoding; returns its cells, its image jobs and its facts."""
    cells = {c: Cell() for c in DATA_CHECKS}
    jobs: list = []
    parsed: dict[str, ListInfo] = {}
    n_seen, n_unseen = setting.n_seen, setting.n_unseen
    try:
        paths = resolve_paths(setting, args.data_root)
    except UserError as exc:
        paths = None
        cells["lists"].add(ERROR if args.setting or not sibling_split_exists(setting, Path(args.data_root))
                           else WARNING, str(exc))
    if paths is not None:
        parsed = check_lists(setting, paths, cells["lists"], cells["counts"])
        try:
            n_seen, n_unseen = len(read_class_file(paths.class_file)), len(read_class_file(paths.zero_class_file))
            check_cid_mask(setting, paths, n_seen, cells["cid_mask"])
        except UserError:
            cells["cid_mask"].add(SKIPPED, "needs readable class files")
        jobs = image_jobs(paths.root, parsed, QUICK_FRACTION if args.quick else 1.0, args.seed)
    for c in ("counts", "images", "cid_mask"):
        if paths is None:
            cells[c].add(SKIPPED, "needs the list files")
    if paths is not None and not parsed:
        cells["images"].add(SKIPPED, "needs a readable list file")
    return cells, jobs, SettingFacts(setting, n_unseen, {r: len(i.paths) for r, i in parsed.items()})


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def format_table(rows: dict[str, dict[str, Cell]], width: int = 40) -> str:
    """Markdown table: one row per setting, one column per check, 'status: first message'."""
    checks = list(next(iter(rows.values()))) if rows else list(DATA_CHECKS)
    lines = ["| setting | " + " | ".join(checks) + " |", "|---" * (len(checks) + 1) + "|"]
    for name, cells in rows.items():
        body = [cells[c].status + (f": {_shorten(cells[c].first, width)}" if cells[c].status != OK else "")
                for c in checks]
        lines.append(f"| {name} | " + " | ".join(b.replace("|", "/") for b in body) + " |")
    return "\n".join(lines)


def format_details(rows: dict[str, dict[str, Cell]]) -> str:
    out, said = [], set()
    for name, cells in rows.items():
        for c, cell in cells.items():
            if id(cell) in said:
                continue                        # a cell shared by the settings (one checkpoint): said once
            said.add(id(cell))
            out.extend(f"{name} {c}: {m}" for m in cell.messages)
    return "\n".join(out)


def build_parser(prog: str = "python -m data.check",
                 description: str = "Check the unpacked datasets (list files, images, cid_mask) before training; "
                                    f"{FULL_CHECK} also checks the pretrained checkpoint and the feature files."
                 ) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("--data_root", default="datasets",
                   help="folder holding Sketchy/, TUBerlin/, QuickDraw/ (with --setting custom/zeroshot: your "
                        "dataset folder, holding the zeroshot/ that python -m data.from_folders writes)")
    p.add_argument("--setting", nargs="+", choices=sorted(SETTINGS), default=None,
                   help="settings to check (default: every setting whose dataset folder exists)")
    p.add_argument("--quick", action="store_true",
                   help=f"decode a seeded {QUICK_FRACTION * 100:g} %% sample of each list")
    p.add_argument("--seed", type=int, default=0, help="seed of the --quick sample")
    p.add_argument("--workers", type=int, default=usable_cores(), help="decoding processes (0: in this process)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def run_checks(args: argparse.Namespace, decode: Callable = decode_all,
               extra: Optional[dict[str, ExtraCheck]] = None) -> dict[str, dict[str, Cell]]:
    """The data checks of every setting to check, then the ``extra`` checks (columns after the data's)."""
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    data_root = Path(args.data_root)
    settings = settings_to_check(args.setting, data_root)
    rows, jobs, facts = {}, {}, {}
    for s in settings:
        rows[s.name], jobs[s.name], facts[s.name] = check_setting(s, args)
    unique = sorted({p for js in jobs.values() for p, _, _ in js})   # Sketchy's two splits share images
    outcome = decode(unique, args.workers)
    for name, js in jobs.items():
        if js:
            report_images(rows[name]["images"], js, outcome, QUICK_FRACTION if args.quick else 1.0)
    for column, check in (extra or {}).items():      # after the pool: its workers need no model
        for name in rows:
            rows[name][column] = check(facts[name])
    return rows


def report(rows: dict[str, dict[str, Cell]], ready: str) -> int:
    """Print the table and every message; 1 when a check is an error (``ready`` says what passing means)."""
    print(format_table(rows))
    details = format_details(rows)
    if details:
        print("\n" + details)
    n_errors = len({id(c) for cells in rows.values() for c in cells.values() if c.status == ERROR})
    print(f"\n{n_errors} check(s) failed" if n_errors else f"\nno errors: {ready}", flush=True)
    return 1 if n_errors else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    rows = run_checks(build_parser().parse_args(argv))
    return report(rows, f"the data are ready (the full check, with the pretrained checkpoint and the feature "
                        f"files: {FULL_CHECK})")


def cli(argv: Optional[Sequence[str]] = None, main: Callable[[Optional[Sequence[str]]], int] = main) -> None:
    """Run ``main`` as a command: one ``error:`` line on a user error, its status as the exit code."""
    status = 0

    def _main(a):
        nonlocal status
        status = main(a)

    run_cli(_main, argv)
    sys.exit(status)


if __name__ == "__main__":
    cli()
