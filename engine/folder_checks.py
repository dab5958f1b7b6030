"""Whether a run folder may be scored by a test script, and what its features were made from.

The rules (README, "Testing and reproducing the tables"):

- a checkpoint, a features file, a seen-class cache or a ``results.json`` of another setting: refused in
  one sentence before anything is written;
- ``model_best.pth.tar`` of another run than the ``checkpoint.pth.tar`` beside it (a stale best): refused;
- features whose sidecar names other weights (or image size, or zero lists) than what is present now:
  stale, extracted again;
- features without a sidecar (the authors' release): checked against what can be checked (labels within the
  setting's unseen classes, item counts against the zero lists) and reported with unknown provenance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from data.lists import read_class_file
from data.registry import SETTINGS, Setting, SettingPaths
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.provenance import list_fingerprint, project_version, read_sidecar, sidecar_path, state_dict_sha256
from utils.run_files import BEST_CHECKPOINT_FILE, FEATURES_FILE, LAST_CHECKPOINT_FILE, RESULTS_FILE, SEEN_CACHE_GLOB

if TYPE_CHECKING:   # annotations only: the reproduce planner reads run folders without torch
    from retrieval.feature_io import FeatureSet

UNKNOWN = "unknown"
ZERO_ROLES = ("photo_zero", "sketch_zero")
# What must agree for features to come from the same weights on the same data.
SAME_SOURCE_KEYS = ("setting", "model", "img_size", "student_sha256", "lists")


def short(digest: Optional[str]) -> str:
    return digest[:12] if isinstance(digest, str) and digest != UNKNOWN else UNKNOWN


@dataclass
class CheckpointInfo:
    """A checkpoint read once: its setting, run and the hash of the weights it holds (always recomputed)."""

    path: Path
    ckpt: dict
    setting: Optional[str]
    model: Optional[str]
    img_size: Optional[int]
    run_id: Optional[str]
    student_sha256: str

    @property
    def args(self) -> dict:
        args = self.ckpt.get("args")
        return args if isinstance(args, dict) else {}

    def describe(self) -> str:
        return f"{self.path.name} (run {short(self.run_id)}, weights {short(self.student_sha256)})"

    def provenance(self) -> dict[str, Any]:
        """The checkpoint's part of a features sidecar."""
        return {"setting": self.setting, "model": self.model, "img_size": self.img_size,
                "student_sha256": self.student_sha256, "run_id": self.run_id, "checkpoint": self.path.name}


