"""Batch search (search_app.py --queries) and the Python entry point (engine.trained_run, hubconf.py).

One tiny random-weight run on a generated Sketchy tree: the test script (mode 1) writes its features and
results first, then the batch search ranks a folder holding the same unseen-class sketches. Its rankings
and metrics are compared with the test script's, computed here from the features file by the test scripts'
own code; the static page is opened in headless Chromium; the Python snippet of docs/app.md is run as written.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.trained_run import TrainedRun
from retrieval.cluster_matching import fit_codebook
from retrieval.feature_io import load_features
from retrieval.search import RetrievalProblem
from tests.fixtures import make_tree
from tests.helpers_retrieval import make_checkpoint
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SETTING = "sketchy/zeroshot1"
K = 5
CPU = ["--device", "cpu", "--workers", "0"]


def run_script(script: str, *argv) -> str:
    """``python script argv`` in this process; its stdout."""
    saved, sys.argv = sys.argv, [script, *map(str, argv)]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = saved
    return out.getvalue()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The run after the test script, the query folder (the zero sketches in class folders) and the batch
    search's output folder and stdout."""
    tmp = tmp_path_factory.mktemp("batch")
    split = make_tree(tmp / "datasets", layout="sketchy", sketches=3, photos=4)
    make_checkpoint(tmp / "run", SETTING, n_seen=3)
    run_script("test_sketchy_ext_zeroshot.py", "--resume_dir", tmp / "run", "--data_root", tmp / "datasets",
               "--mode", "1", "--no_figures", *CPU)
    results = json.loads((tmp / "run" / "results.json").read_text())
    results["one_to_many"] = {"alpha": 0.8, "selected": {"M": 2, "K": 3}}      # as a mode-2 run selects it
    (tmp / "run" / "results.json").write_text(json.dumps(results))
    queries = tmp / "queries"
    sketch_list = (split / "sketch_tx_000000000000_ready_filelist_zero.txt").read_text().split("\n")
    for line in filter(None, sketch_list):
        rel = Path(line.rsplit(" ", 1)[0])
        (queries / rel.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(split.parent / rel, queries / rel.parent.name / rel.name)
    stdout = run_script("search_app.py", "--resume_dir", tmp / "run", "--queries", queries, "--data_root",
                        tmp / "datasets", "--k", K, "--out", tmp / "out", *CPU)
    return {"tmp": tmp, "run": tmp / "run", "queries": queries, "out": tmp / "out", "stdout": stdout,
            "results": results, "data_root": tmp / "datasets"}


def test_batch_ranks_and_scores_as_the_test_script(batch):
    out = batch["out"]
    answer = json.loads((out / "results.json").read_text())
    assert answer["n_queries"] == 6 and answer["k"] == K and answer["gallery"]["labelled"]
    assert "features from" in answer["gallery"]["source"]               # the test script's features file
    assert answer["rankings"] == ["one-to-one", "one-to-many M=2 K=3"]
    features = load_features(batch["run"] / "features_zero.pickle")
    problem = RetrievalProblem(features, torch.device("cpu"))
    every = np.arange(len(features.query))
    expected = {"one-to-one": problem.distance_fn()(every).numpy(),
                "one-to-many M=2 K=3": problem.distance_fn(fit_codebook(features.gallery, 2, 3), 0.8)(every).numpy()}
    for name, values in expected.items():
        want = np.argsort(values, axis=1, kind="stable")[:, :K]
        got = np.array([[r["index"] for r in entry["results"][name]] for entry in answer["results"]])
        np.testing.assert_array_equal(got, want)
    # mAP@all of the batch is the test script's (the same queries, the same metric code)
    script = batch["results"]["one_to_one"]
    assert answer["metrics"]["one-to-one"]["mAP@all"]["per_class"] == pytest.approx(
        script["per_class"]["mAP@all"], abs=1e-6)
    assert "one-to-one: mAP@all" in batch["stdout"] and f"P@{K}" in batch["stdout"]
    first = answer["results"][0]
    assert first["label"] == "unseen class 0" and Path(first["query"]).parent.name == "unseen class 0"
    assert all(r["correct"] == (r["label"] == first["label"]) for r in first["results"]["one-to-one"])
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 2 * K
    assert rows[0]["query"] == first["query"] and rows[0]["rank"] == "1" and rows[0]["query_label"] == first["label"]
    assert float(rows[0]["distance"]) == pytest.approx(first["results"]["one-to-one"][0]["distance"], abs=1e-6)


def test_static_page_shows_k_thumbnails_per_query_offline(batch):
    pytest.importorskip("selenium.webdriver", reason="Selenium is not installed (requirements-app.txt)")
    from selenium.webdriver.common.by import By

    from tests.helpers_browser import chromium

    answer = json.loads((batch["out"] / "results.json").read_text())
    moved = batch["tmp"] / "moved"                      # the folder works elsewhere: every link is relative
    shutil.copytree(batch["out"], moved)
    browser = chromium()
    driver = next(browser)
    try:
        driver.get((moved / "index.html").as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.query-row")
        assert len(rows) == 6
        for row, entry in zip(rows, answer["results"]):
            for name, shown in entry["results"].items():
                figures = row.find_elements(By.CSS_SELECTOR, f'.results[data-ranking="{name}"] figure')
                assert len(figures) == K
                frames = [f.get_attribute("class") for f in figures]
                assert frames == ["hit" if r["correct"] else "miss" for r in shown]
            loaded = driver.execute_script(
                "return Array.from(arguments[0].querySelectorAll('img')).map(i => i.complete && i.naturalWidth > 0)",
                row)
            assert loaded and all(loaded)                # the query's and every result's thumbnail
    finally:
        browser.close()


def test_folder_gallery_with_class_folders_unlabelled_queries_and_a_broken_one(batch, capsys):
    tmp = batch["tmp"]
    gallery = tmp / "gallery"
    photos = batch["data_root"] / "Sketchy" / "256x256" / "photo" / "tx_000000000000_ready"
    for cls in ("unseen class 0", "unseen class 1"):
        shutil.copytree(photos / cls, gallery / cls)
    flat = tmp / "flat_queries"
    flat.mkdir()
    for i, path in enumerate(sorted(batch["queries"].rglob("*.png"))[:3]):
        shutil.copy(path, flat / f"q{i}.png")
    (flat / "broken.png").write_bytes(b"not a png")
    import search_app

    with pytest.raises(UserError, match="--queries needs --out"):
        search_app.main(["--resume_dir", str(batch["run"]), "--queries", str(flat)])
    search_app.main(["--resume_dir", str(batch["run"]), "--queries", str(flat), "--gallery", str(gallery),
                     "--k", "50", "--out", str(tmp / "out2"), *CPU])
    printed = capsys.readouterr().out
    answer = json.loads((tmp / "out2" / "results.json").read_text())
    assert answer["gallery"]["labelled"] and answer["gallery"]["size"] == 8 and answer["k"] == 8
    assert answer["n_queries"] == 3 and answer["skipped_queries"] == [str(flat / "broken.png")]
    assert "broken.png" in printed and answer["metrics"] is None and "mAP" not in printed
    assert {r["label"] for r in answer["results"][0]["results"]["one-to-one"]} == {"unseen class 0", "unseen class 1"}


def test_trained_run_embeds_as_the_test_script_and_names_what_is_wrong(batch, tmp_path):
    run = TrainedRun.load(batch["run"], device="cpu")
    features = load_features(batch["run"] / "features_zero.pickle")
    root = batch["data_root"] / "Sketchy"
    photo_list = root / "zeroshot1" / "all_photo_filelist_zero.txt"
    paths = [root / line.rsplit(" ", 1)[0] for line in photo_list.read_text().split("\n") if line]
    photos = run.embed_photos(paths)
    np.testing.assert_allclose(photos.numpy(), features.gallery, atol=1e-5)
    sketches = sorted(batch["queries"].rglob("*.png"))
    from_files = run.embed_sketches(sketches[:2])
    from_images = run.embed_sketches([Image.open(p) for p in sketches[:2]])
    np.testing.assert_allclose(from_files.numpy(), from_images.numpy(), atol=1e-5)
    np.testing.assert_allclose(from_files.norm(dim=1).numpy(), 1.0, atol=1e-5)
    order, dist = run.rank(from_files, photos, k=3)
    assert order.shape == dist.shape == (2, 3) and (np.diff(dist, axis=1) >= 0).all()
    otm_order, _ = run.rank(from_files, photos, k=3, one_to_many=True)     # the run selected M=2, K=3
    assert otm_order.shape == (2, 3)
    with pytest.raises(UserError, match=r"run folder .*absent does not exist"):
        TrainedRun.load(tmp_path / "absent")
    with pytest.raises(UserError, match=r"holds no model_best.pth.tar"):
        TrainedRun.load(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"image .*bad.jpg cannot be decoded"):
        run.embed_photos([paths[0], tmp_path / "bad.jpg"])
    with pytest.raises(UserError, match=r"image .*missing.png does not exist"):
        run.embed_sketches([tmp_path / "missing.png"])


def readme_python_snippet() -> str:
    text = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_snippet_runs_as_written(batch, tmp_path, monkeypatch):
    """The snippet, in a folder laid out as the repository (hubconf.py at the root, a run under checkpoint/)."""
    snippet = readme_python_snippet()
    shutil.copy(ROOT / "hubconf.py", tmp_path / "hubconf.py")
    run_dir = tmp_path / "checkpoint" / "sketchy" / "zeroshot1"
    run_dir.mkdir(parents=True)
    shutil.copy(batch["run"] / "model_best.pth.tar", run_dir)
    images = {}
    for name in re.findall(r'"([\w/]+\.(?:png|jpg))"', snippet):
        source = next(batch["queries"].rglob("*.png")) if name.endswith(".png") else \
            next((batch["data_root"] / "Sketchy").rglob("*.jpg"))
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tmp_path / name)
        images[name] = source
    assert images, "the snippet names no image files"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "docs/app.md", "exec"), scope)
    order, dist = scope["order"], scope["dist"]
    assert order.ndim == 2 and order.shape == dist.shape
