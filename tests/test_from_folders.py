"""A dataset of your own: class folders -> data.from_folders -> train_custom.py, test_custom_zeroshot.py,
engine.check and the app; and one sentence for each kind of bad input."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import from_folders
from data.lists import parse_list_file, read_class_file
from data.registry import SAKE_NAMES, get_setting, resolve_paths
from engine import check as full_check
from tests.fixtures import make_class_folders
from tests.test_test_scripts import run
from utils.errors import run_cli

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("arrow", "circle", "crescent moon", "heart", "lightning bolt", "star")   # demo shapes, two with spaces
SETTING = get_setting("custom/zeroshot")


def make_split(*argv, capsys) -> tuple[int, str, str]:
    """``python -m data.from_folders argv`` in this process."""
    try:
        run_cli(from_folders.main, [*map(str, argv), "--workers", "0"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("my data")
    make_class_folders(root, CLASSES, sketches=5, photos=4)
    from_folders.make_split(root, unseen=["crescent moon", "star"], seed=0, val_fraction=0.2)
    return root


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory) -> Path:
    """One tiny --smoke run on the dataset (module-scoped: every test below reads it)."""
    run_dir = tmp_path_factory.mktemp("runs") / "custom" / "zeroshot"     # engine.check's --runs layout
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["train_custom.py", "--data_root", str(dataset), "--smoke", "--img_size", "32",
                                 "--max_steps_per_epoch", "1", "--workers", "0", "--device", "cpu",
                                 "--savedir", str(run_dir), "--no_figures"])
        runpy.run_path(str(ROOT / "train_custom.py"), run_name="__main__")
    return run_dir


# ----------------------------------------------------------------------------------------------- the split
def test_one_command_makes_the_lists_every_loader_reads(tmp_path, capsys):
    root = make_class_folders(tmp_path / "mine", CLASSES, sketches=5, photos=4)
    (root / "sketches" / "arrow" / "notes.txt").write_text("not an image")
    code, out, err = make_split(root, "--unseen_fraction", "0.34", "--seed", "3", capsys=capsys)
    assert code == 0, err
    paths = resolve_paths(SETTING, root)
    assert paths.split == root / "zeroshot" and paths.root == root
    assert set(paths.lists) == set(SAKE_NAMES)                     # sketch_test: the seen-class validation list
    seen, unseen = read_class_file(paths.class_file), read_class_file(paths.zero_class_file)
    assert seen == sorted(seen) and unseen == sorted(unseen) and len(unseen) == 2 and len(seen) == 4
    assert sorted(seen + unseen) == sorted(CLASSES)
    assert not (paths.split / "cid_mask.pickle").exists() and "no cid_mask.pickle" in out
    listed = {}
    for role, f in paths.lists.items():
        rels, labels = parse_list_file(f)
        names = unseen if role.endswith("_zero") else seen
        for rel, label in zip(rels, labels):                     # relative to ROOT, in the folder of their class
            modality, cls, _ = rel.split("/")
            assert (root / rel).is_file() and cls == names[label] and " " in rel.split("/")[-1]
            assert modality == ("sketches" if role.startswith("sketch") else "photos")
        listed[role] = rels
    assert len(listed["sketch_test"]) == 4 and len(listed["sketch_train"]) == 16          # one of five per class
    assert not set(listed["sketch_test"]) & set(listed["sketch_train"])
    assert len(listed["sketch_zero"]) == 10 and len(listed["photo_zero"]) == 8 and len(listed["photo_train"]) == 16
    assert "sketches/arrow/notes.txt" in out and "not images by their name" in out

    before = {f.name: f.read_bytes() for f in paths.split.iterdir()}
    code, out, err = make_split(root, "--unseen_fraction", "0.34", "--seed", "3", capsys=capsys)
    assert code == 0, err                                        # the same seed: the same bytes, said so
    assert {f.name: f.read_bytes() for f in paths.split.iterdir()} == before
    assert "replaced the earlier" in out and "the same unseen classes" in out
    assert not [p for p in root.iterdir() if p.name.startswith(".")]     # no temporary folder left behind
    code, out, err = make_split(root, "--unseen", "arrow", "heart", capsys=capsys)
    assert code == 0, err
    assert read_class_file(paths.zero_class_file) == ["arrow", "heart"] and "the unseen classes were" in out
    record = json.loads((paths.split / from_folders.RECORD_FILE).read_text())
    assert record["unseen"] == ["arrow", "heart"] and record["counts"]["sketch_zero"] == 10


def test_unreadable_images_are_skipped_and_named(tmp_path, capsys):
    root = make_class_folders(tmp_path, CLASSES[:3], sketches=3, photos=2)
    broken = root / "photos" / "circle" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    code, out, err = make_split(root, "--unseen", "arrow", capsys=capsys)
    assert code == 0, err
    assert "warning: 1 unreadable image(s) were skipped" in out and f"{broken} cannot be decoded" in out
    assert all("broken" not in f.read_text() for f in (root / "zeroshot").glob("*.txt"))
    for good in (root / "photos" / "circle").glob("photo *.jpg"):   # a class with nothing readable is refused
        good.write_bytes(b"")
    line = one_error(*make_split(root, "--unseen", "arrow", capsys=capsys)[::2])
    assert f"class folder {root / 'photos' / 'circle'} has no readable images" in line


# ----------------------------------------------------------------------------------------------- bad input
def _tiny(root: Path, classes=("a", "b", "c"), sketches: bool = True, photos: bool = True) -> Path:
    for name in classes:
        for modality, wanted in (("sketches", sketches), ("photos", photos)):
            if wanted:
                (root / modality / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), "white").save(root / modality / name / "1.png")
    return root


@pytest.mark.parametrize("case,argv,expected", [
    ("no sketches folder", [], "has no sketches/ folder"),
    ("empty class folder", [], "has no images"),
    ("sketches only", [], "1 class(es) have sketches but no photos folder: 'only sketched'"),
    ("photos only", [], "1 class(es) have photos but no sketches folder: 'only photographed'"),
    ("unknown unseen class", ["--unseen", "cc"], "--unseen: 'cc' is not a class folder of both sketches/ and "
                                                 "photos/ (did you mean 'c'?)"),
    ("one seen class", ["--unseen", "a", "b"], "leave 1 seen class(es): training needs at least two seen classes"),
    ("two classes", [], "a zero-shot split needs at least three, two seen classes to train on and one unseen"),
    ("trailing space", [], "has a name the list files cannot hold ('c ': a line break, a leading or trailing space"),
    ("line break", [], "has a name the list files cannot hold ('c\\nd'"),
    ("bad fraction", ["--unseen_fraction", "1"], "--unseen_fraction must be between 0 and 1"),
    ("split of your own", [], "exists but was not written by data.from_folders"),
])
def test_each_bad_input_gets_one_sentence(case, argv, expected, tmp_path, capsys):
    root = tmp_path / "mine"
    if case == "no sketches folder":
        _tiny(root, sketches=False)
    elif case == "two classes":
        _tiny(root, classes=("a", "b"))
    elif case in ("trailing space", "line break"):
        _tiny(root, classes=("a", "b", "c " if case == "trailing space" else "c\nd"))
    else:
        _tiny(root)
    if case == "empty class folder":
        (root / "photos" / "d").mkdir()
    elif case == "sketches only":
        _tiny(root, classes=("only sketched",), photos=False)
    elif case == "photos only":
        _tiny(root, classes=("only photographed",), sketches=False)
    elif case == "split of your own":
        (root / "zeroshot").mkdir()
        (root / "zeroshot" / "cname_cid.txt").write_text("a 0\n")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    line = one_error(*make_split(root, *argv, capsys=capsys)[::2])
    assert expected in line, line
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before      # nothing written


def test_missing_root_and_settings_without_the_split(tmp_path, capsys):
    line = one_error(*make_split(tmp_path / "nowhere", capsys=capsys)[::2])
    assert "is not a folder: pass the folder that holds sketches/ and photos/" in line
    _tiny(tmp_path / "mine")
    with pytest.raises(Exception, match=r"split folder .*zeroshot does not exist: `python -m data.from_folders"):
        resolve_paths(SETTING, tmp_path / "mine")


# ----------------------------------------------------------------------------------------------- the scripts
def test_smoke_training_test_script_and_check_work_on_it(dataset, trained_run, monkeypatch, capsys):
    assert (trained_run / "model_best.pth.tar").is_file()
    code, out, err = run("test_custom_zeroshot.py", "--resume_dir", trained_run, "--mode", 1, "--device", "cpu",
                                "--workers", 0, "--no_figures", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err                       # --data_root comes from the checkpoint (the ROOT it trained on)
    results = json.loads((trained_run / "results.json").read_text())
    assert results["setting"] == "custom/zeroshot" and results["n_queries"] == 10 and results["n_gallery"] == 8
    assert np.isfinite(results["one_to_one"]["per_class"]["mAP@all"])
    assert "* = Sketchy Ext's pair, marked for a custom dataset, which has no published pair" in out

    rows = full_check.run_checks(full_check.build_parser().parse_args(
        ["--setting", "custom/zeroshot", "--data_root", str(dataset), "--pretrained", "none", "--workers", "0",
         "--runs", str(trained_run.parent.parent)]), decode=lambda files, workers: {f: None for f in files})
    cells = rows["custom/zeroshot"]
    assert {c: cells[c].status for c in ("lists", "images", "cid_mask", "features")} == dict.fromkeys(
        ("lists", "images", "cid_mask", "features"), "ok")
    assert cells["counts"].status == "skipped" and "no published counts" in cells["counts"].first
    assert "10 queries" in cells["features"].first

    from app.searcher import load_searcher           # the sketch-search app serves its unseen-class photos

    searcher = load_searcher(trained_run, "zero", dataset)
    assert len(searcher.gallery.paths) == 8 and searcher.gallery.class_names == ["crescent moon", "star"]


def test_training_without_data_root_says_what_it_needs(monkeypatch, capsys):
    code, _, err = run("train_custom.py", "--smoke", monkeypatch=monkeypatch, capsys=capsys)
    assert "--data_root ROOT is needed for custom/zeroshot" in one_error(code, err)


def test_the_papers_table_leaves_custom_results_out_and_says_so(tmp_path, capsys):
    from retrieval import tables
    from tests.test_tables import write_run

    write_run(tmp_path / "custom" / "zeroshot", "custom/zeroshot", 0)
    with pytest.raises(Exception, match=r"no results of the paper's settings under .*, only .*custom/zeroshot"):
        tables.main(["--runs", str(tmp_path)])
    write_run(tmp_path / "sketchy" / "zeroshot1", "sketchy/zeroshot1", 1)
    tables.main(["--runs", str(tmp_path)])
    out = capsys.readouterr().out
    assert "1 results files: sketchy/zeroshot1 (sketchy/zeroshot1)" in out
    assert f"left out: {tmp_path / 'custom' / 'zeroshot' / 'results.json'} (custom/zeroshot: a dataset of your own" in out
    assert "custom" not in (tmp_path / "table.md").read_text()
