"""``python -m engine.check``: the full check before any GPU hour is spent.

The data checks of ``python -m data.check`` (list files, counts, every image, the ``cid_mask.pickle``) plus
the two that need the layers above the data: the pretrained checkpoint loads strictly into the model
(``--pretrained``, ``--model``), and every ``features_zero.pickle`` under the setting's run folder
(``--runs``) reads as features of the setting's unseen classes. One table (setting x check: ok / warning /
error and the first message), then every message; exit status 1 when any check is an error, 0 otherwise.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from data import check as data_check
from data.check import ERROR, OK, SKIPPED, WARNING, Cell, SettingFacts
from data.registry import Setting
from engine.flags import DEFAULT_PRETRAINED
from models.defaults import DEFAULT_MODEL
from utils.errors import UserError
from utils.run_files import FEATURES_FILE


def build_parser() -> argparse.ArgumentParser:
    p = data_check.build_parser(
        prog="python -m engine.check",
        description="Check the unpacked datasets, the pretrained checkpoint and the feature files before training.")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="official ConvNeXt-V2 checkpoint ('none': skip)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="timm model the checkpoint must load into")
    p.add_argument("--runs", default="checkpoint", help=f"run folders; {FEATURES_FILE} files under them are checked")
    return p


# ----------------------------------------------------------------------------------------------- pretrained
def check_pretrained(path: Optional[str], model: str, cell: Cell) -> None:
    """Does the pretrained checkpoint load strictly into ``model`` (the teacher's very load)?"""
    if path is None or str(path).lower() == "none":
        cell.add(SKIPPED, "--pretrained none")
        return
    from models import build_teacher

    try:
        build_teacher(model, path)
    except UserError as exc:
        cell.add(ERROR, str(exc))
        return
    cell.add(OK, f"{path} loads strictly into {model}")


# ----------------------------------------------------------------------------------------------- feature files
def run_folder(setting: Setting, runs: Path) -> Path:
    """The setting's run folder under ``runs`` (default run directories sit under checkpoint/)."""
    default = Path(setting.checkpoint_dir)
    return runs / default.relative_to(default.parts[0])


def check_features(facts: SettingFacts, folder: Path, cell: Cell) -> None:
    """Every features file under ``folder``: readable, labels within the unseen classes, rows as the zero lists."""
    from retrieval.feature_io import load_features

    setting, n_unseen = facts.setting, facts.n_unseen
    files = sorted(folder.rglob(FEATURES_FILE)) if folder.is_dir() else []
    if not files:
        cell.add(OK, f"no {FEATURES_FILE} under {folder}")
        return
    for f in files:
        try:
            fs = load_features(f)
        except UserError as exc:
            cell.add(ERROR, str(exc))
            continue
        bad = [(what, int(lab.min()), int(lab.max())) for what, lab in
               (("gallery", fs.gallery_labels), ("query", fs.query_labels)) if lab.min() < 0 or lab.max() >= n_unseen]
        if bad:
            what, lo, hi = bad[0]
            cell.add(ERROR, f"features file {f}: {what} labels span {lo}..{hi}, but {setting.name} has "
                            f"{n_unseen} unseen classes (0..{n_unseen - 1})")
            continue
        for what, rows, role in (("gallery", len(fs.gallery), "photo_zero"), ("query", len(fs.query), "sketch_zero")):
            if role in facts.list_sizes and facts.list_sizes[role] != rows:
                cell.add(WARNING, f"features file {f}: {rows:,} {what} rows, but the {role} list has "
                                  f"{facts.list_sizes[role]:,} entries (extracted from other lists?)")
        cell.add(OK, f"{f}: {len(fs.gallery):,} gallery x {len(fs.query):,} queries, {fs.dim}-d")


# ----------------------------------------------------------------------------------------------- driver
def run_checks(args: argparse.Namespace, decode=data_check.decode_all) -> dict[str, dict[str, Cell]]:
    pretrained: Optional[Cell] = None       # one checkpoint serves every setting: one cell shared by the rows

    def pretrained_cell(facts: SettingFacts) -> Cell:
        nonlocal pretrained
        if pretrained is None:
            pretrained = Cell()
            check_pretrained(args.pretrained, args.model, pretrained)
        return pretrained

    def features_cell(facts: SettingFacts) -> Cell:
        cell = Cell()
        check_features(facts, run_folder(facts.setting, Path(args.runs)), cell)
        return cell

    return data_check.run_checks(args, decode, extra={"pretrained": pretrained_cell, "features": features_cell})


def main(argv: Optional[Sequence[str]] = None) -> int:
    return data_check.report(run_checks(build_parser().parse_args(argv)), "ready to train")


if __name__ == "__main__":
    data_check.cli(main=main)
