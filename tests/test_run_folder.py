"""A run folder that cannot lie (issue 12): provenance sidecars, stale features re-extracted, foreign folders
refused without a byte written, mode-1 runs that keep only a one-to-many section of the same features."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.feature_io import load_features, save_features
from tests.fixtures import make_tree
from tests.helpers_retrieval import clustered_features, make_checkpoint, write_features
from tests.test_test_scripts import SMALL, TINY_TREE, _one_line_error, run
from utils.provenance import list_fingerprint, read_sidecar, state_dict_sha256, write_sidecar
from utils.safe_pickle import safe_load

SKETCHY = "test_sketchy_ext_zeroshot.py"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def weights_hash(checkpoint: Path) -> str:
    return state_dict_sha256(torch.load(checkpoint, weights_only=True)["state_dict"])


def test_retrained_folder_gets_fresh_features(tmp_path, monkeypatch, capsys):
    """Failure #1: a second run's checkpoint next to the first run's features: re-extracted, never scored."""
    data_root, run_dir = tmp_path / "datasets", tmp_path / "run"
    split = make_tree(data_root, layout="sketchy", **TINY_TREE)
    first_hash = weights_hash(make_checkpoint(run_dir, "sketchy/zeroshot1", n_seen=3, seed=0, run_id="a" * 32))
    code, out, err = run(SKETCHY, "--resume_dir", run_dir, "--data_root", data_root, "--mode", 1, *SMALL,
                         "--no_figures", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    features_path = run_dir / "features_zero.pickle"
    old_features, old_results = load_features(features_path), json.loads((run_dir / "results.json").read_text())

    # the second run (other seed, other weights), and a seen-class cache of the first run's weights
    second = make_checkpoint(run_dir, "sketchy/zeroshot1", n_seen=3, seed=5, run_id="b" * 32)  # another mAP
    cache = run_dir / "features_seen_val_c2_q2000_g20000_seed123.pickle"
    shutil.copy(features_path, cache)
    write_sidecar(cache, {"setting": "sketchy/zeroshot1", "student_sha256": first_hash, "lists": {}})
    code, out, err = run(SKETCHY, "--resume_dir", run_dir, "--data_root", data_root, *SMALL, "--quantizer",
                         "kmeans", "--no_figures", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    stale = [line for line in out.splitlines() if "extracting them again" in line]
    assert len(stale) == 1 and "other weights" in stale[0], out
    assert f"run {'a' * 12}" in stale[0] and f"run {'b' * 12}" in stale[0]
    assert "extracting the seen-class validation features again" in out
    new_results = json.loads((run_dir / "results.json").read_text())
    assert not np.array_equal(load_features(features_path).gallery, old_features.gallery)
    assert new_results["one_to_one"] != old_results["one_to_one"]        # the numbers are the new model's

    # what the sidecars and results.json record
    assert len(safe_load(features_path, what="features file")) == 5       # still the authors' five items
    record = read_sidecar(features_path)
    assert record["setting"] == "sketchy/zeroshot1" and record["run_id"] == "b" * 32
    assert record["student_sha256"] == weights_hash(second) != first_hash
    assert record["checkpoint"] == "model_best.pth.tar" and record["img_size"] == 32
    assert record["model"] == "convnextv2_atto" and record["version"]
    assert (record["n_gallery"], record["n_queries"]) == (8, 6)
    assert record["lists"]["photo_zero"] == list_fingerprint(split / "all_photo_filelist_zero.txt")
    assert record["lists"]["sketch_zero"]["lines"] == 6
    seen = read_sidecar(cache)
    assert seen["student_sha256"] == weights_hash(second) and seen["setting"] == "sketchy/zeroshot1"
    assert (seen["n_classes"], seen["max_queries"], seen["seed"]) == (2, 2000, 123)
    assert set(seen["lists"]) == {"class_file", "sketch_test", "sketch_train", "photo_train"}
    assert new_results["provenance"]["features"] == record
    assert old_results["provenance"]["features"]["student_sha256"] == first_hash


def test_data_root_defaults_to_the_checkpoints(tmp_path, monkeypatch, capsys):
    data_root, run_dir = tmp_path / "elsewhere", tmp_path / "run"
    make_tree(data_root, layout="sketchy", **TINY_TREE)
    checkpoint = make_checkpoint(run_dir, "sketchy/zeroshot1", n_seen=3, args={"data_root": str(data_root)})
    write_features(run_dir, n_query=6, n_gallery=8, n_classes=2)       # released-style: no sidecar
    code, out, err = run(SKETCHY, "--resume_dir", run_dir, "--mode", 1, *SMALL, "--no_figures",
                         monkeypatch=monkeypatch, capsys=capsys)        # no --data_root
    assert code == 0, err
    assert out.count(f"data_root: {data_root} (stored in {checkpoint}") == 1
    assert "checked: labels within the 2 unseen classes and item counts equal to the zero lists" in out
    shutil.rmtree(data_root)                                            # gone: the default applies, silently
    code, out, err = run(SKETCHY, "--resume_dir", run_dir, "--mode", 1, *SMALL, "--no_figures",
                         monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert "data_root:" not in out and "labels within the 25 unseen classes" in out


def test_stale_best_is_refused(tmp_path, monkeypatch, capsys):
    """model_best.pth.tar of an earlier run than checkpoint.pth.tar (no epoch of the new run beat it)."""
    make_checkpoint(tmp_path, "sketchy/zeroshot1", n_seen=3, seed=0, run_id="1" * 32)
    make_checkpoint(tmp_path, "sketchy/zeroshot1", n_seen=3, seed=1, run_id="2" * 32, name="checkpoint.pth.tar")
    write_features(tmp_path)
    before = snapshot(tmp_path)
    for extra in ([], ["--extract"]):
        code, _, err = run(SKETCHY, "--resume_dir", tmp_path, "--device", "cpu", *extra,
                           monkeypatch=monkeypatch, capsys=capsys)
        _one_line_error(code, err, "model_best.pth.tar is stale", "(run 111111111111, not run 222222222222)",
                        "checkpoint.pth.tar", "nothing was written")
    assert snapshot(tmp_path) == before
    # checkpoints of the older code (no run id): told apart by the run-shaping flags they store
    make_checkpoint(tmp_path, "sketchy/zeroshot1", n_seen=3, seed=0, args={"seed": 0, "workers": 2})
    make_checkpoint(tmp_path, "sketchy/zeroshot1", n_seen=3, seed=1, args={"seed": 1, "workers": 0},
                    name="checkpoint.pth.tar")
    code, _, err = run(SKETCHY, "--resume_dir", tmp_path, "--device", "cpu", monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, "model_best.pth.tar is stale", "its flags differ: seed 0 vs 1")
    make_checkpoint(tmp_path, "sketchy/zeroshot1", n_seen=3, seed=1, args={"seed": 0, "workers": 0},
                    name="checkpoint.pth.tar")       # the same run (only an operational flag changed)
    code, _, err = run(SKETCHY, "--resume_dir", tmp_path, "--device", "cpu", "--mode", 1, "--no_figures",
                       monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err


def _tuberlin_run(folder: Path, sidecar: bool = True, checkpoint: bool = True) -> None:
    """A TU-Berlin run folder as its test script leaves it (2 unseen classes: sizes Sketchy could have)."""
    features = clustered_features(n_query=6, n_gallery=8, n_classes=2)
    save_features(features, folder / "features_zero.pickle")
    record = {"setting": "tuberlin/zeroshot", "student_sha256": "f" * 64, "run_id": "t" * 32, "img_size": 32}
    if sidecar:
        write_sidecar(folder / "features_zero.pickle", record)
    cache = folder / "features_seen_val_c2_q2000_g20000_seed123.pickle"
    save_features(features, cache)
    if sidecar:
        write_sidecar(cache, record)
    if checkpoint:
        make_checkpoint(folder, "tuberlin/zeroshot", n_seen=3)
    (folder / "results.json").write_text(json.dumps({"setting": "tuberlin/zeroshot"}))
    (folder / "results.md").write_text("# Zero-shot retrieval: tuberlin/zeroshot\n")


@pytest.mark.parametrize("case,fragments", [
    ("checkpoint", ["trained for tuberlin/zeroshot, not sketchy/zeroshot1", "test_tuberlin_ext_zeroshot.py"]),
    ("features", ["features_zero.json", "made for tuberlin/zeroshot, not sketchy/zeroshot1",
                  "test_tuberlin_ext_zeroshot.py"]),
    ("seen cache", ["features_seen_val_c2_q2000_g20000_seed123.json", "made for tuberlin/zeroshot"]),
    ("results", ["results.json was made for tuberlin/zeroshot"]),
])
def test_folder_of_another_setting_is_refused_untouched(case, fragments, tmp_path, monkeypatch, capsys):
    """Failure #2: the Sketchy script on checkpoint/tuberlin/zeroshot refuses in one line and writes nothing."""
    run_dir = tmp_path / "checkpoint" / "tuberlin" / "zeroshot"
    run_dir.mkdir(parents=True)
    _tuberlin_run(run_dir, checkpoint=case == "checkpoint")
    if case in ("seen cache", "results"):
        (run_dir / "features_zero.json").unlink()
    if case == "results":
        (run_dir / "features_seen_val_c2_q2000_g20000_seed123.json").unlink()
    make_tree(tmp_path / "datasets", layout="sketchy", **TINY_TREE)
    before = snapshot(tmp_path)
    code, _, err = run(SKETCHY, "--resume_dir", run_dir, "--data_root", tmp_path / "datasets", *SMALL,
                       monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, *fragments, f"nothing was written to {run_dir}")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("n_classes,counts,with_dataset,fragment", [
    (30, (60, 150), False, "labels run from 0 to 29 but sketchy/zeroshot1 has 25 unseen classes"),
    (3, (6, 8), True, "labels run from 0 to 2 but sketchy/zeroshot1 has 2 unseen classes (cname_cid_zero.txt)"),
    (2, (6, 9), True, "it has 9 gallery photos but"),
])
def test_features_without_sidecar_that_cannot_be_this_setting(n_classes, counts, with_dataset, fragment,
                                                             tmp_path, monkeypatch, capsys):
    """A released-style file (no sidecar) is checked against the setting's classes and zero lists."""
    run_dir = tmp_path / "run"
    write_features(run_dir, n_query=counts[0], n_gallery=counts[1], n_classes=n_classes)
    if with_dataset:
        make_tree(tmp_path / "datasets", layout="sketchy", **TINY_TREE)
    before = snapshot(tmp_path)
    code, _, err = run(SKETCHY, "--resume_dir", run_dir, "--data_root", tmp_path / "datasets", *SMALL,
                       monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, fragment, "no features_zero.json", "nothing was written")
    assert snapshot(tmp_path) == before


def _otm(folder: Path):
    results = json.loads((folder / "results.json").read_text())
    return results["one_to_many"], results["provenance"]


def test_mode_1_keeps_the_one_to_many_section_of_the_same_features(tmp_path, monkeypatch, capsys):
    write_features(tmp_path)
    common = ("--resume_dir", tmp_path, "--data_root", tmp_path / "none", *SMALL, "--quantizer", "kmeans",
              "--no_figures")
    assert run(SKETCHY, *common, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    otm, prov = _otm(tmp_path)
    assert otm is not None and prov["features"] == "unknown" and prov["one_to_many"]["quantizer"]["quantizer"] == "kmeans"
    code, out, err = run(SKETCHY, *common, "--mode", 1, "--label", "demo (generated shapes)",
                         monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    kept, kept_prov = _otm(tmp_path)
    assert kept == otm and kept_prov["mode"] == 1 and kept_prov["one_to_many"]["kept_from_earlier_run"]
    assert "kept from the earlier mode-2 run" in out and "tuned on the TEST set" in out
    assert "provenance unknown" in out                       # a file without sidecar says so
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.startswith("# Zero-shot retrieval: demo (generated shapes)") and "## One-to-many" in markdown
    assert json.loads((tmp_path / "results.json").read_text())["label"] == "demo (generated shapes)"

    write_features(tmp_path, seed=5)                         # other features: the old sweep no longer holds
    code, out, err = run(SKETCHY, *common, "--mode", 1, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    dropped, dropped_prov = _otm(tmp_path)
    assert dropped is None and dropped_prov["one_to_many"] is None
    assert "one-to-many section of the earlier results.json was dropped" in out
    assert "dropped" in (tmp_path / "results.md").read_text()


def test_every_flag_has_help_and_shows_its_default_once():
    from data.registry import SETTINGS
    from engine.flags import build_test_parser

    for setting in SETTINGS.values():
        parser = build_test_parser(setting)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.dest == "help":
                continue
            text = formatter._expand_help(action)
            assert action.help and text.count("default") == 1, (action.dest, text)
            assert "None" not in text, (action.dest, text)


def test_sidecar_with_other_lists_and_no_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    """Features extracted from other zero lists, and no checkpoint to extract them again: refused, untouched."""
    make_tree(tmp_path / "datasets", layout="sketchy", **TINY_TREE)
    path = write_features(tmp_path / "run", n_query=6, n_gallery=8, n_classes=2)
    write_sidecar(path, {"setting": "sketchy/zeroshot1", "student_sha256": "0" * 64, "lists": {}})
    before = snapshot(tmp_path)
    code, _, err = run(SKETCHY, "--resume_dir", tmp_path / "run", "--data_root", tmp_path / "datasets", *SMALL,
                       monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, "other list files", "no checkpoint", "nothing was written")
    assert snapshot(tmp_path) == before


def test_demo_reports_are_titled_as_the_demo(tmp_path, monkeypatch):
    """engine.demo runs the Sketchy test engine: its reports must say they are the demo's, not Sketchy's."""
    import engine.demo as demo
    from engine import evaluate, train

    labels = []

    def fake_evaluate(argv, setting):
        resume_dir = Path(argv[argv.index("--resume_dir") + 1])
        labels.append(argv[argv.index("--label") + 1] if "--label" in argv else None)
        (resume_dir / "results.json").write_text(json.dumps({"one_to_one": {"per_class": {"mAP@all": 0.5}}}))

    monkeypatch.setattr(demo, "generate_demo_dataset",
                        lambda root, **kw: make_tree(root, layout="sketchy", **TINY_TREE).parent)
    monkeypatch.setattr(train, "main", lambda *args, **kwargs: None)      # the demo imports them when it runs
    monkeypatch.setattr(evaluate, "main", fake_evaluate)
    demo.main(["--data_root", str(tmp_path / "Demo"), "--savedir", str(tmp_path / "run"), "--workers", "0",
               "--no_figures"])
    assert len(labels) == 2 and all(label and label.startswith("demo") for label in labels), labels
