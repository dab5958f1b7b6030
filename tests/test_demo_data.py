"""The synthetic demo dataset: public Sketchy layout, loadable by the real loaders, deterministic, safe."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.cid_mask import load_cid_mask
from data.dataset import ListDataset
from data.demo import (CLASS_NAMES, MARKER_FILE, PHOTO_DIR, SEEN_CLASSES, SKETCH_DIR, UNSEEN_CLASSES,
                       generate_demo_dataset, main)
from data.lists import parse_list_file, read_class_file
from data.registry import SAKE_NAMES, get_setting, resolve_paths
from utils.errors import UserError, run_cli

SKETCHES, PHOTOS, SIZE = 5, 3, 64        # small: the whole module runs in about a second


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(out, seed=0, sketches_per_class=SKETCHES, photos_per_class=PHOTOS, size=SIZE)
    return out


@pytest.fixture(scope="module")
def paths(demo_root: Path):
    return resolve_paths(get_setting("sketchy/zeroshot1"), demo_root)


def _listed(paths, role: str) -> tuple[list[str], np.ndarray]:
    return parse_list_file(paths.list_file(role))


def test_class_constants() -> None:
    assert len(SEEN_CLASSES) == 8 and len(UNSEEN_CLASSES) == 4
    assert not set(SEEN_CLASSES) & set(UNSEEN_CLASSES)
    assert sorted(CLASS_NAMES) == sorted(SEEN_CLASSES + UNSEEN_CLASSES)
    # the space-in-path handling of the list parser must be exercised on both sides of the split
    assert any(" " in c for c in SEEN_CLASSES) and any(" " in c for c in UNSEEN_CLASSES)


def test_layout_is_the_public_sketchy_one(demo_root: Path, paths) -> None:
    split = demo_root / "Sketchy" / "zeroshot1"
    for name in list(SAKE_NAMES.values()) + ["cname_cid.txt", "cname_cid_zero.txt", "cid_mask.pickle"]:
        assert (split / name).is_file(), name
    assert paths.root == demo_root / "Sketchy"
    assert set(paths.lists) == set(SAKE_NAMES)          # including the *_test (validation) list
    assert (demo_root / "Sketchy" / MARKER_FILE).is_file()
    for name in CLASS_NAMES:
        assert (demo_root / "Sketchy" / SKETCH_DIR / name).is_dir()
        assert (demo_root / "Sketchy" / PHOTO_DIR / name).is_dir()


def test_class_files(paths) -> None:
    assert read_class_file(paths.class_file) == sorted(SEEN_CLASSES)
    assert read_class_file(paths.zero_class_file) == sorted(UNSEEN_CLASSES)


@pytest.mark.parametrize("role, n_items, classes", [
    ("sketch_train", len(SEEN_CLASSES) * (SKETCHES - 1), SEEN_CLASSES),
    ("sketch_test", len(SEEN_CLASSES) * 1, SEEN_CLASSES),
    ("sketch_zero", len(UNSEEN_CLASSES) * SKETCHES, UNSEEN_CLASSES),
    ("photo_train", len(SEEN_CLASSES) * PHOTOS, SEEN_CLASSES),
    ("photo_zero", len(UNSEEN_CLASSES) * PHOTOS, UNSEEN_CLASSES),
])
def test_lists_parse_and_match_folders(paths, role: str, n_items: int, classes: tuple[str, ...]) -> None:
    names = sorted(classes)
    rels, labels = parse_list_file(paths.list_file(role), n_classes=len(names))
    assert len(rels) == n_items
    assert set(labels.tolist()) == set(range(len(names)))
    prefix, ext = (SKETCH_DIR, ".png") if role.startswith("sketch") else (PHOTO_DIR, ".jpg")
    for rel, label in zip(rels, labels):
        assert rel.startswith(prefix + "/") and rel.endswith(ext)
        assert rel.split("/")[-2] == names[label]        # the label names the class folder the image is in


def test_every_listed_image_opens(paths) -> None:
    for role in SAKE_NAMES:
        rels, _ = _listed(paths, role)
        for rel in rels:
            with Image.open(paths.root / rel) as img:
                img.load()
                assert img.size == (SIZE, SIZE)
                assert img.format == ("PNG" if role.startswith("sketch") else "JPEG")


def test_loaders_run_unchanged(paths) -> None:
    ds = ListDataset.from_list(paths.root, paths.list_file("sketch_zero"), n_classes=len(UNSEEN_CLASSES))
    spaced = [i for i, p in enumerate(ds.paths) if " " in p]
    assert spaced, "no path with a space in the zero list"
    img, label = ds[spaced[0]]
    assert img.mode == "RGB" and img.size == (SIZE, SIZE) and 0 <= label < len(UNSEEN_CLASSES)


def test_cid_mask_format_and_loading(paths) -> None:
    raw_bytes = paths.cid_mask_file.read_bytes()
    assert raw_bytes[:2] == b"\x80\x02"                  # protocol 2, like the shipped Python-2 files
    raw = pickle.loads(raw_bytes)                        # our own file, so the plain unpickler is fine here
    assert sorted(raw) == list(range(len(SEEN_CLASSES)))
    for row in raw.values():
        assert row.dtype == np.float64 and row.shape == (1000,)
        assert 0 <= row.min() and row.max() <= 1 and np.count_nonzero(row) >= 3
    mask = load_cid_mask(paths.cid_mask_file, n_seen=len(SEEN_CLASSES))   # through the restricted unpickler
    assert tuple(mask.shape) == (len(SEEN_CLASSES), 1000)
    assert np.allclose(mask.numpy(), np.stack([raw[i] for i in range(len(SEEN_CLASSES))]))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_per_seed(tmp_path: Path) -> None:
    trees = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_demo_dataset(tmp_path / name, seed=seed, sketches_per_class=2, photos_per_class=1, size=48)
        trees[name] = _tree_bytes(tmp_path / name / "Sketchy")
    assert trees["a"] == trees["b"]                      # same seed: every file byte-identical
    assert trees["a"].keys() == trees["c"].keys()
    images = [k for k in trees["a"] if k.endswith((".png", ".jpg"))]
    differing = [k for k in images if trees["a"][k] != trees["c"][k]]
    assert len(differing) == len(images)                 # another seed: every image differs


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    kwargs = dict(sketches_per_class=2, photos_per_class=1, size=32)
    generate_demo_dataset(tmp_path, **kwargs)
    with pytest.raises(UserError, match="Sketchy.*--force"):
        generate_demo_dataset(tmp_path, **kwargs)
    stale = tmp_path / "Sketchy" / "stale.txt"
    stale.write_text("left over")
    generate_demo_dataset(tmp_path, force=True, **kwargs)
    assert not stale.exists()                            # --force replaces the whole demo folder


def test_force_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    real = tmp_path / "Sketchy" / "zeroshot1"
    real.mkdir(parents=True)
    (real / "cname_cid.txt").write_text("airplane 0\n")
    with pytest.raises(UserError, match=MARKER_FILE):
        generate_demo_dataset(tmp_path, force=True, sketches_per_class=2, photos_per_class=1, size=32)
    assert (real / "cname_cid.txt").read_text() == "airplane 0\n"


def test_unseen_count_and_parallel_drawing(tmp_path: Path) -> None:
    kwargs = dict(seed=1, sketches_per_class=4, photos_per_class=3, size=32, zero_per_class=2)
    generate_demo_dataset(tmp_path / "one", workers=1, **kwargs)
    generate_demo_dataset(tmp_path / "two", workers=2, **kwargs)   # 80 images: drawn by a process pool
    one, two = _tree_bytes(tmp_path / "one" / "Sketchy"), _tree_bytes(tmp_path / "two" / "Sketchy")
    assert one == two                                    # the pool changes nothing, byte for byte
    paths = resolve_paths(get_setting("sketchy/zeroshot1"), tmp_path / "one")
    counts = {role: len(_listed(paths, role)[0]) for role in SAKE_NAMES}
    n_seen, n_unseen = len(SEEN_CLASSES), len(UNSEEN_CLASSES)
    assert counts == {"sketch_train": n_seen * 3, "sketch_test": n_seen * 1, "photo_train": n_seen * 3,
                      "sketch_zero": n_unseen * 2, "photo_zero": n_unseen * 2}


@pytest.mark.parametrize("kwargs", [dict(sketches_per_class=1), dict(photos_per_class=0), dict(size=8),
                                    dict(seed=-1), dict(zero_per_class=0)])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(UserError):
        generate_demo_dataset(tmp_path, **kwargs)


def test_cli_summary_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--out", str(tmp_path), "--sketches_per_class", "2", "--photos_per_class", "1", "--size", "32"]
    main(argv)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(tmp_path / "Sketchy") in out and "8 seen + 4 unseen" in out
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    assert "--force" in capsys.readouterr().err