def read_checkpoint(path: Path) -> CheckpointInfo:
    """Load ``path`` (weights only) and describe it; older checkpoints without ``provenance`` are fine."""
    ckpt = load_checkpoint(path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    prov = ckpt.get("provenance") if isinstance(ckpt.get("provenance"), dict) else {}
    state = ckpt.get("state_dict")
    img_size = prov.get("img_size", config.get("img_size"))
    return CheckpointInfo(
        path=path, ckpt=ckpt, setting=prov.get("setting") or config.get("setting"),
        model=prov.get("model") or config.get("model"), img_size=int(img_size) if img_size is not None else None,
        run_id=prov.get("run_id"), student_sha256=state_dict_sha256(state) if isinstance(state, dict) else UNKNOWN)


def refuse_foreign(what: str, owner: str, setting: Setting, resume_dir: Path) -> UserError:
    script = SETTINGS[owner].test_script if owner in SETTINGS else None
    way_out = f"test that folder with {script}" if script else "test that folder with the script of its setting"
    return UserError(f"{what} was made for {owner}, not {setting.name}: {way_out} or point --resume_dir at a "
                     f"{setting.name} run (nothing was written to {resume_dir})")


def check_checkpoint_setting(info: CheckpointInfo, setting: Setting, resume_dir: Path) -> None:
    if info.setting is not None and info.setting != setting.name:
        script = SETTINGS[info.setting].test_script if info.setting in SETTINGS else "the script of its setting"
        raise UserError(f"checkpoint {info.path} was trained for {info.setting}, not {setting.name}: test it with "
                        f"{script}, or pass the right --checkpoint or --resume_dir (nothing was written to "
                        f"{resume_dir})")


# Flags that may differ between the checkpoints of one run (a resume may change them).
OPERATIONAL_ARGS = frozenset({"workers", "device", "no_figures", "debug", "resume", "overwrite", "data_root", "amp",
                              "channels_last", "savedir"})


def other_run(best: CheckpointInfo, last: CheckpointInfo) -> Optional[str]:
    """Why ``best`` cannot come from the run that wrote ``last``, or None. By run id when both have one;
    older checkpoints (no provenance) by the run-shaping flags they store and by their epochs."""
    if best.run_id and last.run_id:
        return None if best.run_id == last.run_id else f"run {short(best.run_id)}, not run {short(last.run_id)}"
    diffs = [f"{k} {best.args[k]!r} vs {last.args[k]!r}" for k in sorted(set(best.args) & set(last.args))
             if k not in OPERATIONAL_ARGS and best.args[k] != last.args[k]]
    if diffs:
        return f"its flags differ: {', '.join(diffs)}"
    epochs = best.ckpt.get("epoch"), last.ckpt.get("epoch")
    if all(isinstance(e, int) for e in epochs) and epochs[0] > epochs[1]:
        return f"it is from epoch {epochs[0]}, later than the {epochs[1]} epochs of the run beside it"
    return None


def check_best_is_current(best: CheckpointInfo, resume_dir: Path, setting: Setting) -> None:
    """``model_best.pth.tar`` must come from the run that wrote the ``checkpoint.pth.tar`` beside it."""
    last_path = best.path.parent / LAST_CHECKPOINT_FILE
    if best.path.name != BEST_CHECKPOINT_FILE or not last_path.is_file():
        return
    last = read_checkpoint(last_path)
    check_checkpoint_setting(last, setting, resume_dir)
    why = other_run(best, last)
    if why is not None:
        raise UserError(f"{best.path} is stale: it comes from an earlier run than {last_path.name} beside it "
                        f"({why}), so scoring it would report the old model; delete it to test the new run's "
                        f"last epoch (--checkpoint {last_path}), or retrain with --overwrite (nothing was "
                        f"written to {resume_dir})")


def check_folder_sidecars(resume_dir: Path, setting: Setting) -> None:
    """Features caches and results of another setting in the folder: refused before anything is written."""
    if not resume_dir.is_dir():
        return
    for artifact in [resume_dir / FEATURES_FILE, *sorted(resume_dir.glob(SEEN_CACHE_GLOB))]:
        record = read_sidecar(artifact)
        owner = record.get("setting") if record else None
        if owner is not None and owner != setting.name:
            raise refuse_foreign(f"{artifact} ({sidecar_path(artifact).name})", owner, setting, resume_dir)
    owner = previous_results(resume_dir).get("setting")
    if isinstance(owner, str) and owner != setting.name:
        raise refuse_foreign(f"{resume_dir / RESULTS_FILE}", owner, setting, resume_dir)


def previous_results(resume_dir: Path) -> dict[str, Any]:
    """The folder's ``results.json``, or {} when absent or unreadable (it is replaced, never trusted)."""
    try:
        data = json.loads((resume_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------- features
def zero_lists(paths: SettingPaths) -> dict[str, dict]:
    return {role: list_fingerprint(paths.list_file(role)) for role in ZERO_ROLES}


def zero_sidecar(info: CheckpointInfo, paths: SettingPaths, features: FeatureSet) -> dict[str, Any]:
    """What ``features_zero.json`` records for features just extracted with ``info`` from ``paths``."""
    return {**info.provenance(), "lists": zero_lists(paths), "n_gallery": int(len(features.gallery)),
            "n_queries": int(len(features.query)), "version": project_version()}


def stale_reason(record: Mapping[str, Any], info: Optional[CheckpointInfo], lists: Optional[dict],
                 what: str) -> Optional[str]:
    """Why features described by ``record`` are not what ``info`` would extract from ``lists``, else None."""
    if info is not None and record.get("student_sha256") != info.student_sha256:
        return (f"{what} were extracted with other weights (run {short(record.get('run_id'))}, weights "
                f"{short(record.get('student_sha256'))}) than {info.path} now holds (run {short(info.run_id)}, "
                f"weights {short(info.student_sha256)})")
    if info is not None and info.img_size is not None and record.get("img_size") != info.img_size:
        return f"{what} were extracted at {record.get('img_size')} px, {info.path} works at {info.img_size} px"
    if lists is not None and record.get("lists") != lists:
        return f"{what} were extracted from other list files than the dataset's present ones"
    return None


def check_unlabelled_origin(features: FeatureSet, setting: Setting, paths: Optional[SettingPaths],
                            path: Path, resume_dir: Path) -> str:
    """Features without a sidecar: refuse what cannot be this setting's; returns what was checked."""
    if paths is not None:
        n_unseen, source = len(read_class_file(paths.zero_class_file)), paths.zero_class_file.name
    elif setting.n_unseen is not None:
        n_unseen, source = setting.n_unseen, "the setting's published count"
    else:
        return "nothing (a custom dataset has no published class count, and its class files were not found)"
    labels = np.concatenate([features.gallery_labels, features.query_labels])
    if labels.min() < 0 or labels.max() >= n_unseen:
        raise UserError(f"{path} cannot hold {setting.name}'s features: its labels run from {labels.min()} to "
                        f"{labels.max()} but {setting.name} has {n_unseen} unseen classes ({source}), and it has "
                        f"no {sidecar_path(path).name} to say what made it; test it with the script of its "
                        f"setting (nothing was written to {resume_dir})")
    checked = [f"labels within the {n_unseen} unseen classes"]
    if paths is not None:
        for role, n in (("photo_zero", len(features.gallery)), ("sketch_zero", len(features.query))):
            lines = list_fingerprint(paths.list_file(role))["lines"]
            if lines != n:
                kind = "gallery photos" if role == "photo_zero" else "query sketches"
                raise UserError(f"{path} cannot hold {setting.name}'s features: it has {n} {kind} but "
                                f"{paths.list_file(role)} lists {lines}, and it has no {sidecar_path(path).name} "
                                f"to say what made it; test it with the script of its setting, or pass --extract "
                                f"to extract new features (nothing was written to {resume_dir})")
        checked.append("item counts equal to the zero lists")
    return " and ".join(checked)


def same_features(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Two results' feature provenance name the same features: same file bytes, or same weights and lists."""
    if old.get("features_sha256") and old.get("features_sha256") == new.get("features_sha256"):
        return True
    a, b = old.get("features"), new.get("features")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    return all(a.get(k) is not None and a.get(k) == b.get(k) for k in SAME_SOURCE_KEYS)
