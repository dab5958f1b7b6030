"""`make demo` learns: after its short training the unseen-class mAP@all clearly beats the untrained network.

The run below is the demo's own code path (generate -> score the untrained network -> train with the Sketchy
engine -> test) on a smaller configuration than `make demo` (fewer images, smaller batch, fewer steps). On a
CPU a seeded run is repeatable, so the margin asserted here is not a matter of luck.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import demo
from utils.errors import UserError

MARGIN = 0.05      # absolute mAP@all; chance level for 4 unseen classes is about 0.25-0.30

SMALL = ["--img_size", "64", "--batch_size", "15", "--epochs", "7", "--warmup_epochs", "4", "--lr", "3e-4",
         "--sketches_per_class", "200", "--photos_per_class", "160", "--zero_per_class", "40",
         "--mode", "1", "--no_figures", "--workers", "2"]


def test_demo_training_clearly_beats_the_untrained_network(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    savedir = tmp_path / "run"
    result = demo.main(["--data_root", str(tmp_path / "data"), "--savedir", str(savedir), *SMALL])
    captured = capsys.readouterr()
    out = captured.out

    assert result["trained"] >= result["untrained"] + MARGIN, result
    # it says once what it is, and none of the warnings meant for real runs (CPU estimate, random weights)
    assert out.count(demo.ABOUT) == 1
    assert "long or large run" not in captured.err + out and "smoke run" not in captured.err + out
    # the numbers it returns are the ones the test engine wrote and the demo printed
    results = json.loads((savedir / "results.json").read_text())
    assert results["one_to_one"]["per_class"]["mAP@all"] == pytest.approx(result["trained"])
    assert results["kind"] == "demo"
    # the baseline is scored beside the demo run, not inside it as a second run
    baseline = json.loads((tmp_path / "run_untrained" / "results.json").read_text())
    assert baseline["kind"] == "baseline"
    assert baseline["one_to_one"]["per_class"]["mAP@all"] == pytest.approx(result["untrained"])
    assert [p.parent for p in savedir.rglob("results.json")] == [savedir]
    assert f"untrained {result['untrained']:.4f} -> trained {result['trained']:.4f}" in out
    for name in ("model_best.pth.tar", "checkpoint.pth.tar", "log.jsonl", "results.md", "features_zero.pickle"):
        assert (savedir / name).is_file(), name
    log = [json.loads(line) for line in (savedir / "log.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in log] == ["warmup"] * 4 + ["bidirectional"] * 3           # both phases ran
    assert log[0]["loss_reverse"] is None and log[-1]["loss_reverse"] is not None
    assert log[-1]["val_top1_pct"] > 2 * 12.5    # seen-class validation well above chance (8 classes)


def test_demo_refuses_a_run_directory_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a demo run directory"):
        demo.main(["--data_root", str(tmp_path / "data"), "--savedir", str(precious)])
    assert (precious / "notes.txt").read_text() == "keep me"


def test_demo_refuses_a_baseline_folder_it_did_not_make(tmp_path: Path) -> None:
    """The untrained baseline goes beside the run (<savedir>_untrained): a folder there that is not the demo's is
    refused before either folder is touched."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / demo.DEMO_MARKER).write_text("")
    precious = tmp_path / "run_untrained"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="run_untrained exists and is not a demo run directory"):
        demo.main(["--data_root", str(tmp_path / "data"), "--savedir", str(tmp_path / "run")])
    assert (precious / "notes.txt").read_text() == "keep me" and (tmp_path / "run" / demo.DEMO_MARKER).exists()
