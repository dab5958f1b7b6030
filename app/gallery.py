"""The photos a sketch is searched against, with their features.

Two kinds: ``zero`` (the setting's unseen-class test photos with their labels; features from the run's
``features_zero.pickle`` when it belongs to this checkpoint) and a folder of photos. Photos that need
embedding are embedded once and cached beside the run, keyed by the checkpoint's weights hash and each
file's (path, size, mtime): a second start is instant and a changed folder re-embeds only what changed.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from app.images import class_folder_labels, find_photos
from data.lists import parse_list_file, read_class_file
from data.registry import get_setting, resolve_paths
from engine.folder_checks import zero_lists
from retrieval.feature_io import load_features
from utils.checkpoint import atomic_write
from utils.errors import UserError
from utils.provenance import read_sidecar
from utils.run_files import FEATURES_FILE

CACHE_FORMAT = 1
EMBED_CHUNK = 1024     # photos embedded between two cache writes: an interrupted first start keeps its work
# Embeds photos (root, relative paths, progress-bar label) -> (features N x D, mask of the readable photos).
EmbedFn = Callable[[Path, Sequence[str], str], tuple[np.ndarray, np.ndarray]]


@dataclass
class Gallery:
    """Photos (paths relative to ``root``), their features, and class labels when the gallery has them."""

    kind: str                                  # "zero" or "folder"
    root: Path
    paths: list[str]
    features: np.ndarray                       # float32, N x D, L2-normalised
    labels: Optional[np.ndarray] = None        # int64 class ids, or None
    class_names: Optional[list[str]] = None
    source: str = ""                           # where the features came from, for the start-up message

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return self.labels is not None and self.class_names is not None

    def label_of(self, index: int) -> Optional[str]:
        return self.class_names[int(self.labels[index])] if self.labelled else None


def features_file_usable(path: Path, weights_sha256: str, n_photos: int, lists: Optional[dict] = None) -> bool:
    """May ``features_zero.pickle`` serve this checkpoint's zero gallery?

    Yes when its provenance sidecar names these weights and (``lists``: the zero lists' fingerprints now)
    the same list files, the test scripts' rule; a file without a sidecar (older runs, the authors' files)
    is trusted when its gallery has exactly as many rows as the photo list.
    """
    if not path.is_file():
        return False
    sidecar = read_sidecar(path)
    if sidecar is not None:
        return sidecar.get("student_sha256") == weights_sha256 and (lists is None or sidecar.get("lists") == lists)
    return len(load_features(path).gallery) == n_photos


def cache_path(resume_dir: Path, root: Path) -> Path:
    """One cache file per photo folder, in the run directory."""
    digest = hashlib.sha256(str(root.resolve()).encode("utf-8")).hexdigest()[:16]
    return resume_dir / f"app_gallery_{digest}.npz"


def _read_cache(path: Path, weights_sha256: str) -> dict[tuple[str, int, int], np.ndarray]:
    """(path, size, mtime_ns) -> feature row of a cache made with these weights; empty when absent or foreign."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != CACHE_FORMAT or str(z["student_sha256"]) != weights_sha256:
                return {}
            paths, sizes, mtimes, feats = z["paths"], z["sizes"], z["mtimes"], z["features"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        warnings.warn(f"gallery cache {path} is unreadable ({exc}); the photos are embedded again")
        return {}
    if not (len(paths) == len(sizes) == len(mtimes) == len(feats)) or feats.ndim != 2:
        warnings.warn(f"gallery cache {path} is inconsistent; the photos are embedded again")
        return {}
    return {(str(p), int(s), int(m)): f for p, s, m, f in zip(paths, sizes, mtimes, feats)}


def _write_cache(path: Path, weights_sha256: str, keys: Sequence[tuple[str, int, int]], features: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, format=np.int64(CACHE_FORMAT), student_sha256=np.str_(weights_sha256),
             paths=np.array([k[0] for k in keys], dtype=str), sizes=np.array([k[1] for k in keys], dtype=np.int64),
             mtimes=np.array([k[2] for k in keys], dtype=np.int64), features=features.astype(np.float32))
    try:
        atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    except OSError as exc:
        warnings.warn(f"gallery cache {path} could not be written ({exc}); the next start embeds again")


@dataclass
class Embedded:
    paths: list[str]            # the photos that could be read, in the given order
    features: np.ndarray
    reused: int                 # rows taken from the cache
    skipped: list[str]          # photos that could not be read


def _file_key(root: Path, rel: str) -> Optional[tuple[str, int, int]]:
    try:
        st = (root / rel).stat()
    except OSError:
        return None
    return rel, int(st.st_size), int(st.st_mtime_ns)


def embed_with_cache(root: Path, rel_paths: Sequence[str], cache: Path, weights_sha256: str,
                     embed: EmbedFn) -> Embedded:
    """Features of ``root/rel_paths``: cached rows reused, the others embedded; the cache rewritten if changed."""
    keys = [_file_key(root, rel) for rel in rel_paths]
    known = _read_cache(cache, weights_sha256)
    rows: dict[int, np.ndarray] = {i: known[key] for i, key in enumerate(keys) if key in known}
    reused = len(rows)
    missing = [i for i, key in enumerate(keys) if key is not None and key not in known]
    readable = np.array([key is not None for key in keys])
    for start in range(0, len(missing), EMBED_CHUNK):
        part = missing[start:start + EMBED_CHUNK]
        feats, ok = embed(root, [rel_paths[i] for i in part],
                          f"embedding photos {start + 1}-{start + len(part)} of {len(missing)}")
        for j, i in enumerate(part):
            if ok[j]:
                rows[i] = feats[j]
            else:
                readable[i] = False
        if start + len(part) < len(missing):
            done = sorted(rows)
            _write_cache(cache, weights_sha256, [keys[i] for i in done], np.stack([rows[i] for i in done]))
    kept = [i for i in range(len(keys)) if readable[i]]
    if not kept:
        raise UserError(f"none of the {len(keys)} photos under {root} could be read")
    features = np.stack([rows[i] for i in kept]).astype(np.float32)
    kept_keys = [keys[i] for i in kept]
    if missing or reused != len(known):
        _write_cache(cache, weights_sha256, kept_keys, features)
    return Embedded([rel_paths[i] for i in kept], features, reused,
                    [rel_paths[i] for i in range(len(keys)) if not readable[i]])


def folder_gallery(folder: Path, resume_dir: Path, weights_sha256: str, embed: EmbedFn) -> Gallery:
    """Every JPEG/PNG/WebP under ``folder``; labelled by class folder when every photo lies in one
    (``folder/<class>/...``)."""
    if not folder.is_dir():
        raise UserError(f"--gallery {folder} is neither 'zero' nor a folder")
    rel_paths = find_photos(folder)
    if not rel_paths:
        raise UserError(f"--gallery {folder} holds no JPEG, PNG or WebP photos (searched recursively)")
    cache = cache_path(resume_dir, folder)
    done = embed_with_cache(folder, rel_paths, cache, weights_sha256, embed)
    source = f"{len(done.paths)} photos under {folder}: {done.reused} from the cache {cache.name}, " \
             f"{len(done.paths) - done.reused} embedded"
    if done.skipped:
        source += f"; {len(done.skipped)} unreadable photo(s) left out, first {done.skipped[0]}"
    labelled = class_folder_labels(done.paths)
    if labelled is None:
        return Gallery("folder", folder, done.paths, done.features, source=source)
    labels, class_names = labelled
    source += f"; labelled by their {len(class_names)} class folders"
    return Gallery("folder", folder, done.paths, done.features, labels, class_names, source)


def zero_gallery(setting_name: str, data_root: Path, resume_dir: Path, weights_sha256: str,
                 embed: EmbedFn) -> Gallery:
    """The setting's unseen-class test photos with their class names."""
    paths = resolve_paths(get_setting(setting_name), data_root)
    class_names = read_class_file(paths.zero_class_file)
    photo_list = paths.list_file("photo_zero")
    rel_paths, labels = parse_list_file(photo_list, len(class_names), paths.zero_class_file)
    features_file = resume_dir / FEATURES_FILE
    if features_file_usable(features_file, weights_sha256, len(rel_paths), zero_lists(paths)):
        features = load_features(features_file).gallery
        if len(features) == len(rel_paths):
            return Gallery("zero", paths.root, list(rel_paths), features, labels, class_names,
                           f"{len(rel_paths)} unseen-class photos of {setting_name}, features from {features_file}")
    done = embed_with_cache(paths.root, rel_paths, cache_path(resume_dir, paths.root), weights_sha256, embed)
    if done.skipped:
        raise UserError(f"photo {paths.root / done.skipped[0]} ({photo_list}) is missing or cannot be read")
    return Gallery("zero", paths.root, done.paths, done.features, labels, class_names,
                   f"{len(done.paths)} unseen-class photos of {setting_name}: {done.reused} from the cache, "
                   f"{len(done.paths) - done.reused} embedded with the checkpoint")
