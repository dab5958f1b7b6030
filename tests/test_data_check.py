"""``python -m data.check`` (the data checks) and ``python -m engine.check`` (those plus the pretrained checkpoint
and the feature files): every check passes on a good tree and fails for its own reason on a bad one."""
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data import check
from data.registry import SAKE_NAMES, TUBERLIN_NAMES, get_setting, resolve_paths
from engine import check as full_check
from tests.fixtures import make_tree
from models.checkpoint_mapping import timm_to_official
from models.sbka import _backbone
from retrieval.feature_io import FeatureSet, save_features
from utils.errors import UserError
from utils.run_files import FEATURES_FILE


def run(data_root: Path, tmp_path: Path, *extra: str):
    """The data checks on ``data_root``; returns (rows, stdout-like text)."""
    args = check.build_parser().parse_args(["--data_root", str(data_root), "--workers", "0", *extra])
    rows = check.run_checks(args)
    return rows, check.format_table(rows) + "\n" + check.format_details(rows)


def run_full(data_root: Path, tmp_path: Path, *extra: str):
    """The full check on ``data_root`` (no pretrained unless given); returns (rows, stdout-like text)."""
    argv = ["--data_root", str(data_root), "--runs", str(tmp_path / "runs"), "--pretrained", "none",
            "--workers", "0", *extra]
    rows = full_check.run_checks(full_check.build_parser().parse_args(argv))
    return rows, check.format_table(rows) + "\n" + check.format_details(rows)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "datasets"
    split = make_tree(root, "sketchy", sketches=4, photos=4, size=16)
    return root, split


def cell(rows, check_name, setting="sketchy/zeroshot1"):
    return rows[setting][check_name]


