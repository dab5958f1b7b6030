"""The four test scripts end to end: on a features file, on a dataset + checkpoint, and their errors."""
import json
import os
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.registry import get_setting
from retrieval.metrics import METRIC_KEYS
from tests.fixtures import make_tree
from tests.helpers_retrieval import make_checkpoint, write_features
from retrieval.figures import ExamplesLayout
from utils.figures import DPI

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "test_sketchy_ext_zeroshot.py": ("sketchy/zeroshot1", {"layout": "sketchy"}),
    "test_sketchy_ext_split_zeroshot.py": ("sketchy/zeroshot2", {"layout": "sketchy", "split_dir": "zeroshot2",
                                                                  "test_list": False}),
    "test_tuberlin_ext_zeroshot.py": ("tuberlin/zeroshot", {"layout": "tuberlin"}),
    "test_quickdraw_ext_zeroshot.py": ("quickdraw/zeroshot", {"layout": "quickdraw_authors"}),   # released names
}
SMALL = ["--device", "cpu", "--workers", "0", "--pq_m", "2", "--pq_k", "2", "3", "--chunk", "16"]
TINY_TREE = {"sketches": 3, "photos": 4}        # 2 unseen classes: 6 query sketches, 8 gallery photos
FAST_FIT = ["--gmm_covariance", "diag"]         # full covariance is covered on the features files