def test_good_tree_has_no_error_and_names_the_naming(tree, tmp_path, capsys):
    root, _ = tree
    assert check.main(["--data_root", str(root), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "| sketchy/zeroshot1 | ok |" in out and "naming sketch_tx_000000000000_ready_filelist_train.txt" in out
    details = out[out.index("\nsketchy/zeroshot1 lists: "):]    # the full messages, below the table: never cut
    assert "…" not in details and "all_photo_filelist_zero.txt" in details
    assert "decode images: 100%" in captured.err and "\r" not in captured.err      # off a terminal: plain lines
    # the data check says how to run the full one, which adds its two columns to the same table
    assert "| setting | lists | counts | images | cid_mask |\n" in out and check.FULL_CHECK in out.splitlines()[-1]
    assert full_check.main(["--data_root", str(root), "--runs", str(tmp_path / "r"), "--pretrained", "none",
                            "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "| setting | lists | counts | images | cid_mask | pretrained | features |" in out
    assert out.splitlines()[-1] == "no errors: ready to train"
    rows, _ = run(root, tmp_path)
    assert {c.status for c in rows["sketchy/zeroshot1"].values()} <= {"ok", "warning", "skipped"}
    # the tiny tree is far from the public sizes: a warning naming both numbers, never an error
    counts = cell(rows, "counts")
    assert counts.status == "warning"
    assert any("all_photo_filelist_zero.txt has 8 entries, the public package's has 17,101" in m
               for m in counts.messages)
    assert cell(rows, "images").status == "ok" and "every listed image" in cell(rows, "images").first
    # zeroshot2's split folder is absent while zeroshot1's is there: a warning unless it is named
    assert cell(rows, "lists", "sketchy/zeroshot2").status == "warning"
    assert "zeroshot2 does not exist" in cell(rows, "lists", "sketchy/zeroshot2").first


def test_missing_split_is_an_error_when_named(tree, tmp_path):
    root, _ = tree
    rows, _ = run(root, tmp_path, "--setting", "sketchy/zeroshot2")
    assert cell(rows, "lists", "sketchy/zeroshot2").status == "error"
    assert "zeroshot2 does not exist" in cell(rows, "lists", "sketchy/zeroshot2").first
    assert cell(rows, "images", "sketchy/zeroshot2").status == "skipped"


def test_missing_and_corrupt_images_are_named_with_their_line(tree, tmp_path):
    root, split = tree
    lines = (split / SAKE_NAMES["photo_zero"]).read_text().splitlines()
    missing_rel = lines[1].rsplit(" ", 1)[0]
    (root / "Sketchy" / missing_rel).unlink()
    corrupt_rel = lines[2].rsplit(" ", 1)[0]
    data = (root / "Sketchy" / corrupt_rel).read_bytes()
    (root / "Sketchy" / corrupt_rel).write_bytes(data[: len(data) // 2])      # a truncated JPEG
    rows, text = run(root, tmp_path)
    images = cell(rows, "images")
    assert images.status == "error"
    assert any(f"{missing_rel}" in m and f"{SAKE_NAMES['photo_zero']}, line 2) does not exist" in m
               for m in images.messages)
    assert any(f"{corrupt_rel}" in m and "line 3) cannot be decoded" in m for m in images.messages)
    assert check.main(["--data_root", str(root), "--workers", "0"]) == 1


def test_at_most_twenty_problems_are_listed_then_a_count(tree, tmp_path):
    root, split = tree
    f = split / SAKE_NAMES["sketch_train"]
    f.write_text(f.read_text() + "".join(f"nowhere/{i}.png 0\n" for i in range(25)))
    rows, _ = run(root, tmp_path)
    msgs = cell(rows, "images").messages
    assert len(msgs) == check.MAX_LISTED + 1 and msgs[-1].startswith("and 5 more images")


def test_out_of_range_label_is_an_error_with_file_and_line(tree, tmp_path):
    root, split = tree
    f = split / SAKE_NAMES["sketch_zero"]
    lines = f.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0] + " 7"
    f.write_text("\n".join(lines) + "\n")
    rows, _ = run(root, tmp_path)
    assert cell(rows, "lists").status == "error"
    assert f"{SAKE_NAMES['sketch_zero']}, line 4: label 7 is outside 0..1" in cell(rows, "lists").messages[-1]


def test_label_of_another_class_folder_is_an_error(tree, tmp_path):
    root, split = tree
    f = split / SAKE_NAMES["photo_train"]
    lines = f.read_text().splitlines()
    rel, label = lines[0].rsplit(" ", 1)
    assert label == "0"
    lines[0] = f"{rel} 2"
    f.write_text("\n".join(lines) + "\n")
    rows, _ = run(root, tmp_path)
    msg = cell(rows, "lists").messages[-1]
    assert cell(rows, "lists").status == "error"
    assert "line 1: label 2 is class 'seen class 2'" in msg and "folder of class 'seen class 0'" in msg


def test_short_list_against_the_public_size_is_a_warning_with_both_numbers(tree, tmp_path, monkeypatch):
    root, split = tree
    n = len((split / SAKE_NAMES["sketch_train"]).read_text().splitlines())
    public = {"sketch_train": n + 3}
    monkeypatch.setitem(check.PUBLIC_LIST_SIZES, "sketchy/zeroshot1", public)
    rows, _ = run(root, tmp_path)
    counts = cell(rows, "counts")
    assert counts.status == "warning"
    assert [m for m in counts.messages if "entries" in m] == [
        f"{SAKE_NAMES['sketch_train']} has {n} entries, the public package's has {n + 3}"]
    public["sketch_train"] = n                                     # equal sizes: no line-count warning
    rows, _ = run(root, tmp_path)
    assert not any("entries" in m for m in cell(rows, "counts").messages)


@pytest.mark.parametrize("mask, reason", [
    ({0: np.zeros(1000), 1: np.zeros(1000)}, "no row for 1 of the 3 seen classes"),
    ({0: np.zeros(1000), 1: np.zeros(1000), 2: np.zeros(999)}, "class 2 has 999 values, expected 1000"),
    ({0: np.zeros(1000), 1: np.zeros(1000), 2: np.zeros(1000), 5: np.zeros(1000)}, "class id 5 is outside 0..2"),
])
def test_mismatched_cid_mask_is_an_error(tree, tmp_path, mask, reason):
    root, split = tree
    (split / "cid_mask.pickle").write_bytes(pickle.dumps(mask, protocol=2))
    rows, _ = run(root, tmp_path)
    assert cell(rows, "cid_mask").status == "error" and reason in cell(rows, "cid_mask").first


def test_missing_cid_mask_is_a_warning_and_quickdraw_needs_none(tmp_path):
    root = tmp_path / "datasets"
    split = make_tree(root, "sketchy", sketches=2, photos=2, size=16)
    make_tree(root, "quickdraw", sketches=2, photos=2, size=16, cid_mask=False)
    (split / "cid_mask.pickle").unlink()
    rows, _ = run(root, tmp_path)
    assert cell(rows, "cid_mask").status == "warning" and "zero cid_mask" in cell(rows, "cid_mask").first
    assert cell(rows, "cid_mask", "quickdraw/zeroshot").status == "ok"


def _features(n_gallery, n_query, labels_hi):
    rng = np.random.default_rng(0)
    return FeatureSet(rng.random((n_gallery, 8), dtype=np.float32), np.arange(n_gallery) % labels_hi,
                      rng.random((n_query, 8), dtype=np.float32), np.arange(n_query) % labels_hi)


def test_features_files_are_checked_for_shape_and_unseen_labels(tree, tmp_path):
    root, _ = tree
    runs = tmp_path / "runs" / "sketchy" / "zeroshot1"
    save_features(_features(8, 8, 2), runs / "seed0" / FEATURES_FILE)       # matches the zero lists
    rows, _ = run_full(root, tmp_path)
    assert cell(rows, "features").status == "ok" and "8 gallery x 8 queries" in cell(rows, "features").first
    save_features(_features(8, 8, 5), runs / "seed1" / FEATURES_FILE)       # labels of 5 classes
    (runs / "seed2").mkdir()
    (runs / "seed2" / FEATURES_FILE).write_bytes(pickle.dumps([np.zeros(3)], protocol=4))
    rows, _ = run_full(root, tmp_path)
    msgs = cell(rows, "features").messages
    assert cell(rows, "features").status == "error"
    assert any("seed1" in m and "gallery labels span 0..4" in m and "2 unseen classes" in m for m in msgs)
    assert any("seed2" in m and "list of five items" in m for m in msgs)
    save_features(_features(6, 8, 2), runs / "seed1" / FEATURES_FILE)       # other gallery size
    shutil.rmtree(runs / "seed2")
    rows, _ = run_full(root, tmp_path)
    assert cell(rows, "features").status == "warning"
    assert any("6 gallery rows, but the photo_zero list has 8 entries" in m for m in cell(rows, "features").messages)


@pytest.fixture(scope="module")
def official_atto(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pre") / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": timm_to_official(_backbone("convnextv2_atto").state_dict())}, path)
    return path


def test_pretrained_checkpoint_loads_strictly_or_is_an_error(tree, tmp_path, official_atto):
    root, _ = tree
    rows, text = run_full(root, tmp_path, "--pretrained", str(official_atto), "--model", "convnextv2_atto")
    assert cell(rows, "pretrained").status == "ok"
    assert cell(rows, "pretrained") is cell(rows, "pretrained", "sketchy/zeroshot2")     # one checkpoint, one cell
    assert text.count("loads strictly into convnextv2_atto") == 1                        # said once
    sd = torch.load(official_atto, weights_only=True)["model"]
    del sd["norm.weight"]
    broken = tmp_path / "broken.pt"
    torch.save({"model": sd}, broken)
    rows, _ = run_full(root, tmp_path, "--pretrained", str(broken), "--model", "convnextv2_atto")
    assert cell(rows, "pretrained").status == "error" and "lacks key" in cell(rows, "pretrained").first
    rows, _ = run_full(root, tmp_path, "--pretrained", str(tmp_path / "absent.pt"), "--model", "convnextv2_atto")
    assert cell(rows, "pretrained").status == "error" and "does not exist" in cell(rows, "pretrained").first


def test_quick_decodes_a_seeded_two_percent_sample_per_list(tmp_path):
    root = tmp_path / "datasets"
    split = make_tree(root, "tuberlin", n_seen=2, n_unseen=2, sketches=2, photos=2, size=16)
    rel = (split / TUBERLIN_NAMES["photo_train"]).read_text().splitlines()[0]
    (split / TUBERLIN_NAMES["photo_train"]).write_text(f"{rel}\n" * 150)    # 150 lines: ceil(3.0) = 3 sampled
    decoded = []

    def record(files, workers):
        decoded.extend(files)
        return check.decode_all(files, workers)

    args = check.build_parser().parse_args(["--data_root", str(root), "--workers", "0", "--quick"])
    rows = check.run_checks(args, decode=record)
    paths = resolve_paths(get_setting("tuberlin/zeroshot"), root)
    sizes = {r: len(f.read_text().splitlines()) for r, f in paths.lists.items()}
    # every list contributes ceil(2 % of its lines) checks; the photo_train sample repeats one file
    assert rows["tuberlin/zeroshot"]["images"].first.startswith(f"{sum(-(-n * 2 // 100) for n in sizes.values())} images")
    assert "2% sample per list" in rows["tuberlin/zeroshot"]["images"].first
    again = []
    check.run_checks(args, decode=lambda f, w: again.extend(f) or check.decode_all(f, w))
    assert decoded == again                                          # seeded


def test_decoding_in_a_process_pool_finds_the_same_problems(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    split = make_tree(root, "sketchy", sketches=3, photos=3, size=16)
    (split.parent / (split / SAKE_NAMES["sketch_zero"]).read_text().split("\n")[0].rsplit(" ", 1)[0]).write_bytes(b"x")
    monkeypatch.setattr(check, "CHUNK", 4)
    files = sorted(str(p) for p in (root / "Sketchy").rglob("*.*g"))
    serial, pooled = check.decode_all(files, 0), check.decode_all(files, 2)
    assert serial == pooled and sum(v is not None for v in pooled.values()) == 1


def test_data_root_pointing_at_the_dataset_folder_names_its_parent(tree, tmp_path):
    root, _ = tree
    with pytest.raises(UserError, match=r"seems to be the Sketchy folder itself; pass the folder that holds it, "
                                        rf"--data_root {root}$"):
        resolve_paths(get_setting("sketchy/zeroshot1"), root / "Sketchy")
    with pytest.raises(UserError, match=rf"--data_root {root}$"):
        check.settings_to_check(None, root / "Sketchy")
    nested = tmp_path / "outer"
    shutil.move(str(root), str(nested / "datasets"))
    with pytest.raises(UserError, match=rf"one level deeper: pass --data_root {nested / 'datasets'}"):
        check.settings_to_check(None, nested)


def test_every_docs_section_a_message_names_exists(repo_root):
    """A message that sends the user to "README.md, section 'X'" (or "docs/<page>.md, section 'X'") names a
    heading of that page."""
    def headings(page):
        return {ln.lstrip("#").strip() for ln in (repo_root / page).read_text().splitlines() if ln.startswith("#")}

    named = set()
    for f in repo_root.rglob("*.py"):
        if ".venv" not in f.parts and "tests" not in f.parts:
            named |= {(f.name, page, m) for page, m in
                      re.findall(r"(README\.md|docs/[\w-]+\.md), section '([^']+)'", f.read_text())}
    assert len(named) >= 3, "the pattern finds the messages' section names"
    assert [(f, page, m) for f, page, m in named
            if not (repo_root / page).is_file() or m not in headings(page)] == []


def test_exit_status_is_one_on_an_error_and_zero_otherwise(tree, tmp_path, capsys):
    root, split = tree
    argv = ["--data_root", str(root), "--workers", "0"]
    with pytest.raises(SystemExit) as exc:
        check.cli(argv)
    assert exc.value.code == 0 and "no errors: the data are ready" in capsys.readouterr().out
    (split / "cid_mask.pickle").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exc:
        check.cli(argv)
    out = capsys.readouterr().out
    assert exc.value.code == 1 and "| error: cid_mask" in out and "1 check(s) failed" in out