def run(script: str, *argv, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run an entry script in this process, as ``python script argv`` would; returns (status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_schema(results: dict, setting: str, mode: int, selected: bool) -> None:
    averaged_keys = {"per_query", "per_class"}
    assert set(results) == {"setting", "kind", "label", "n_queries", "n_gallery", "feature_dim", "one_to_one",
                            "one_to_many", "provenance"}
    assert results["setting"] == setting
    prov = results["provenance"]
    assert prov["mode"] == mode and len(prov["features_sha256"]) == 64 and prov["version"]
    assert all(isinstance(results[k], int) for k in ("n_queries", "n_gallery", "feature_dim"))
    assert set(results["one_to_one"]) == averaged_keys
    for averaging in averaged_keys:
        assert set(results["one_to_one"][averaging]) == set(METRIC_KEYS)
    if mode == 1:
        assert results["one_to_many"] is None and prov["one_to_many"] is None
        return
    otm = results["one_to_many"]
    assert set(otm) == {"alpha", "quantizer", "sweep", "selected", "seen_validation"} and otm["alpha"] == 0.8
    assert prov["one_to_many"]["grid"] == [[2, 2], [2, 3]] and prov["one_to_many"]["alpha"] == 0.8
    assert [(e["M"], e["K"]) for e in otm["sweep"]] == [(2, 2), (2, 3)]
    for entry in otm["sweep"]:
        assert set(entry) == {"M", "K"} | averaged_keys
        assert set(entry["per_class"]) == set(METRIC_KEYS)
    if not selected:
        assert otm["selected"] is None
        return
    sel = otm["selected"]
    assert set(sel) == {"M", "K", "selected_on"} | averaged_keys
    assert sel["selected_on"] == "seen-class validation"
    assert (sel["M"], sel["K"]) in [(2, 2), (2, 3)]
    match = next(e for e in otm["sweep"] if (e["M"], e["K"]) == (sel["M"], sel["K"]))
    assert sel["per_class"] == match["per_class"]


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_on_a_features_file(script, mode, tmp_path, monkeypatch, capsys):
    setting = SCRIPTS[script][0]
    write_features(tmp_path)
    code, out, err = run(script, "--resume_dir", tmp_path, "--data_root", tmp_path / "no_datasets",
                         "--mode", mode, *SMALL, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert_schema(results, setting, mode, selected=False)
    assert (results["n_queries"], results["n_gallery"], results["feature_dim"]) == (60, 150, 32)
    assert setting in out and "per class" in out and "per query" in out
    first, second = get_setting(setting).paper_metrics
    assert f"{first}*" in out and f"{second}*" in out
    assert (tmp_path / "results.md").is_file() and (tmp_path / "pr_curve.png").is_file()
    assert not (tmp_path / "retrieval_examples.png").exists() and "retrieval_examples.png not drawn" in out
    if mode == 2:
        assert "tuned on the TEST set" in out and "honest figure not computed" in out


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_on_a_dataset_and_checkpoint(script, tmp_path, monkeypatch, capsys):
    setting, tree = SCRIPTS[script]
    data_root, run_dir = tmp_path / "datasets", tmp_path / "run"
    make_tree(data_root, **tree, **TINY_TREE)
    make_checkpoint(run_dir, setting, n_seen=3)
    code, out, err = run(script, "--resume_dir", run_dir, "--data_root", data_root, *SMALL, *FAST_FIT,
                         monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    assert_schema(results, setting, 2, selected=True)
    assert (results["n_queries"], results["n_gallery"], results["feature_dim"]) == (6, 8, 320)
    assert "honest one-to-many (M=2" in out and "chosen on seen-class validation" in out
    for name in ("features_zero.pickle", "features_zero.json", "results.md", "pr_curve.png", "pr_curve.pdf",
                 "retrieval_examples.png", "retrieval_examples.pdf"):
        assert (run_dir / name).is_file(), name
    assert [p.name for p in run_dir.glob("features_seen_val_*.json")] == ["features_seen_val_c2_q2000_g20000_seed123.json"]
    # mode 2: each of the 2 example queries (one per unseen class) once per ranking, rows labelled
    with Image.open(run_dir / "retrieval_examples.png") as img:
        assert np.abs(np.subtract(img.size, np.multiply(ExamplesLayout(4, 8, labelled=True).size, DPI))).max() < 1.01


def test_fast_extraction_options_give_the_same_features_and_are_recorded(tmp_path, monkeypatch, capsys):
    """--channels_last --gpu_normalize (uint8 through the loader, normalised on the device) change the speed,
    not the features; the sidecar says how they were extracted."""
    from retrieval.feature_io import load_features

    data_root = tmp_path / "datasets"
    make_tree(data_root, layout="sketchy", **TINY_TREE)
    feats = {}
    for name, extra in (("plain", []), ("fast", ["--channels_last", "--gpu_normalize"])):
        run_dir = tmp_path / name
        make_checkpoint(run_dir, "sketchy/zeroshot1", n_seen=3)
        code, _, err = run("test_sketchy_ext_zeroshot.py", "--resume_dir", run_dir, "--data_root", data_root,
                           "--mode", "1", "--no_figures", *SMALL, *extra, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 0, err
        feats[name] = load_features(run_dir / "features_zero.pickle")
        sidecar = json.loads((run_dir / "features_zero.json").read_text())
        assert sidecar["extraction"] == {"amp": False, "channels_last": bool(extra), "gpu_normalize": bool(extra)}
    np.testing.assert_allclose(feats["fast"].gallery, feats["plain"].gallery, atol=1e-5)
    np.testing.assert_allclose(feats["fast"].query, feats["plain"].query, atol=1e-5)


def test_features_file_needs_no_checkpoint_or_model(tmp_path, monkeypatch, capsys):
    script = "test_sketchy_ext_zeroshot.py"
    data_root, run_dir = tmp_path / "datasets", tmp_path / "run"
    make_tree(data_root, layout="sketchy", **TINY_TREE)
    make_checkpoint(run_dir, "sketchy/zeroshot1", n_seen=3)
    assert run(script, "--resume_dir", run_dir, "--data_root", data_root, "--mode", 1, *SMALL,
               monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    first = (run_dir / "features_zero.pickle").read_bytes()
    (run_dir / "model_best.pth.tar").unlink()
    code, out, err = run(script, "--resume_dir", run_dir, "--data_root", data_root, *SMALL, *FAST_FIT,
                         monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert (run_dir / "features_zero.pickle").read_bytes() == first
    assert "needs the model checkpoint" in out      # the honest figure needs the model to embed seen data


def _one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("script,train,released", [
    ("test_sketchy_ext_zeroshot.py", "train_sketchy_ext.py", "zeroshot1/features_zero.pickle"),
    ("test_sketchy_ext_split_zeroshot.py", "--zero_version zeroshot2", "zeroshot2/features_zero.pickle"),
    ("test_quickdraw_ext_zeroshot.py", "train_quickdraw_ext.py", None),
    ("test_tuberlin_ext_zeroshot.py", "train_tuberlin_ext.py", None)])
def test_neither_features_nor_checkpoint_gives_both_ways_out(script, train, released, tmp_path, monkeypatch, capsys):
    code, _, err = run(script, "--resume_dir", tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, str(tmp_path / "features_zero.pickle"), train)
    if released:       # the authors released features for the two Sketchy splits: the message offers them
        _one_line_error(code, err, f"download the authors' released {released}", "section 'Datasets'")
    else:              # and for no other setting: no download is suggested that does not exist
        assert "download" not in err and "two Sketchy splits only" in err


def test_code_running_features_file_is_refused(tmp_path, monkeypatch, capsys):
    planted = tmp_path / "planted.txt"
    (tmp_path / "features_zero.pickle").write_bytes(
        b"cbuiltins\nopen\n(V" + str(planted).encode() + b"\nVw\ntR.")
    code, _, err = run("test_tuberlin_ext_zeroshot.py", "--resume_dir", tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, "refused", "builtins.open")
    assert not planted.exists()


@pytest.mark.parametrize("argv,fragments", [
    (["--pq_m", "5"], ["--pq_m 5 does not divide the feature width 32"]),
    (["--pq_k", "150"], ["--pq_k 150"]),
    (["--alpha", "1.5"], ["--alpha"]),
    (["--chunk", "0"], ["--chunk"]),
    (["--pq_m", "0"], ["--pq_m must be at least 1"]),
    (["--checkpoint", "missing.pth.tar", "--extract"], ["missing.pth.tar", "--checkpoint"]),
    (["--extract"], ["--extract needs the checkpoint", "model_best.pth.tar"]),
    (["--device", "tpu"], ["--device tpu"]),
])
def test_bad_flags_are_one_line(argv, fragments, tmp_path, monkeypatch, capsys):
    write_features(tmp_path)
    code, _, err = run("test_sketchy_ext_zeroshot.py", "--resume_dir", tmp_path, "--device", "cpu", *argv,
                       monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, *fragments)


def test_bad_features_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "features_zero.pickle").write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    code, _, err = run("test_sketchy_ext_zeroshot.py", "--resume_dir", tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, "five items")


def test_checkpoint_of_another_setting_or_without_dataset(tmp_path, monkeypatch, capsys):
    make_checkpoint(tmp_path, "tuberlin/zeroshot", n_seen=3)
    make_tree(tmp_path / "datasets", layout="sketchy", **TINY_TREE)
    code, _, err = run("test_sketchy_ext_zeroshot.py", "--resume_dir", tmp_path, "--data_root", tmp_path / "datasets",
                       "--device", "cpu", monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, "trained for tuberlin/zeroshot")
    make_checkpoint(tmp_path, "sketchy/zeroshot1", n_seen=3)
    code, _, err = run("test_sketchy_ext_zeroshot.py", "--resume_dir", tmp_path, "--data_root", tmp_path / "nowhere",
                       "--device", "cpu", monkeypatch=monkeypatch, capsys=capsys)
    _one_line_error(code, err, "nowhere/Sketchy does not exist")


def test_argparse_errors_exit_non_zero(tmp_path, monkeypatch, capsys):
    code, _, err = run("test_sketchy_ext_zeroshot.py", "--mode", "3", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "--mode" in err


def test_real_processes(tmp_path):
    """One fresh interpreter per outcome: the scripts import and exit as a user would see."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    write_features(tmp_path / "good")
    ok = subprocess.run([sys.executable, str(ROOT / "test_quickdraw_ext_zeroshot.py"), "--resume_dir",
                         str(tmp_path / "good"), "--mode", "1", "--device", "cpu", "--no_figures"],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "quickdraw/zeroshot" in ok.stdout and not (tmp_path / "good" / "pr_curve.png").exists()
    bad = subprocess.run([sys.executable, str(ROOT / "test_quickdraw_ext_zeroshot.py"), "--resume_dir",
                          str(tmp_path / "missing")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    _one_line_error(bad.returncode, bad.stderr, "train_quickdraw_ext.py")
